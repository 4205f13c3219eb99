"""DICOM Segmentation objects (SEG, PS3.3 A.51) → a uint8 label map, on pydicom + NumPy.

No highdicom (not installed, and this needs only a small part of it): the frames are read
with ``pydicom``'s ``pixel_array`` (1-bit BINARY frames come unpacked as 0/1; FRACTIONAL frames
are divided by ``MaximumFractionalValue`` and thresholded), and each frame is placed by its
functional groups (per-frame, else shared): ``SegmentIdentificationSequence``
→ ``ReferencedSegmentNumber``, ``PlanePositionSequence`` → ``ImagePositionPatient``,
``PlaneOrientationSequence`` → ``ImageOrientationPatient``, ``PixelMeasuresSequence`` →
``PixelSpacing`` (and ``SpacingBetweenSlices``).

The SEG's own grid: the frames' common orientation and pixel spacing; slices along the
normal from the lowest to the highest frame position, spaced by ``SpacingBetweenSlices``
(else the smallest gap between frame positions). Frames of a slice that has none (a SEG
may leave out empty frames) stay 0. Label value = segment number, name = ``SegmentLabel``;
where segments overlap, the higher segment number wins (a label map holds one value per
voxel). With a ``reference`` image the map is resampled onto its grid by nearest neighbour.

Not supported: LABELMAP segmentations (Supplement 243), frames of one SEG with different
orientations or in-plane origins, segment numbers above 255.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import nibabel.processing
import numpy as np

from mrifoundry.tasks.ingest.labelled3d.readers import LPS_TO_RAS, SEG_SOP_CLASS, is_dicom_file
from mrifoundry.tasks.ingest.labels import CaseError

_TOL = 1e-3  # mm / direction cosine tolerance


@dataclass
class DicomSeg:
    """A SEG read into a label map (RAS)."""

    image: nib.Nifti1Image                 # uint8 labels, RAS
    names: dict[int, str]                  # segment number → SegmentLabel
    n_frames: int
    frames_per_segment: dict[int, int]
    segmentation_type: str                 # BINARY | FRACTIONAL
    referenced_series_uid: str | None = None
    referenced_instances: set[str] = field(default_factory=set)


def is_dicom_seg(path: Path) -> bool:
    """A DICOM file of the Segmentation Storage SOP class."""
    import pydicom
    if not Path(path).is_file() or not is_dicom_file(path):
        return False
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # noqa: BLE001 - not readable as DICOM: not a SEG
        return False
    return str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS


def _group(frame, shared, name: str, what: str):
    for src in (frame, shared):
        if src is not None and name in src and len(src[name].value):
            return src[name].value[0]
    raise CaseError(f"SEG frame without {name} ({what})")


def _frames(ds) -> tuple[np.ndarray, list]:
    n = int(ds.get("NumberOfFrames", 1) or 1)
    pix = np.asarray(ds.pixel_array)
    if pix.ndim == 2:
        pix = pix[None]
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence", []))
    if pix.shape[0] != n or len(per_frame) != n:
        raise CaseError(f"SEG: {pix.shape[0]} frames of pixel data, NumberOfFrames {n}, "
                        f"{len(per_frame)} per-frame functional groups (they must agree)")
    return pix, per_frame


def _masks(ds, pix: np.ndarray, threshold: float) -> tuple[np.ndarray, str]:
    kind = str(ds.get("SegmentationType", "")).upper()
    if kind == "BINARY":
        return pix > 0, kind
    if kind == "FRACTIONAL":
        top = float(ds.get("MaximumFractionalValue", 255) or 255)
        return pix.astype(np.float64) / top >= threshold, kind
    raise CaseError(f"SEG: SegmentationType {kind or '(none)'} not supported (BINARY or FRACTIONAL)")


def _slice_index(positions: np.ndarray, spacing: float | None) -> tuple[np.ndarray, float]:
    """Index of each frame along the normal and the slice spacing.

    Raises:
        CaseError: positions not on a regular grid.
    """
    uniq = np.unique(np.round(positions / _TOL) * _TOL)
    if spacing is None or spacing <= 0:
        gaps = np.diff(uniq)
        spacing = float(gaps.min()) if gaps.size else 1.0
    k = (positions - uniq[0]) / spacing
    if not np.allclose(k, np.rint(k), atol=1e-2):
        raise CaseError("SEG: frame positions are not on a regular slice grid")
    return np.rint(k).astype(int), float(spacing)


def read_dicom_seg(path: Path, reference: nib.spatialimages.SpatialImage | None = None,
                   threshold: float = 0.5) -> DicomSeg:
    """Read a SEG file into a label map on its own grid, or on ``reference``'s grid.

    Args:
        path: the SEG file.
        reference: an image (any orientation; only its first three axes count) whose grid the
            labels are resampled onto (nearest neighbour; outside the SEG's frames = 0).
        threshold: FRACTIONAL segments: a voxel belongs to the segment when value/max ≥ it.

    Raises:
        CaseError: not a SEG, inconsistent frames (count, orientation, spacing, in-plane
            origin, irregular slice positions), unsupported type, segment number > 255.
    """
    import pydicom

    ds = pydicom.dcmread(path)
    if str(ds.get("SOPClassUID", "")) != SEG_SOP_CLASS:
        raise CaseError(f"{Path(path).name}: not a DICOM Segmentation (SOPClassUID {ds.get('SOPClassUID')})")
    names = {int(s.SegmentNumber): str(s.get("SegmentLabel", f"segment_{int(s.SegmentNumber)}"))
             for s in ds.get("SegmentSequence", [])}
    if any(v < 1 or v > 255 for v in names):
        raise CaseError(f"SEG: segment numbers {sorted(names)} outside 1..255 cannot be uint8 label values")
    pix, per_frame = _frames(ds)
    masks, kind = _masks(ds, pix, threshold)
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None

    segs, ipps, iops, spacings, between = [], [], [], [], set()
    for f in per_frame:
        segs.append(int(_group(f, shared, "SegmentIdentificationSequence", "segment").ReferencedSegmentNumber))
        ipps.append(np.array(_group(f, shared, "PlanePositionSequence", "position").ImagePositionPatient, float))
        iops.append(np.array(_group(f, shared, "PlaneOrientationSequence", "orientation").ImageOrientationPatient,
                             float))
        measures = _group(f, shared, "PixelMeasuresSequence", "pixel spacing")
        spacings.append(np.array(measures.PixelSpacing, float))
        if measures.get("SpacingBetweenSlices") is not None:
            between.add(round(float(measures.SpacingBetweenSlices), 6))
    if not segs:
        raise CaseError("SEG: no frames")
    if any(s not in names for s in segs):
        raise CaseError(f"SEG: frames reference segments {sorted(set(segs) - set(names))} not in SegmentSequence")
    iop, ps = iops[0], spacings[0]
    if any(not np.allclose(o, iop, atol=_TOL) for o in iops) or any(not np.allclose(s, ps, atol=_TOL)
                                                                     for s in spacings):
        raise CaseError("SEG: frames with different orientations or pixel spacings are not supported")
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    ipps_a = np.array(ipps)
    inplane = ipps_a @ np.stack([row, col], axis=1)
    if not np.allclose(inplane, inplane[0], atol=_TOL):
        raise CaseError("SEG: frames with different in-plane origins are not supported")
    k, step = _slice_index(ipps_a @ normal, min(between) if len(between) == 1 else None)

    vol = np.zeros((int(ds.Columns), int(ds.Rows), int(k.max()) + 1), dtype=np.uint8)
    for i in sorted(range(len(segs)), key=lambda i: (segs[i], i)):  # higher segment numbers win
        vol[:, :, k[i]][masks[i].T] = segs[i]
    lps = np.eye(4)
    # column index i runs along the row direction (PixelSpacing[1]), row index j along the column one
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row * ps[1], col * ps[0], normal * step
    lps[:3, 3] = ipps_a[int(np.argmin(k))]
    img = nib.as_closest_canonical(nib.Nifti1Image(vol, LPS_TO_RAS @ lps))
    if reference is not None:
        grid = (tuple(int(d) for d in reference.shape[:3]), reference.affine)
        img = nibabel.processing.resample_from_to(img, grid, order=0, mode="constant", cval=0)
        img = nib.Nifti1Image(np.rint(np.asarray(img.dataobj)).astype(np.uint8), img.affine)
    ref = ds.get("ReferencedSeriesSequence")
    return DicomSeg(
        image=img, names=names, n_frames=len(segs),
        frames_per_segment={s: segs.count(s) for s in sorted(set(segs))}, segmentation_type=kind,
        referenced_series_uid=str(ref[0].SeriesInstanceUID) if ref else None,
        referenced_instances={str(r.ReferencedSOPInstanceUID) for item in (ref or [])
                              for r in item.get("ReferencedInstanceSequence", [])})


__all__ = ["DicomSeg", "is_dicom_seg", "read_dicom_seg"]
