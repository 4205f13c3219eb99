"""One classic MR image per dataset: Siemens mosaics and enhanced multi-frame objects split.

The continuity checks, PNG and NIfTI conversion all work on classic single-frame images.
Two vendor layouts hold a whole volume (or 4D series) in one object:

- **Siemens mosaic** (``ImageType`` … ``MOSAIC``): the slices are tiles of one 2D image;
  ``NumberOfImagesInMosaic`` and the slice normal come from the CSA image header, read with
  :mod:`nibabel.nicom.csareader`; the first slice's position undoes the mosaic's offset of
  ``ImagePositionPatient`` (see :func:`_first_tile_position`).
- **Enhanced / legacy-converted enhanced MR** (Philips, Siemens XA, Canon): one frame per
  image; each frame's geometry, type, timing and diffusion values sit in the shared and
  per-frame functional groups, which are flattened into a classic header.

:func:`split_images` is called on the *original* dataset, before de-identification, because
the CSA header is a private element that de-identification removes. The frames get new
SOPInstanceUIDs derived from the original UID and the frame number (then remapped by
de-identification like every UID), so copies of one object split into equal frames.
Nothing here logs or raises header values.
"""
from __future__ import annotations

import copy
import math
import struct

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

__all__ = ["FrameSplitError", "image_set", "image_type", "is_enhanced", "is_mosaic", "split_images"]

_ENHANCED_CLASSES = frozenset({pydicom.uid.EnhancedMRImageStorage, pydicom.uid.LegacyConvertedEnhancedMRImageStorage})
# functional-group elements whose classic attribute has another keyword
_RENAMED = {"FrameType": "ImageType", "EffectiveEchoTime": "EchoTime",
            "TemporalPositionIndex": "TemporalPositionIdentifier"}
# never copied from a functional group into the classic header
_SKIPPED = {"ReferencedImageSequence", "DerivationImageSequence", "SourceImageSequence",
            "ReferencedRawDataSequence", "ReferencedWaveformSequence"}
# removed from the top level of a frame's header: multi-frame structure and the pixels
_MULTIFRAME_ONLY = ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence", "NumberOfFrames",
                    "DimensionIndexSequence", "DimensionOrganizationSequence", "FrameIncrementPointer",
                    "PixelData", "FloatPixelData", "DoubleFloatPixelData", "ExtendedOffsetTable",
                    "ExtendedOffsetTableLengths")
_PHASE = frozenset({"P", "PHASE", "PHASE MAP"})
_REAL, _IMAGINARY = frozenset({"R", "REAL"}), frozenset({"I", "IMAGINARY"})


class FrameSplitError(Exception):
    """The object cannot be split: ``reason`` is a ledger code, the message names no value."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


def image_type(ds: Dataset) -> list[str]:
    """ImageType values, stripped and upper-cased (a single string is one value)."""
    value = ds.get("ImageType") or []
    if isinstance(value, (str, bytes, int, float)):   # one string, or garbage a number (continuity rejects it)
        value = [value]
    return [str(v).strip().upper() for v in value]


def is_mosaic(ds: Dataset) -> bool:
    """A Siemens mosaic: ImageType says MOSAIC (the CSA header then gives the slice count)."""
    return "MOSAIC" in image_type(ds)


def is_enhanced(ds: Dataset) -> bool:
    """An enhanced (or legacy-converted enhanced) MR object with more than one frame or functional groups."""
    frames = ds.get("NumberOfFrames")
    try:
        n = int(frames) if frames not in (None, "") else 1
    except (TypeError, ValueError):
        n = 1
    return str(ds.get("SOPClassUID", "")) in _ENHANCED_CLASSES or (
        n > 1 and "PerFrameFunctionalGroupsSequence" in ds)


def image_set(ds: Dataset) -> str:
    """Which image set of a series a classic image belongs to: ``""`` (magnitude/anatomy),
    ``"phase"``, ``"real"``, ``"imaginary"`` or ``"trace"`` (an isotropic DWI image).

    Vendors store these side by side in one series (Philips SWI magnitude + phase, DWI with its
    isotropic trace); dcm2niix writes them to separate files, and so do we (one catalog series
    each). Read on the original header: Philips marks isotropic DWI images in a private tag.
    """
    complex_part = str(ds.get("ComplexImageComponent", "") or "").strip().upper()
    tokens = set(image_type(ds)[2:])
    if complex_part == "PHASE" or tokens & _PHASE:
        return "phase"
    if complex_part == "REAL" or tokens & _REAL:
        return "real"
    if complex_part == "IMAGINARY" or tokens & _IMAGINARY:
        return "imaginary"
    directionality = str(ds.get("DiffusionDirectionality", "") or "").strip().upper()
    philips_direction = ds.get((0x2001, 0x1004))
    # Philips marks the b=0 image with the same 'I' as the isotropic trace: b=0 stays in the DWI
    # series (dcm2niix keeps it there too); an unknown b-value keeps the old reading (trace)
    b = b_value(ds)
    philips_iso = (philips_direction is not None and _text(philips_direction.value) == "I"
                   and (b is None or b > 0))
    if directionality == "ISOTROPIC" or philips_iso or "ISOTROPIC" in tokens:
        return "trace"
    return ""


def b_value(ds: Dataset) -> float | None:
    """The diffusion b-value: DiffusionBValue (0018,9087), else Philips' private (2001,1003) FL;
    None when neither reads as a number."""
    for tag in ((0x0018, 0x9087), (0x2001, 0x1003)):
        elem = ds.get(tag)
        if elem is None:
            continue
        try:
            value = elem.value
            if isinstance(value, bytes):   # private FL read without its dictionary: little-endian float32
                value = struct.unpack("<f", value[:4])[0]
            value = value[0] if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else value
            number = float(value)
        except (TypeError, ValueError, struct.error, IndexError):
            continue
        if math.isfinite(number):
            return number
    return None


def _text(value) -> str:
    if isinstance(value, bytes):
        value = value.decode("latin-1", "replace")
    return str(value).strip("\0 ").upper()


def split_images(ds: Dataset) -> list[Dataset]:
    """Classic single-frame MR image datasets of one object (``[ds]`` when it already is one).

    Args:
        ds: a whole original dataset (pixels included).

    Returns:
        One dataset per image, with native little-endian pixel data when split, each with
        its own SOPInstanceUID, ImagePositionPatient, ImageOrientationPatient and (enhanced)
        ImageType, timing and diffusion values; ``TemporalPositionIdentifier`` numbers the
        volumes of a 4D object.

    Raises:
        FrameSplitError: ``multiframe_truncated`` / ``multiframe_undecodable`` when the pixels
            of a mosaic or multi-frame object cannot be read, ``multiframe_no_geometry`` when a
            mosaic lacks its CSA slice count or a frame its position, ``mosaic_grid_mismatch``
            when the mosaic's size is not a multiple of its tile grid.
    """
    if is_enhanced(ds):
        return _split_enhanced(ds)
    if is_mosaic(ds) and "PixelData" in ds:
        return _split_mosaic(ds)
    return [ds]


def mirror_rows(ds: Dataset) -> None:
    """Reverse the image's rows in place (native little-endian pixels; geometry unchanged): a GE
    reversed-polarity ``epi_pepolar`` image is stored mirrored (tasks/curation/deid/acquisition.py).

    Raises:
        FrameSplitError: the pixels cannot be decoded.
    """
    arr = _pixels(ds)[..., ::-1, :]
    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    _set_pixels(ds, arr, ds)


def _pixels(ds: Dataset) -> np.ndarray:
    if "PixelData" not in ds:
        raise FrameSplitError("multiframe_truncated", "a multi-image object has no pixel data")
    try:
        return ds.pixel_array
    except Exception as e:  # noqa: BLE001 - decoders raise many types
        short = "short" in str(e).lower() or "truncat" in str(e).lower() or isinstance(e, (EOFError, ValueError))
        raise FrameSplitError("multiframe_truncated" if short else "multiframe_undecodable",
                              f"pixel data of a multi-image object could not be read ({type(e).__name__})") from e


def _frame_uid(ds: Dataset, k: int) -> str:
    return generate_uid(entropy_srcs=[str(ds.get("SOPInstanceUID", "")), "frame", str(k)])


def _base(ds: Dataset) -> Dataset:
    """A shallow header copy without the multi-frame structure and pixels."""
    out = Dataset()
    for elem in ds:
        if elem.keyword not in _MULTIFRAME_ONLY:
            out.add(copy.deepcopy(elem))
    meta = FileMetaDataset()
    old = getattr(ds, "file_meta", None) or FileMetaDataset()
    for elem in old:
        meta.add(copy.deepcopy(elem))
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out.file_meta = meta
    return out


def _finish(out: Dataset, ds: Dataset, k: int, tile: np.ndarray) -> Dataset:
    uid = _frame_uid(ds, k)
    out.SOPClassUID = MRImageStorage
    out.SOPInstanceUID = uid
    out.file_meta.MediaStorageSOPClassUID = MRImageStorage
    out.file_meta.MediaStorageSOPInstanceUID = uid
    out.Rows, out.Columns = int(tile.shape[0]), int(tile.shape[1])
    out.SamplesPerPixel = 1
    _set_pixels(out, tile, ds)
    return out


def _set_pixels(out: Dataset, arr: np.ndarray, source: Dataset) -> None:
    """Native little-endian PixelData of ``arr`` (OW, or OB for 8-bit ``source`` pixels)."""
    arr = np.ascontiguousarray(arr)
    out.PixelData = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    out["PixelData"].VR = "OW" if int(source.get("BitsAllocated", 16)) > 8 else "OB"


# --------------------------------------------------------------------------- Siemens mosaic
def _split_mosaic(ds: Dataset) -> list[Dataset]:
    import warnings
    with warnings.catch_warnings():   # nibabel.nicom warns on import that its *readers* are experimental
        warnings.simplefilter("ignore", UserWarning)
        import nibabel.nicom.csareader as csareader

    try:
        csa = csareader.get_csa_header(ds, "image")
        n = csareader.get_n_mosaic(csa) if csa else None
        normal = csareader.get_slice_normal(csa) if csa else None
    except Exception as e:  # noqa: BLE001 - a broken CSA header is a geometry problem
        raise FrameSplitError("multiframe_no_geometry", "the mosaic's CSA header cannot be read") from e
    if not n or normal is None or "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
        raise FrameSplitError("multiframe_no_geometry", "a mosaic without NumberOfImagesInMosaic, slice normal or position")
    n, normal = int(n), np.asarray(normal, dtype=float)
    size = math.ceil(math.sqrt(n))
    rows, cols = int(ds.Rows), int(ds.Columns)
    if rows % size or cols % size:   # resized or damaged: tiles would straddle images (nibabel refuses too)
        raise FrameSplitError("mosaic_grid_mismatch", "mosaic size is not a multiple of its tile grid")
    tr, tc = rows // size, cols // size
    first = _first_tile_position(ds, rows, cols, tr, tc)
    step = _slice_step(ds)
    arr = _pixels(ds)
    images = []
    try:
        instance = int(ds.get("InstanceNumber"))
    except (TypeError, ValueError):
        instance = None
    base = _base(ds)
    base.ImageType = [t for t in image_type(ds) if t != "MOSAIC"] or ["ORIGINAL", "PRIMARY"]
    for k in range(n):
        r, c = divmod(k, size)
        out = copy.deepcopy(base)
        out.ImagePositionPatient = [_ds(v) for v in first + k * step * normal]
        out.InStackPositionNumber = k + 1
        if instance is not None:   # one mosaic = one volume: its InstanceNumber numbers the volumes
            out.TemporalPositionIdentifier = instance
        images.append(_finish(out, ds, k, arr[r * tr:(r + 1) * tr, c * tc:(c + 1) * tc]))
    return images


def _first_tile_position(ds: Dataset, rows: int, cols: int, tr: int, tc: int) -> np.ndarray:
    """Top-left voxel of the first tile. The mosaic's ImagePositionPatient is that of a
    rows × cols slice with the tile's centre, so the tile starts (rows - tr) / 2 rows and
    (cols - tc) / 2 columns further in (as nibabel's ``MosaicWrapper.image_position``)."""
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    spacing = [float(v) for v in ds.PixelSpacing]   # (between rows, between columns)
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    return ipp + iop[3:] * spacing[0] * (rows - tr) / 2 + iop[:3] * spacing[1] * (cols - tc) / 2


def _slice_step(ds: Dataset) -> float:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            value = float(ds.get(keyword))
        except (TypeError, ValueError):
            continue
        if math.isfinite(value) and value > 0:
            return value
    raise FrameSplitError("multiframe_no_geometry", "a mosaic without SpacingBetweenSlices or SliceThickness")


def _ds(value: float) -> str:
    """A DS string (≤ 16 characters) of a float."""
    s = f"{value:.6g}"
    return s if len(s) <= 16 else f"{value:.4e}"


# --------------------------------------------------------------------------- enhanced MR
def _flatten(groups: Dataset | None, out: Dataset) -> None:
    """Copy every macro of a functional-groups item into the classic header."""
    if groups is None:
        return
    for macro in groups:
        if macro.VR != "SQ" or not macro.value or macro.keyword in _SKIPPED or macro.tag.is_private:
            continue
        for elem in macro.value[0]:
            if elem.keyword in _SKIPPED:
                continue
            target = _RENAMED.get(elem.keyword, elem.keyword)
            new = copy.deepcopy(elem)
            if target != elem.keyword:
                setattr(out, target, new.value)
            else:
                out.add(new)


def _volume_key(frame: Dataset) -> tuple:
    """What tells the volumes of a 4D enhanced object apart: time, echo, b-value, direction, ASL label/control."""
    def get(keyword):
        v = frame.get(keyword)
        if isinstance(v, (list, tuple, pydicom.multival.MultiValue)):
            return tuple(round(float(x), 4) for x in v)
        return str(v) if v is not None else ""
    seq = frame.get("DiffusionGradientDirectionSequence")
    gradient = tuple(round(float(x), 4) for x in (seq[0].get("DiffusionGradientOrientation") or [])) if seq else ()
    return (get("TemporalPositionIdentifier"), get("EchoTime"), get("EchoNumbers"), get("DiffusionBValue"), gradient,
            get("ASLContext"))


def _acquisition_order(frames: list[Dataset], keys: list[tuple], distinct: list[tuple]) -> list[tuple]:
    """The volumes in acquisition order, as a classic export numbers them (dcm2niix too): by the
    frames' TemporalPositionIndex when it is a number, then by their earliest acquisition
    date-time when every frame has one, then by first appearance in frame order. (Sorting the
    keys themselves put a DTI's b=0 first and volume "10" before "2".)"""
    first: dict[tuple, int] = {}
    when: dict[tuple, str] = {}
    for n, (f, key) in enumerate(zip(frames, keys)):
        first.setdefault(key, n)
        t = f"{f.get('AcquisitionDate', '') or ''}{f.get('AcquisitionTime', '') or ''}".strip()
        if t:
            when[key] = min(when.get(key, t), t)
    timed = len(when) == len(distinct)

    def order(key: tuple):
        try:
            tpi = float(key[0])
        except (TypeError, ValueError):
            tpi = float("inf")
        return tpi, when[key] if timed else "", first[key]
    return sorted(distinct, key=order)


def _split_enhanced(ds: Dataset) -> list[Dataset]:
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared = shared[0] if shared else None
    try:
        n = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        n = 1
    if len(per_frame) not in (0, n):
        raise FrameSplitError("multiframe_no_geometry", "per-frame functional groups do not match NumberOfFrames")
    arr = _pixels(ds)
    arr = arr.reshape((n,) + arr.shape[-2:]) if arr.ndim >= 2 else arr
    base = _base(ds)
    frames = []
    for k in range(n):
        out = copy.deepcopy(base)
        _flatten(shared, out)
        _flatten(per_frame[k] if per_frame else None, out)
        if "ImagePositionPatient" not in out or "ImageOrientationPatient" not in out:
            raise FrameSplitError("multiframe_no_geometry", "a frame without PlanePosition/PlaneOrientation")
        dt = str(out.get("FrameAcquisitionDateTime", "") or "")
        if len(dt) >= 14:
            out.AcquisitionDate, out.AcquisitionTime = dt[:8], dt[8:].split("+")[0].split("-")[0]
        out.InstanceNumber = k + 1
        for keyword in ("FrameAcquisitionDateTime", "FrameReferenceDateTime"):
            if keyword in out:
                delattr(out, keyword)
        frames.append(_finish(out, ds, k, arr[k]))
    keys = [_volume_key(f) for f in frames]
    distinct = list(dict.fromkeys(keys))
    if len(distinct) > 1:   # explicit volume numbers: the continuity split needs no guessing
        index = {key: i + 1 for i, key in enumerate(_acquisition_order(frames, keys, distinct))}
        for f, key in zip(frames, keys):
            f.TemporalPositionIdentifier = index[key]
    else:
        for f in frames:
            if "TemporalPositionIdentifier" in f:
                delattr(f, "TemporalPositionIdentifier")
    return frames
