"""``ingest_downstream``: a 3D segmentation or classification dataset into the catalog.

Per case: read every channel (:mod:`.readers`; RAS), digest each source channel before any
resampling (``mrifoundry.digest.voxel_sha256``, as ``series.content_sha256``), check that the
channels and the label share one grid, read the label (image or DICOM-SEG on the image's
grid), map it (:mod:`.labels`), conform (isotropic ``voxel_size_mm``, or native) and write
(:mod:`.publish`). A case that fails any check is skipped with its reason; the rest go on.
Splits and folds are drawn per patient; the dataset is published in one swap.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import nibabel as nib
import numpy as np

from mrifoundry.errors import UsageError
from mrifoundry import code_version
from mrifoundry.digest import voxel_sha256
from mrifoundry.ids import subject_key
from mrifoundry.tasks.ingest.labelled3d.dicom_seg import is_dicom_seg, read_dicom_seg
from mrifoundry.tasks.ingest.labels import LabelMapping, parse_labels
from mrifoundry.tasks.ingest.labelled3d.layouts import SOURCES, Case, find_cases
from mrifoundry.tasks.ingest.labelled3d.publish import assign_folds, new_volume_workdir, publish_volumes, write_case
from mrifoundry.tasks.ingest.labelled3d.readers import read_image
from mrifoundry.tasks.ingest.labelled2d import (SPLITS, CaseError, _label_names, as_label_u8, check_dataset_id,
                                                check_split, labelled_dir, safe_id, split_patients)

log = logging.getLogger(__name__)
_ATOL = 1e-3  # affine tolerance (mm) for "the same grid"


@dataclass
class Loaded:
    channels: list[np.ndarray]        # float32 [X, Y, Z] each, RAS
    affine: np.ndarray
    digests: list[str]
    source_integer: bool
    source_format: str
    label: np.ndarray | None = None   # uint8, after mapping
    label_names: dict[int, str] | None = None  # from a DICOM-SEG


def _split_channels(img: nib.spatialimages.SpatialImage, what: str) -> list[nib.spatialimages.SpatialImage]:
    shape = img.shape
    if len(shape) == 3:
        return [img]
    if len(shape) == 4:
        return [img.slicer[..., c] for c in range(shape[3])]
    raise CaseError(f"{what}: expected a 3D image (or 4D with channels on axis 4), got shape {shape}")


def _grid_mismatch(a_shape, a_affine, b_shape, b_affine) -> str | None:
    """Why grid b is not grid a (shape, else affine), or None when they are the same grid."""
    if tuple(a_shape[:3]) != tuple(b_shape[:3]):
        return f"shape {tuple(b_shape[:3])} != {tuple(a_shape[:3])}"
    if not np.allclose(a_affine, b_affine, atol=_ATOL):
        worst = float(np.abs(np.asarray(a_affine) - np.asarray(b_affine)).max())
        return f"affines differ by up to {worst:.3g} (mm or direction)"
    return None


def load_case(case: Case, mapping: LabelMapping | None) -> Loaded:
    """Read, check and map one case (no resampling).

    Raises:
        CaseError: non-3D, NaN/inf, channels or label on another grid, non-integer labels,
            unmapped values under ``strict``; readers' own errors propagate unchanged.
    """
    name = f"case {case.case}"
    parts, formats = [], []
    for path in case.images:
        img, fmt = read_image(path)
        formats.append(fmt)
        parts += _split_channels(img, f"{name} ({Path(path).name})")
    ref = parts[0]
    for i, p in enumerate(parts[1:], start=1):
        if why := _grid_mismatch(ref.shape, ref.affine, p.shape, p.affine):
            raise CaseError(f"{name}: channel {i} is not on channel 0's grid ({why})")
    channels, digests, integer = [], [], True
    for i, p in enumerate(parts):
        data = np.asarray(p.dataobj, dtype=np.float32)
        if not np.all(np.isfinite(data)):
            raise CaseError(f"{name}: channel {i} has NaN or infinite values")
        channels.append(data)
        digests.append(voxel_sha256(p))
        integer &= bool(np.issubdtype(p.get_data_dtype(), np.integer))
    fmt = "+".join(dict.fromkeys(formats))
    out = Loaded(channels, ref.affine, digests, integer, fmt)
    if case.label is None:
        return out
    if is_dicom_seg(case.label):
        seg = read_dicom_seg(case.label, reference=ref)
        labels, out.label_names, out.source_format = np.asarray(seg.image.dataobj), seg.names, "dicom-seg"
    else:
        lab, _ = read_image(case.label)
        shape = tuple(d for i, d in enumerate(lab.shape) if i < 3 or d != 1)
        if len(shape) != 3:
            raise CaseError(f"{name}: label is not 3D (shape {lab.shape})")
        if why := _grid_mismatch(ref.shape, ref.affine, shape, lab.affine):
            raise CaseError(f"{name}: label is not on the image's grid ({why})")
        labels = as_label_u8(np.asanyarray(lab.dataobj).reshape(shape), f"{name} label")
    out.label = mapping.apply(labels, name) if mapping else labels
    return out


def _summary_skip(skipped: list[dict], case: str, e: Exception) -> None:
    reason = str(e) if isinstance(e, CaseError) else f"case {case}: cannot read ({type(e).__name__}: {e})"
    skipped.append({"case": case, "reason": reason})


def ingest_downstream(research: Path, root: Path, dataset_id: str, *, layout: str = "auto",
                      labels: dict | None = None, strict_labels: bool = False,
                      voxel_size_mm: float | None = 1.0, split: Sequence[float] = (0.6, 0.2, 0.2),
                      folds: int | None = 5, seed: int = 0, salt: str | None = None,
                      progress: Callable[[str], None] | None = None) -> dict:
    """Ingest a 3D downstream dataset into ``labelled_volumes`` (+ one ``datasets`` row).

    Args:
        research: the research root (``OUT/research``).
        root: the dataset folder (or CSV file for ``layout='csv'``).
        dataset_id: catalog name; re-ingesting replaces its files and rows.
        layout: auto, msd, brats, folder, dicom-seg or csv (docs/downstream.md).
        labels: label mapping, ``{src: dst}`` or ``{name: [values]}`` (:mod:`.labels`); None keeps
            the values.
        strict_labels: a case with values the mapping leaves out is skipped instead of those
            values becoming background.
        voxel_size_mm: isotropic resampling (image linear, labels nearest); None = native grid.
        split: train/val/test fractions of patients; folds: k of the per-patient k-fold (None: no folds).
        seed: seed of the split and folds.
        salt: the project salt for ``subject_key``; default ``load_salt(research.parent)``.
        progress: called with a line such as ``"12/40 cases (3.10/s)"`` now and then.

    Returns:
        Summary: dataset_id, task, layout, n_patients, n_volumes, n_channels, channels,
        patients_per_split, patients_per_fold, label_names, skipped [{case, reason}], out_dir.

    Raises:
        FileNotFoundError: ``root`` or the layout's folders are missing.
        ValueError: bad arguments, unknown layout, or no case could be ingested (reasons included).
    """
    check_dataset_id(dataset_id)
    check_split(split)
    if voxel_size_mm is not None and not float(voxel_size_mm) > 0:
        raise UsageError(f"voxel_size_mm {voxel_size_mm}: positive, or None for the native grid")
    assign_folds([], folds)  # validates folds
    research, root = Path(research), Path(root)
    if salt is None:
        from mrifoundry.settings import load_salt
        salt = load_salt(research.parent)
    found = find_cases(root, layout)
    classification = found.task == "classification"
    if classification and labels:
        raise UsageError("labels (a label mapping) apply to segmentation datasets, not classification")
    mapping = parse_labels(labels, found.label_names, strict_labels)
    skipped = list(found.skipped)
    rows: list[dict] = []
    names: dict[int, str] = dict(found.label_names or {})
    values: set[int] = set()
    n_channels: int | None = None
    seen: dict[str, str] = {}
    work = new_volume_workdir(research, dataset_id)
    try:
        t0, n = time.time(), len(found.cases)

        def say(done: int) -> None:
            if progress:
                progress(f"{done}/{n} cases ({done / max(time.time() - t0, 1e-6):.2f}/s)")

        for i, case in enumerate(found.cases):
            if i and i % 10 == 0:
                say(i)
            try:
                case_id = safe_id(case.case)
                if case_id in seen:
                    raise CaseError(f"case {case.case}: id {case_id!r} already used by case {seen[case_id]}")
                loaded = load_case(case, mapping)
                if n_channels is not None and len(loaded.channels) != n_channels:
                    raise CaseError(f"case {case.case}: {len(loaded.channels)} channels, the dataset has {n_channels}")
                patient = case.patient or case.case
                files = write_case(work, dataset_id, case_id, loaded.channels, loaded.affine, loaded.label,
                                   voxel_size_mm, loaded.source_integer)
            except Exception as e:  # noqa: BLE001 - a bad or unreadable case is skipped, the rest go on
                _summary_skip(skipped, case.case, e)
                continue
            n_channels, seen[case_id] = len(loaded.channels), case.case
            if loaded.label is not None:
                values.update(json.loads(files["label_values"]))
            for k, v in (loaded.label_names or {}).items():
                names.setdefault(int(k), v)
            rows.append({"dataset_id": dataset_id, "case_id": case_id, "patient_id": safe_id(patient),
                         "subject_key": subject_key(patient, salt), "split": None, "fold": None,
                         "class_label": case.class_label, "n_channels": n_channels,
                         "content_sha256": loaded.digests, "source_format": loaded.source_format, **files})
        say(n)
        splits = split_patients(dataset_id, rows, skipped, split, seed, "no cases found")
        fold_of = assign_folds(splits, folds, seed)
        for r in rows:
            r["split"], r["fold"] = splits[r["patient_id"]], fold_of[r["patient_id"]]
        channels = _channel_names(found.channels, n_channels, dataset_id)
        if classification:
            label_json = json.dumps({str(i): c for i, c in enumerate(sorted({r["class_label"] for r in rows}))})
        else:
            label_json = _label_names(values, mapping.names if mapping else names)
        ds_row = {"dataset_id": dataset_id, "source": SOURCES[found.layout], "task": found.task,
                  "root": str(root.resolve()), "n_patients": len(splits), "n_slices": 0, "n_volumes": len(rows),
                  "channels": json.dumps(channels), "label_names": label_json,
                  "nested_regions": bool(mapping and mapping.nested), "split_seed": int(seed),
                  "split_source": "seeded", "label_mapping": mapping.to_json() if mapping else None,
                  "created_at": dt.datetime.now(dt.timezone.utc), "code_version": code_version()}
        publish_volumes(research, dataset_id, work, rows, ds_row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"dataset_id": dataset_id, "task": found.task, "layout": found.layout, "n_patients": len(splits),
            "n_volumes": len(rows), "n_channels": n_channels, "channels": channels,
            "patients_per_split": {s: sum(v == s for v in splits.values()) for s in SPLITS},
            "patients_per_fold": None if folds is None else
            {str(k): sum(v == k for v in fold_of.values()) for k in range(int(folds))},
            "label_names": json.loads(label_json), "skipped": skipped,
            "out_dir": str(labelled_dir(research, dataset_id))}


def _channel_names(given: list[str] | None, n: int, dataset_id: str) -> list[str]:
    if given and len(given) == n:
        return list(given)
    if given:
        log.warning("%s: %d channel names for %d channels; using channel_<i>", dataset_id, len(given), n)
    return [f"channel_{i}" for i in range(n)]


__all__ = ["Loaded", "ingest_downstream", "load_case"]
