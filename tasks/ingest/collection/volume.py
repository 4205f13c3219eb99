"""One NIfTI file of a collection: quality checks, then conformed like a curated series.

Checks (each a reason code of catalog/reasons.py, stage ``ingest``): the file opens
(``unreadable_nifti``), is 3D or 4D (``not_a_volume``), has ``min_voxels`` per spatial axis and a
finite, invertible affine (``bad_dimensions``), no NaN/inf (``non_finite_voxels``) and not one value
everywhere (``empty_volume``). A 4D image keeps its middle time point, as the DICOM path does.
Conforming reuses the curation converter's resampling, dtype and clean header
(tasks/curation/convert/nifti.py): RAS, 1 mm by default, no source header text or extensions.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from mrifoundry.digest import voxel_sha256
from mrifoundry.errors import RejectedItem
from mrifoundry.tasks.curation.convert.nifti import NiftiConfig, clean_image, output_dtype, resample, save_atomic

__all__ = ["CONVERTER", "CheckedVolume", "check_nifti", "conform"]

CONVERTER = "nibabel"


@dataclass
class CheckedVolume:
    image: nib.Nifti1Image       # 3D, source orientation (one time point of a 4D file)
    source_shape: tuple[int, ...]
    n_timepoints: int
    timepoint: int
    source_integer: bool
    digest: str                  # voxel_sha256 of ``image``


def check_nifti(path: Path, item: str, min_voxels: int = 8) -> CheckedVolume:
    """Open and check one file.

    Raises:
        RejectedItem: with the reason code of the first failed check.
    """
    if Path(path).is_symlink() and not Path(path).exists():
        raise RejectedItem(item, "unreadable_nifti", "a broken link (git-annex/DataLad content not fetched?)")
    try:
        img = nib.load(str(path))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise TypeError(f"{type(img).__name__}, not NIfTI")
        shape = tuple(int(d) for d in img.shape)
    except Exception as e:  # noqa: BLE001 - nibabel raises many kinds for damaged files
        raise RejectedItem(item, "unreadable_nifti", f"{type(e).__name__} opening the file") from e
    dims = [d for i, d in enumerate(shape) if i < 3 or d != 1]   # trailing singleton axes
    if len(dims) not in (3, 4):
        raise RejectedItem(item, "not_a_volume", f"shape {shape}: expected 3D or 4D")
    affine = img.affine
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise RejectedItem(item, "bad_dimensions", "the affine is not finite or not invertible")
    if min(dims[:3]) < min_voxels:
        raise RejectedItem(item, "bad_dimensions", f"shape {tuple(dims)}: fewer than {min_voxels} voxels on an axis")
    n_t = dims[3] if len(dims) == 4 else 1
    t = n_t // 2
    try:
        data = np.asanyarray(img.dataobj).reshape(dims)
        if n_t > 1:
            data = data[..., t]
    except Exception as e:  # noqa: BLE001 - a truncated data block fails only when read
        raise RejectedItem(item, "unreadable_nifti", f"{type(e).__name__} reading the voxels") from e
    integer = np.issubdtype(data.dtype, np.integer)
    if not integer:
        data = np.asarray(data, dtype=np.float32)
        if not np.all(np.isfinite(data)):
            raise RejectedItem(item, "non_finite_voxels", f"{int((~np.isfinite(data)).sum())} NaN/inf voxels")
    if data.size == 0 or data.min() == data.max():
        raise RejectedItem(item, "empty_volume", "every voxel has one value")
    vol = nib.Nifti1Image(data, affine)
    return CheckedVolume(vol, tuple(dims), n_t, t, bool(integer), voxel_sha256(vol))


def conform(vol: CheckedVolume, out_path: Path, cfg: NiftiConfig, item: str) -> nib.Nifti1Image:
    """Write ``vol`` as RAS, resampled per ``cfg``, with a clean header (temp file + rename).

    Raises:
        InsufficientDiskSpace: reason ``disk_full``.
        CurationError: reason ``ingest_error`` for other write errors.
    """
    img = nib.as_closest_canonical(vol.image)
    img = resample(img, cfg)
    data = output_dtype(np.asarray(img.dataobj), vol.source_integer)
    out = clean_image(data, img.affine, f"mrifoundry ingest {CONVERTER} {nib.__version__}")
    save_atomic(out, Path(out_path), item, "ingest_error")
    return out
