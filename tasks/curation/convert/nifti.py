"""NIfTI volumes: dicom2nifti per series, RAS via nibabel, isotropic resampling (Triad).

dicom2nifti builds the voxel array and the affine from a list of datasets. We bypass
three of its behaviours on purpose (see ``docs/conversion.md``): ``convert_directory``
(it swallows per-series errors), its LAS reorientation (it must write a file, and we go
to RAS with ``nibabel.as_closest_canonical`` anyway) and its InstanceNumber-based 4D
grouping (we hand it one checked time point, renumbered in slice order).
"""
from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import nibabel.processing
import numpy as np
import pydicom
from pydicom.multival import MultiValue

from mrifoundry.catalog.reasons import REASONS
from mrifoundry.tasks.curation import exam_reads
from mrifoundry.digest import voxel_sha256
from mrifoundry.atomic import atomic_path
from mrifoundry.errors import CurationError, InsufficientDiskSpace, RejectedItem, is_disk_full
from mrifoundry.tasks.curation.continuity.checks import Volume
from mrifoundry.tasks.curation.continuity.screens import MalformedHeader, header_floats, header_int, rescale
from mrifoundry.tasks.curation.dicom_values import drop_undecodable, value_or_none

CONVERTER = "dicom2nifti"
# dicom2nifti keeps its switches in module globals: pin the ones we rely on while converting.
_D2N_SETTINGS = {"validate_slicecount": True, "validate_orientation": True, "validate_orthogonal": True,
                 "validate_slice_increment": True, "validate_instance_number": False, "resample": False}
_D2N_LOCK = threading.Lock()
log = logging.getLogger(__name__)


def _in_background(fn, *args):
    """Run ``fn(*args)`` in a thread of its own (no pool: pools do not survive a worker's fork);
    returns a function that waits and gives its result, or None when it raised."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn(*args)
        except Exception as e:  # noqa: BLE001 - a digest that fails leaves content_sha256 empty, not the series
            log.warning("%s failed: %s", getattr(fn, "__name__", fn), type(e).__name__)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def result():
        thread.join()
        return box.get("value")
    return result


@dataclass(frozen=True)
class NiftiConfig:
    voxel_size_mm: float | None = 1.0          # None = keep native spacing
    shape: tuple[int, int, int] | None = None   # e.g. (256, 256, 128) (Triad)
    interpolation_order: int = 1
    timepoints: str = "middle"                  # "middle" (3D) or "all" (4D) for a 4D series


@dataclass
class NiftiRecord:
    path: Path
    shape: tuple[int, ...]
    zooms: tuple[float, ...]
    axcodes: str
    converter: str
    converter_version: str
    params: dict
    content_sha256: str | None = None  # voxels before resampling (mrifoundry.digest.voxel_sha256)
    affine: np.ndarray | None = None   # of the written image (sidecar directions, copy detection)
    data: np.ndarray | None = field(default=None, repr=False)   # the written voxels (quality metrics: no re-read)


@contextlib.contextmanager
def _dicom2nifti_settings():
    """Set dicom2nifti's module-global switches, restore them after (serialised by a lock)."""
    import dicom2nifti.settings as settings

    with _D2N_LOCK:
        saved = {k: getattr(settings, k) for k in _D2N_SETTINGS}
        try:
            for k, v in _D2N_SETTINGS.items():
                setattr(settings, k, v)
            yield
        finally:
            for k, v in saved.items():
                setattr(settings, k, v)


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError, OverflowError):
        return False


def _text(value) -> bool:
    return isinstance(value, str)


def _texts(value) -> bool:
    return isinstance(value, str) or (isinstance(value, MultiValue) and all(map(_text, value)))


# Values dicom2nifti reads that the volume does not need (TR/TE go to db_name, which we blank;
# SliceThickness only for a single slice; vendor detection; its own localizer filter): an
# unreadable one is dropped from the in-memory dataset (it crashes dicom2nifti otherwise).
_DROP_UNREADABLE = {"RepetitionTime": _finite, "EchoTime": _finite, "SliceThickness": _finite,
                    "Manufacturer": _text, "ImageType": _texts}
# Values the volume needs (geometry, pixel module): an unreadable one is malformed_header.
_NEEDED_FLOATS = (("ImagePositionPatient", 3), ("ImageOrientationPatient", 6), ("PixelSpacing", 2))
_NEEDED_INTS = ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel")


def _readable(ds: pydicom.Dataset, keyword: str, check) -> bool:
    return bool(check(value_or_none(ds, keyword)))


def _screen_header(ds: pydicom.Dataset) -> None:
    """Make one dataset safe for dicom2nifti, in memory.

    Raises:
        MalformedHeader: a geometry or pixel-module value that cannot be read as its type.
    """
    for keyword, n in _NEEDED_FLOATS:
        header_floats(ds, keyword, n)
    for keyword in _NEEDED_INTS:
        header_int(ds, keyword)
    rescale(ds)
    drop_undecodable(ds)   # anything else pydicom cannot decode: dicom2nifti would trip over it
    for keyword, check in _DROP_UNREADABLE.items():
        if keyword in ds and not _readable(ds, keyword, check):
            del ds[keyword]
    stored = header_int(ds, "BitsStored")
    if stored is not None and not _readable(ds, "HighBit", lambda v: isinstance(v, int)):
        if "HighBit" in ds:
            del ds["HighBit"]   # a fresh US element: setting the value would keep a wrong VR
        ds.HighBit = stored - 1   # dicom2nifti compares it when BitsStored < BitsAllocated


class _SharedElements:
    """A slice handed to dicom2nifti. Its ``get_volume_pixeldata`` deep-copies every slice (header
    and pixels, ≈ 3 ms a slice, 17 % of a 512²×60 conversion) so that its in-place pixel fix-ups
    leave the caller's dataset alone; a copy that shares the (unchanged) elements and owns a copy
    of the decoded pixels gives it the same protection."""

    def __deepcopy__(self, memo):
        out = copy.copy(self)     # the copy's own attribute dict; the element dict is shared
        pixels = self.__dict__.get("_pixel_array")
        out._pixel_array = None if pixels is None else pixels.copy()
        memo[id(self)] = out
        return out


class _Slice(_SharedElements, pydicom.FileDataset):
    """A slice read from its file."""


class _KeptSlice(_SharedElements, pydicom.Dataset):
    """A slice de-identification kept in memory (tasks/curation/exam_reads.py)."""


_SLICE_CLASS = {pydicom.FileDataset: _Slice, pydicom.Dataset: _KeptSlice}


def _read_datasets(files: list[Path], read=pydicom.dcmread) -> list[pydicom.Dataset]:
    """Raises MalformedHeader (see :func:`_screen_header`)."""
    datasets = []
    for i, path in enumerate(files):
        ds = read(path)
        exam_reads.forget([path])   # changed in place below: no later reader of this exam may get it
        if type(ds) in _SLICE_CLASS:
            ds.__class__ = _SLICE_CLASS[type(ds)]
        _screen_header(ds)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()  # in memory; dicom2nifti expects native pixel data
        # our order is the checked slice order; dicom2nifti groups by InstanceNumber and
        # would take interleaved or slice-major numbering for a second stack
        ds.InstanceNumber = i + 1
        datasets.append(ds)
    return datasets


def dicom_to_image(files: list[Path], read=pydicom.dcmread) -> nib.Nifti1Image:
    """One checked 3D stack → NIfTI image (dicom2nifti's array and affine), in RAS.

    Raises:
        dicom2nifti.exceptions.ConversionError / ConversionValidationError and others
        from dicom2nifti, unchanged.
    """
    from dicom2nifti.convert_dicom import dicom_array_to_nifti

    datasets = _read_datasets(files, read)
    with _dicom2nifti_settings():
        # its logger prints positions on validation failures: keep it quiet in our logs
        d2n_logger = logging.getLogger("dicom2nifti")
        level = d2n_logger.level
        d2n_logger.setLevel(logging.ERROR)
        try:
            result = dicom_array_to_nifti(datasets, None, reorient_nifti=False)
        finally:
            d2n_logger.setLevel(level)
    return nib.as_closest_canonical(result["NII"])


def _dicom2nifti_reason(e: Exception) -> str | None:
    """``d2n_<code>`` for dicom2nifti's ConversionError/ConversionValidationError, else None."""
    from dicom2nifti.exceptions import ConversionError, ConversionValidationError

    if not isinstance(e, (ConversionError, ConversionValidationError)):
        return None
    code = "d2n_" + str(e).strip().lower().replace("/", "_")
    return code if code in REASONS else "d2n_other"


def _inside_source(img: nib.Nifti1Image, source: nib.Nifti1Image) -> np.ndarray:
    """Mask of output voxels whose centre lies within half a voxel of the source grid.

    A source voxel stands for the slab ±½ voxel around its centre, so a resampled voxel in
    that slab is measured data; beyond it (the corners of an oblique stack) is nothing.
    """
    m = np.linalg.inv(source.affine) @ img.affine
    if not np.count_nonzero(m[:3, :3] - np.diag(np.diag(m[:3, :3]))):
        # axis-aligned: each axis's test depends on its own index only, so three 1-D tests and
        # their outer AND give the same mask (the zero terms below add exactly 0) at a fraction
        # of the cost (0.09 s → 0.01 s for 200×200×180)
        inside = []
        for axis, n in enumerate(source.shape[:3]):
            coord = np.float32(m[axis, axis]) * np.arange(img.shape[axis], dtype=np.float32) + np.float32(m[axis, 3])
            inside.append((coord >= -0.5 - 1e-3) & (coord <= n - 0.5 + 1e-3))
        return inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    mask = np.ones(img.shape[:3], dtype=bool)
    grids = np.ogrid[tuple(slice(0, n) for n in img.shape[:3])]
    for axis, n in enumerate(source.shape[:3]):
        # source coordinate along `axis` = row `axis` of m applied to (i, j, k, 1); float32 keeps it small
        coord = sum(np.float32(m[axis, j]) * grids[j].astype(np.float32) for j in range(3)) + np.float32(m[axis, 3])
        mask &= (coord >= -0.5 - 1e-3) & (coord <= n - 0.5 + 1e-3)
    return mask


def _on_grid(affine: np.ndarray, voxel: float, tol: float = 1e-4) -> bool:
    """The affine maps voxels to world by ``diag(±voxel)`` only (no rotation or shear)."""
    m = affine[:3, :3]
    return bool(np.allclose(np.abs(m), np.diag([voxel] * 3), atol=tol))


def resample(img: nib.Nifti1Image, cfg: NiftiConfig) -> nib.Nifti1Image:
    if cfg.shape is None and cfg.voxel_size_mm is None:
        return img  # native spacing: no interpolation, no float copy (bench: 0.23 s on 512²×128)
    if cfg.shape is None and _on_grid(img.affine, float(cfg.voxel_size_mm)):
        return img  # already axis-aligned at the target spacing: interpolation would return the same voxels
    # float32 before interpolating: scipy keeps the input dtype and would truncate ints
    img = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine)
    # mode="nearest", then the mask: the output box is whole voxels, so its last plane can
    # sit up to a voxel past the last slice centre. With mode="constant" that plane
    # interpolates towards 0 (a dark edge slice, and data shifted at the border); within
    # the source slab it takes the edge value, beyond it 0.
    if cfg.shape is not None:
        voxel = (cfg.voxel_size_mm,) * 3 if cfg.voxel_size_mm else tuple(float(z) for z in img.header.get_zooms()[:3])
        out = nibabel.processing.conform(img, out_shape=tuple(cfg.shape), voxel_size=voxel,
                                         order=cfg.interpolation_order, orientation="RAS", mode="nearest")
    else:
        v = float(cfg.voxel_size_mm)
        out = nibabel.processing.resample_to_output(img, (v, v, v), order=cfg.interpolation_order, mode="nearest")
    data = np.asarray(out.dataobj)
    data[~_inside_source(out, img)] = 0
    return out


def _stack(middle: nib.Nifti1Image, images: list[nib.Nifti1Image]) -> nib.Nifti1Image:
    """One 4D image of the time points, on the middle one's grid (a time point whose grid
    differs, e.g. a volume shifted by the table, is resampled onto it)."""
    data = []
    for img in images:
        if img.shape[:3] != middle.shape[:3] or not np.allclose(img.affine, middle.affine, atol=1e-3):
            img = nibabel.processing.resample_from_to(img, middle, order=1, mode="constant")
        data.append(np.asarray(img.dataobj, dtype=np.float32))
    return nib.Nifti1Image(np.stack(data, axis=-1), middle.affine)


def output_dtype(data: np.ndarray, source_integer: bool) -> np.ndarray:
    """int16 when the source was integer and the rounded values fit; float32 otherwise."""
    if np.issubdtype(data.dtype, np.integer):  # not resampled: no rounding pass needed
        lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
        if lo >= np.iinfo(np.int16).min and hi <= np.iinfo(np.int16).max:
            return data.astype(np.int16, copy=False)
        return data.astype(np.float32)
    if source_integer:
        rounded = np.rint(data)
        if rounded.size == 0 or (rounded.min() >= np.iinfo(np.int16).min and rounded.max() <= np.iinfo(np.int16).max):
            return rounded.astype(np.int16)
    return data.astype(np.float32)


def clean_image(data: np.ndarray, affine: np.ndarray, descrip: str) -> nib.Nifti1Image:
    """A fresh header: only geometry, units and ``descrip`` (a PHI-free provenance line)."""
    img = nib.Nifti1Image(data, affine)
    hdr = img.header
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr.set_xyzt_units("mm")
    hdr["descrip"] = descrip[:79].encode()
    hdr["db_name"] = b""
    hdr["aux_file"] = b""
    hdr["intent_name"] = b""
    hdr.extensions.clear()
    return img


def save_atomic(img: nib.Nifti1Image, out_path: Path, item: str, error_reason: str) -> None:
    """Write ``img`` to ``out_path`` through a temp file and a rename: no half-written NIfTI.

    Raises:
        InsufficientDiskSpace: reason ``disk_full``.
        CurationError: ``error_reason`` for other write errors.
    """
    try:
        with atomic_path(out_path, keep_suffix=True) as tmp:  # the temp's .nii.gz tells nibabel to gzip
            nib.save(img, tmp)
    except OSError as e:
        if is_disk_full(e):
            raise InsufficientDiskSpace(item, "disk_full", "no space left while writing NIfTI") from e
        raise CurationError(item, error_reason, f"{type(e).__name__} while writing NIfTI") from e


def volumes_to_nifti(volumes: list[Volume], out_path: Path, cfg: NiftiConfig = NiftiConfig(),
                     read=pydicom.dcmread) -> NiftiRecord:
    """Convert a checked series (its middle time point when 4D) to ``out_path`` (.nii.gz).

    Args:
        volumes: from :func:`tasks.curation.continuity.checks.check_series`, in temporal order.
        out_path: ``OUT/research/nifti/<exam_id>/<series_id>.nii.gz``.
        cfg: voxel size, optional fixed shape, interpolation order.
        read: how a file is read (``pydicom.dcmread``, or the PNG writer's kept datasets:
            tasks/curation/convert/reads.py).

    Returns:
        A :class:`NiftiRecord` with provenance (converter, version, parameters).

    Raises:
        InsufficientDiskSpace: reason ``disk_full``.
        RejectedItem: a dicom2nifti validation code (``d2n_*``), or ``malformed_header`` for a
            geometry/pixel value that cannot be read (continuity normally rejects those first).
        CurationError: reason ``convert_error`` for anything else (dicom2nifti errors included).
    """
    out_path = Path(out_path)
    item = out_path.name.split(".")[0]  # the series id, by the layout in docs/contracts.md
    if not volumes:
        raise CurationError(item, "convert_error", "no volumes to convert")
    t = len(volumes) // 2  # middle time point (the later of the two middles when even)
    chosen = list(range(len(volumes))) if cfg.timepoints == "all" else [t]
    version = importlib.metadata.version("dicom2nifti")
    try:
        img = dicom_to_image(volumes[t].files, read)
        source_integer = np.issubdtype(img.get_data_dtype(), np.integer)
        # the digest (reorder + SHA-256, GIL released) runs beside resampling and gzip: 0.18 s at 512²×128
        digest = _in_background(voxel_sha256, img)
        img = resample(img, cfg)
        if len(chosen) > 1:
            img = _stack(img, [resample(dicom_to_image(volumes[k].files), cfg) if k != t else img for k in chosen])
        data = output_dtype(np.asarray(img.dataobj), source_integer)
        img = clean_image(data, img.affine, f"mrifoundry {CONVERTER} {version}")
    except MalformedHeader as e:
        raise RejectedItem(item, e.reason, e.message) from e
    except OSError as e:
        if is_disk_full(e):
            raise InsufficientDiskSpace(item, "disk_full", "no space left while converting") from e
        raise CurationError(item, "convert_error", f"{type(e).__name__} while converting to NIfTI") from e
    except Exception as e:  # noqa: BLE001 - dicom2nifti raises plain Exception/TypeError too
        reason = _dicom2nifti_reason(e)
        if reason:   # its validation refused the data: a rejection with its code, not an error
            raise RejectedItem(item, reason, f"dicom2nifti {reason[4:].upper()}") from e
        raise CurationError(item, "convert_error", f"{type(e).__name__} while converting to NIfTI") from e
    try:
        save_atomic(img, out_path, item, "convert_error")
    finally:
        digest = digest()
    return NiftiRecord(
        path=out_path, shape=tuple(int(s) for s in img.shape),
        zooms=tuple(round(float(z), 6) for z in img.header.get_zooms()),
        axcodes="".join(nib.aff2axcodes(img.affine)), converter=CONVERTER, converter_version=version,
        params={"voxel_size_mm": cfg.voxel_size_mm, "shape": list(cfg.shape) if cfg.shape else None,
                "interpolation_order": cfg.interpolation_order, "temporal_index": volumes[t].temporal_index,
                "timepoints": chosen,
                "n_timepoints": len(volumes), "n_slices": len(volumes[t].files),
                "reorientation": "nibabel.as_closest_canonical", "resampling": "nibabel.processing",
                "nibabel_version": nib.__version__, "dtype": str(data.dtype)},
        content_sha256=digest, affine=img.affine, data=data,
    )
