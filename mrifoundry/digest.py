"""Content digests: SHA-256 of files (weights, images) and of an image's voxels."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

VOXEL_DIGEST_LENGTH = 32  # hex characters (128 bits)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of the file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def voxel_sha256(img) -> str:
    """Digest of a 3D image's voxels, independent of how the file stores them.

    The image (a nibabel image) is reoriented to the closest RAS axes and read as float32
    after scaling, so the same voxels give the same digest whether they are kept as int16 with
    a slope or as float, gzipped or not, LAS or RAS. The shape is part of the digest; the
    affine is not (two exports of one image differ in rounding of the origin).

    Raises:
        ValueError: not a 3D image (a trailing singleton axis is dropped first).
    """
    import nibabel as nib
    canon = nib.as_closest_canonical(img)
    shape = tuple(int(d) for i, d in enumerate(canon.shape) if i < 3 or d != 1)
    if len(shape) != 3:
        raise ValueError(f"voxel digest of a 3D image, got shape {canon.shape}")
    # reordered to x-fastest (NIfTI's order) in the stored dtype, which for int16 moves half the bytes of
    # float32 (dicom2nifti's arrays are strided: a float32 reordering copy cost 0.4 s at 512²×128), then cast
    # to float32 16 slices at a time
    data = np.asfortranarray(np.asanyarray(canon.dataobj).reshape(shape, order="F"))
    h = hashlib.sha256("x".join(map(str, shape)).encode() + b"\0")
    for k in range(0, shape[2], 16):
        h.update(memoryview(data[:, :, k:k + 16].astype(np.float32, order="F").T))
    return h.hexdigest()[:VOXEL_DIGEST_LENGTH]


def array_sha256(data: np.ndarray) -> str:
    """:func:`voxel_sha256` of an array already in RAS order (readers other than nibabel)."""
    import nibabel as nib
    return voxel_sha256(nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.eye(4)))
