"""Pixel synthesis: tissue model at the voxel coordinates → contrast → bias, texture, noise → uint16."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from mrifoundry.sample import anatomy, phantoms
from mrifoundry.sample.contrast import TISSUES, signal

MAX_VALUE = 4095  # BitsStored 12
_MNI_IDX = [TISSUES.index(t) for t in anatomy.MNI_CHANNELS]


def render(coords: np.ndarray, anatomy_name: str, contrast: str, rng: np.random.Generator, *,
           post_contrast: bool = False, uptake: float = 0.0, mni: tuple | None = None) -> np.ndarray:
    """uint16 images (n, rows, cols) of the slices whose LPS coordinates are ``coords`` (3, n, rows, cols).

    ``mni`` = (npy path, affine) of anatomy.prepare_mni, needed for head anatomies.
    """
    values = signal(contrast, post_contrast, uptake)
    if anatomy_name.startswith("mni"):
        img = anatomy.mni_signal(coords, mni[0], mni[1], values[_MNI_IDX])
    else:
        img = values[phantoms.labels(anatomy_name, coords)]
        # a little partial-volume blur in plane: edges of real tissue are not binary
        img = ndimage.gaussian_filter(img, sigma=(0, 0.7, 0.7))
    if contrast == "CT":
        noise = rng.standard_normal(size=img.shape, dtype=np.float32) * np.float32(8.0)
        return np.clip(img + 1024.0 + noise, 0, MAX_VALUE).astype(np.uint16)
    # smooth texture and coil bias defined in patient space, so they match across orientations
    x, y, z = coords
    ph = [float(v) for v in rng.uniform(0, 2 * np.pi, size=3)]   # python floats keep arrays float32
    texture = 1.0 + 0.04 * np.sin(x / 7.0 + ph[0]) * np.sin(y / 9.0 + ph[1]) * np.sin(z / 8.0 + ph[2])
    bias = 1.0 + 0.12 * np.tanh((y + 0.5 * x) / 150.0)
    img = img * texture * bias
    sigma = (0.04 if contrast == "DWI" else 0.015) * float(values.max())
    n1 = rng.standard_normal(size=img.shape, dtype=np.float32) * np.float32(sigma)
    n2 = rng.standard_normal(size=img.shape, dtype=np.float32) * np.float32(sigma)
    img = np.sqrt((img + n1) ** 2 + n2 ** 2)   # magnitude images have Rician noise
    return np.clip(np.rint(img), 0, MAX_VALUE).astype(np.uint16)


def burn_in(img: np.ndarray, seed_text: str) -> np.ndarray:
    """Stamp a bright blocky 'text' band in the top-left corner, as a scanner overlay would."""
    out = img.copy()
    bits = np.unpackbits(np.frombuffer(seed_text.encode()[:12].ljust(12, b" "), dtype=np.uint8))
    h, w = 2, 1
    for k, b in enumerate(bits[: (img.shape[1] - 4) // w]):
        if b:
            out[2:2 + h * 3, 2 + k * w: 2 + (k + 1) * w] = MAX_VALUE
    return out
