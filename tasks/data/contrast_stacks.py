"""BrainFound training images: the same axial slice of T1, T2 and FLAIR of one exam as RGB.

BrainFound (Mazher, Parker & Alexander, arXiv 2510.23415; ``Dataset/multimodal_mri_dataset.py``)
stacks the same axial slice index of co-registered, skull-stripped T1, T2 and FLAIR as three
channels and resizes to 224. Here: catalog rows (``DEFAULT_QUERY``) → one series per contrast
and exam (:func:`choose_contrasts`) → RGB PNGs (:func:`build_stacks`) that the slice trainer
(tasks/pretraining/slices.py) reads through ``tasks.data.slices.load_slice`` as ``[3, H, W]``.

Missing contrasts (BrainFound requires all three): an exam (and each slice) needs two of the
three — three with ``missing="skip"`` — and a missing channel is the mean of the present ones
(``"replicate"``, default) or zeros (``"zero"``); see :func:`choose_contrasts`.

Differences from BrainFound, and why:

- **Co-registration by world coordinates only.** Our NIfTI volumes are RAS in scanner (world)
  coordinates, so T2/FLAIR are resampled onto the reference grid with the NIfTI affines
  (trilinear, 0 outside a series' field of view). Patient motion between series is *not*
  corrected: no intensity-based registration (BrainFound used MRIPreprocessor's co-registration).
- **No skull stripping** (BrainFound: MRIPreprocessor). Slices are kept when enough of the
  reference slice is foreground (``min_foreground``), not by a fixed index range (BrainFound:
  10..149); ``slice_range`` restricts indices too.
- **Intensities:** robust min-max per channel over that contrast's whole volume (0.5–99.5
  percentile, clipped) → uint8; BrainFound normalises nothing.
- **Geometry:** the slice is padded to a square (zeros, centred) before resizing, so anatomy
  keeps its aspect ratio on any reference grid; BrainFound resizes 240×240 BraTS-like slices.

Display orientation is that of tasks/ingest/labelled2d.py: ``np.rot90`` of the RAS slice, so anterior is
up and the patient's right is on the image's right (neurological; curated DICOM PNGs are
usually radiological — the trainers' horizontal flips make the difference immaterial).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import nibabel.processing
import numpy as np
from PIL import Image

from mrifoundry.atomic import atomic_path, write_text
from mrifoundry.catalog.views import query_dicts

log = logging.getLogger(__name__)

CONTRASTS = ("T1", "T2", "FLAIR")  # → R, G, B
MISSING_MODES = ("replicate", "zero", "skip")
FOREGROUND_LEVEL = 0.05  # a reference voxel is foreground above 5 % of its robust range
PERCENTILES = (0.5, 99.5)
LAYOUT_VERSION = 1  # bump when the PNGs change for the same inputs and parameters
MANIFEST = "stacks.json"

#: Candidate series: converted T1/T2/FLAIR of brain exams (body_part compared case-insensitively).
DEFAULT_QUERY = """
SELECT s.series_id, s.exam_id, upper(s.sequence_type) AS sequence_type, lower(s.orientation) AS orientation,
       s.contrast, s.n_slices, s.nifti_path, s.nifti_shape
FROM training_volumes s JOIN exams e USING (exam_id)
WHERE upper(e.body_part) = 'BRAIN' AND upper(s.sequence_type) IN ('T1', 'T2', 'FLAIR')
ORDER BY s.exam_id, s.series_id
"""


@dataclass(frozen=True)
class ExamStack:
    """One exam's chosen series per contrast (catalog rows, or None when the exam lacks it)."""

    exam_id: str
    t1: Mapping | None
    t2: Mapping | None
    flair: Mapping | None

    @property
    def channels(self) -> tuple[Mapping | None, Mapping | None, Mapping | None]:
        return self.t1, self.t2, self.flair

    @property
    def present(self) -> list[str]:
        return [name for name, row in zip(CONTRASTS, self.channels) if row is not None]

    @property
    def reference(self) -> int:
        """Channel index of the reference grid: the first axial series in T1, T2, FLAIR order
        (its axial slices are native, not interpolated), else the first present one."""
        rows = self.channels
        axial = [i for i, r in enumerate(rows) if r is not None and str(r.get("orientation", "")).lower() == "axial"]
        return axial[0] if axial else next(i for i, r in enumerate(rows) if r is not None)


@dataclass
class StackResult:
    """``rows``: one per PNG (png_file, exam_id, slice_index, channels, series_ids);
    ``skipped``: one ``{exam_id, reason}`` per exam that produced nothing."""

    rows: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)


def _check_missing(missing: str) -> None:
    if missing not in MISSING_MODES:
        raise ValueError(f"missing must be one of {MISSING_MODES}, got {missing!r}")


def _preference(row: Mapping) -> tuple:
    # axial first; then pre-contrast (a post-contrast T1 is another contrast); more slices; id
    return (str(row.get("orientation") or "").lower() != "axial", bool(row.get("contrast")),
            -int(row.get("n_slices") or 0), str(row["series_id"]))


def choose_contrasts(rows: Iterable[Mapping], *, missing: str = "replicate") -> list[ExamStack]:
    """One series per contrast (T1, T2, FLAIR by ``sequence_type``) and exam.

    Choice, deterministic: axial first, then pre-contrast (``contrast`` not True), then the most
    slices, then the smallest series_id. Rows of other sequence types or without a NIfTI are ignored.

    Missing-contrast rule (``missing``): an exam needs at least two of the three contrasts
    (one contrast replicated three times is just a grey slice, which the curated PNGs already
    cover); with ``"skip"`` it needs all three. A missing channel is filled by
    :func:`build_stacks`: ``"replicate"`` (default) = the rounded mean of the present channels,
    ``"zero"`` = zeros; the row's ``channels`` marks it ``-``. The same rule holds per slice
    for the contrasts whose field of view reaches it. The reference grid is the first axial
    series in T1, T2, FLAIR order, else the first present (:attr:`ExamStack.reference`).

    Returns:
        Stacks sorted by exam_id.

    Raises:
        ValueError: an unknown ``missing``.
    """
    _check_missing(missing)
    by_exam: dict[str, dict[str, list[Mapping]]] = {}
    for r in rows:
        seq = str(r.get("sequence_type") or "").upper()
        if seq in CONTRASTS and r.get("nifti_path"):
            by_exam.setdefault(str(r["exam_id"]), {}).setdefault(seq, []).append(r)
    stacks = []
    for exam_id in sorted(by_exam):
        picked = [min(by_exam[exam_id][c], key=_preference) if c in by_exam[exam_id] else None for c in CONTRASTS]
        n = sum(p is not None for p in picked)
        if n == 3 or (n == 2 and missing != "skip"):
            stacks.append(ExamStack(exam_id, *picked))
    return stacks


def _load(path: Path) -> nib.Nifti1Image:
    """A float32 3D image (a trailing singleton time axis dropped); raises on anything else."""
    img = nib.load(path)
    data = np.asarray(img.get_fdata(dtype=np.float32))
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {data.shape}")
    return nib.Nifti1Image(np.nan_to_num(data, copy=False), img.affine)


def scale_uint8(values: np.ndarray, volume: np.ndarray) -> np.ndarray:
    """``values`` mapped to 0..255 by ``volume``'s 0.5–99.5 percentiles (clipped, rounded half
    to even); a flat volume gives zeros."""
    lo, hi = (float(v) for v in np.percentile(volume, PERCENTILES))
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint(np.clip((values - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)


def display_slice(plane: np.ndarray, size: int) -> Image.Image:
    """A RAS axial plane ``[X, Y(, C)]`` → anterior up (``np.rot90``), zero-padded to a centred
    square, resized to ``size``×``size`` (PIL bilinear)."""
    a = np.rot90(plane, axes=(0, 1))
    h, w = a.shape[:2]
    n = max(h, w)
    pad = [((n - h) // 2, n - h - (n - h) // 2), ((n - w) // 2, n - w - (n - w) // 2)] + [(0, 0)] * (a.ndim - 2)
    a = np.ascontiguousarray(np.pad(a, pad))
    return Image.fromarray(a).resize((size, size), Image.Resampling.BILINEAR)


@dataclass
class _Channel:
    volume: np.ndarray               # uint8 on the reference grid
    to_own: np.ndarray | None        # 4×4 reference voxel → own voxel; None: the reference grid
    shape: tuple[int, int, int]      # own grid

    def coverage(self, k: int, foreground: np.ndarray) -> float:
        """Fraction of plane ``k``'s foreground inside this series' field of view."""
        if self.to_own is None or not foreground.any():
            return 1.0
        i, j = np.nonzero(foreground)
        v = self.to_own[:3, :3] @ np.stack([i, j, np.full_like(i, k)]) + self.to_own[:3, 3:]
        inside = np.all((v >= 0) & (v <= np.array(self.shape)[:, None] - 1), axis=0)
        return float(inside.mean())


def _channel_volumes(research: Path, stack: ExamStack) -> tuple[list[_Channel | None], np.ndarray]:
    """Channels on the reference grid (None for a missing contrast) and the reference's scaled
    [0, 1] volume for the foreground test."""
    ref_i = stack.reference
    ref = _load(research / stack.channels[ref_i]["nifti_path"])
    ref_data = np.asarray(ref.dataobj)
    out: list[_Channel | None] = []
    for i, row in enumerate(stack.channels):
        if row is None:
            out.append(None)
            continue
        img = ref if i == ref_i else _load(research / row["nifti_path"])
        native = np.asarray(img.dataobj)
        if img.shape == ref.shape and np.allclose(img.affine, ref.affine, atol=1e-4):
            out.append(_Channel(scale_uint8(native, native), None, img.shape))  # same grid: no interpolation
            continue
        on_ref = np.asarray(nibabel.processing.resample_from_to(img, ref, order=1, cval=0.0).dataobj)
        out.append(_Channel(scale_uint8(on_ref, native), np.linalg.inv(img.affine) @ ref.affine, img.shape))
    return out, scale_uint8(ref_data, ref_data).astype(np.float32) / 255.0


def _plane(planes: list[np.ndarray | None], missing: str) -> np.ndarray:
    """``[X, Y, 3]`` uint8 from three planes, a missing one filled per ``missing``."""
    present = [p for p in planes if p is not None]
    if missing == "replicate":
        fill = np.rint(np.mean(present, axis=0)).astype(np.uint8)
    else:
        fill = np.zeros_like(present[0])
    return np.stack([p if p is not None else fill for p in planes], axis=-1)


def _exam_key(research: Path, stack: ExamStack, params: dict) -> dict:
    files = []
    for row in stack.channels:
        if row is not None:
            st = (research / row["nifti_path"]).stat()
            files.append([row["series_id"], row["nifti_path"], st.st_size, st.st_mtime_ns])
    return {"version": LAYOUT_VERSION, "params": params, "files": files}


def _read_manifest(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # absent or damaged: rebuild the exam
        return {}


def _png_name(k: int) -> str:
    return f"{k:04d}.png"


def _rows(exam_dir: Path, exam_id: str, entries: list[dict]) -> list[dict]:
    return [{"png_file": str(exam_dir / _png_name(e["slice_index"])), "exam_id": exam_id, **e} for e in entries]


def build_stacks(research: Path, stacks: list[ExamStack], out_dir: Path, *, size: int = 224,
                 slice_range: tuple[int, int] | None = None, min_foreground: float = 0.05,
                 min_coverage: float = 0.5, missing: str = "replicate") -> StackResult:
    """Write one RGB PNG (R = T1, G = T2, B = FLAIR) per kept axial slice of each exam.

    Slice ``k`` is the reference grid's ``k``-th axial plane (RAS third axis, inferior →
    superior; reference: :attr:`ExamStack.reference`). The other contrasts are resampled onto
    that grid by their affines (trilinear, 0 outside their field of view). Each channel is
    scaled by :func:`scale_uint8` over its own volume. Per slice:

    - kept only if ``slice_range[0] <= k < slice_range[1]`` (when given) and at least
      ``min_foreground`` of the reference plane is foreground (above 5 % of its robust range);
    - a contrast counts as present in the slice if its field of view holds at least
      ``min_coverage`` of that foreground — a series that does not reach the slice is treated
      as missing there, not shown as a black channel;
    - the slice needs two present contrasts (three with ``missing="skip"``); a missing
      channel is the rounded mean of the present ones (``"replicate"``) or zeros (``"zero"``).

    The plane goes through :func:`display_slice`. PNGs carry no metadata chunks and are
    written atomically to ``out_dir/<exam_id>/<kkkk>.png``.

    Re-runs: ``out_dir/<exam_id>/stacks.json`` (written last) records the inputs (series,
    NIfTI size and mtime) and parameters; an exam whose record matches is not read again and
    its rows come from the record. Otherwise the exam is rebuilt and PNGs of slices no longer
    kept are removed.

    Returns:
        :class:`StackResult`. ``channels`` is e.g. ``"T1,T2,FLAIR"`` or ``"T1,T2,-"`` (``-`` =
        filled in that slice); ``series_ids`` likewise. An exam that cannot be read (missing
        or corrupt NIfTI, not 3D), that lacks contrasts under the rule, or that yields no
        slice is skipped with a reason (``missing_nifti``, ``unreadable_nifti``,
        ``incomplete``, ``no_slices``) and logged; the other exams go on.

    Raises:
        ValueError: an unknown ``missing``. OSError: writing failed (disk full, permissions).
    """
    _check_missing(missing)
    research, out_dir = Path(research), Path(out_dir).resolve()
    params = {"size": size, "slice_range": list(slice_range) if slice_range else None,
              "min_foreground": min_foreground, "min_coverage": min_coverage, "missing": missing}
    result = StackResult()

    def skip(exam_id: str, reason: str) -> None:
        log.warning("brainfound stacks: exam %s skipped: %s", exam_id, reason)
        result.skipped.append({"exam_id": exam_id, "reason": reason})

    for stack in stacks:
        n = len(stack.present)
        if n < 2 or (missing == "skip" and n < 3):
            skip(stack.exam_id, f"incomplete: has {','.join(stack.present) or 'none'} (missing={missing})")
            continue
        exam_dir = out_dir / stack.exam_id
        try:
            key = _exam_key(research, stack, params)
        except OSError as e:
            skip(stack.exam_id, f"missing_nifti: {type(e).__name__}: {e}")
            continue
        manifest = exam_dir / MANIFEST
        done = _read_manifest(manifest)
        if done.get("key") == key:
            result.rows.extend(_rows(exam_dir, stack.exam_id, done["slices"]))
            continue
        try:
            channels, ref01 = _channel_volumes(research, stack)
        except Exception as e:  # noqa: BLE001 - nibabel/gzip/scipy raise many types on bad files
            skip(stack.exam_id, f"unreadable_nifti: {type(e).__name__}: {e}")
            continue
        need = 3 if missing == "skip" else 2
        lo, hi = slice_range or (0, ref01.shape[2])
        entries = []
        for k in range(max(lo, 0), min(hi, ref01.shape[2])):
            foreground = ref01[:, :, k] > FOREGROUND_LEVEL
            if float(foreground.mean()) < min_foreground:
                continue
            covered = [c is not None and c.coverage(k, foreground) >= min_coverage for c in channels]
            if sum(covered) < need:
                continue
            planes = [c.volume[:, :, k] if ok else None for c, ok in zip(channels, covered)]
            image = display_slice(_plane(planes, missing), size)
            exam_dir.mkdir(parents=True, exist_ok=True)
            # no pnginfo: Pillow writes only IHDR, IDAT and IEND (no text chunk to leak into)
            with atomic_path(exam_dir / _png_name(k)) as tmp:
                image.save(tmp, format="PNG")
            entries.append({"slice_index": k,
                            "channels": ",".join(c if ok else "-" for c, ok in zip(CONTRASTS, covered)),
                            "series_ids": ",".join(str(r["series_id"]) if ok else "-"
                                                   for r, ok in zip(stack.channels, covered))})
        wanted = {_png_name(e["slice_index"]) for e in entries}
        for old in exam_dir.glob("[0-9]*.png"):  # slices of an earlier run with other inputs
            if old.name not in wanted:
                old.unlink()
        if not entries:
            manifest.unlink(missing_ok=True)
            skip(stack.exam_id, f"no_slices: no axial slice with >= {min_foreground:.0%} foreground "
                                f"seen by >= {need} contrasts")
            continue
        write_text(manifest, json.dumps({"key": key, "slices": entries}))
        result.rows.extend(_rows(exam_dir, stack.exam_id, entries))
    return result


def brainfound_stacks(research: Path, out_dir: Path, *, sql: str = DEFAULT_QUERY, missing: str = "replicate",
                      **kwargs) -> StackResult:
    """The whole step: ``sql`` on the research catalog → :func:`choose_contrasts` →
    :func:`build_stacks` (``kwargs``: size, slice_range, min_foreground, min_coverage)."""
    _, rows = query_dicts(Path(research), sql)
    return build_stacks(research, choose_contrasts(rows, missing=missing), out_dir, missing=missing, **kwargs)


__all__ = ["CONTRASTS", "DEFAULT_QUERY", "ExamStack", "StackResult", "brainfound_stacks", "build_stacks",
           "choose_contrasts", "display_slice", "scale_uint8"]
