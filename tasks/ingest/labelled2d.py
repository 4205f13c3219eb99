"""Labelled (segmentation) datasets as 2D slices in the research catalog.

Two inputs, one output layout:

* ``ingest_nifti_pairs``: nnU-Net / Medical Segmentation Decathlon folders,
  ``imagesTr/<case>_0000.nii.gz`` (or ``<case>.nii.gz``) + ``labelsTr/<case>.nii.gz``;
* ``ingest_png_list`` (:mod:`tasks.ingest.labelled2d_png`): MRI-CORE list files, one
  ``image,mask`` (or ``image mask``) pair a line.

Output: ``research/labelled/<dataset_id>/{images,masks}/<slice_id>.png`` (image: per-slice
min-max to uint8, the curation recipe; mask: uint8 label values), one ``datasets`` row and one
``labelled_slices`` row per slice. NIfTI volumes are reoriented to RAS and slice ``k`` along
``axis`` is written as ``np.rot90(volume.take(k, axis))``: columns follow the first remaining
axis (left → right), rows the second (top = anterior for axial, superior otherwise).

``patient_id`` is the case name of the public dataset (NIfTI stem, or the png-list rule), not
a pseudonym: ingest only public or already de-identified data whose file names carry no MRN.
The train/val/test split is drawn per patient with a seed, so no patient spans two splits.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import nibabel as nib
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from mrifoundry.errors import NotFound, UsageError
from mrifoundry.catalog.schema import DATASETS, LABELLED_SLICES, RESEARCH_TABLES, to_arrow
from mrifoundry.atomic import replace_dir
from mrifoundry.catalog.store import derived_lock, table_file, upsert, write_parquet_atomic
from mrifoundry.catalog.views import build_research_db, connect
from mrifoundry import code_version
from mrifoundry.tasks.curation.convert.png import normalize_uint8
from mrifoundry.tasks.ingest.labels import CaseError
from mrifoundry.tasks.ingest.nnunet import label_names as nnunet_label_names, read_nnunet
from mrifoundry.tasks.ingest.prep import Prep, imported_splits

SPLITS = ("train", "val", "test")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_NII = (".nii.gz", ".nii")
log = logging.getLogger(__name__)


# ---------------------------------------------------------------- helpers


def labelled_dir(research: Path, dataset_id: str) -> Path:
    return Path(research) / "labelled" / dataset_id


def check_dataset_id(dataset_id: str) -> None:
    # the id becomes a folder name and an SQL literal: keep it to a safe alphabet
    if not _ID_RE.match(dataset_id or ""):
        raise UsageError(f"dataset_id {dataset_id!r}: use letters, digits, '.', '_' or '-'")


def safe_id(raw: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", raw).lstrip("._-")
    if not safe:
        raise CaseError(f"{raw!r}: no usable characters for a patient id")
    return safe


def check_split(split: Sequence[float]) -> tuple[float, float, float]:
    if len(split) != 3 or any(f < 0 for f in split) or not np.isclose(sum(split), 1.0):
        raise UsageError(f"split {tuple(split)}: three non-negative fractions (train, val, test) summing to 1")
    return tuple(float(f) for f in split)


def assign_splits(patients: Iterable[str], split: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0) -> dict[str, str]:
    """Seeded patient-level split: {patient: 'train' | 'val' | 'test'}.

    Patients are sorted then shuffled with ``seed`` (same set + seed → same split). Counts use
    largest remainders; a split with a non-zero fraction gets at least one patient when there
    are enough patients.
    """
    fr = check_split(split)
    ids = sorted(set(patients))
    n = len(ids)
    raw = np.array(fr) * n
    counts = np.floor(raw).astype(int)
    for k in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[k] += 1
    for k in range(3):  # a tiny dataset must not lose its val/test split entirely
        if fr[k] > 0 and counts[k] == 0 and counts.max() > 1:
            counts[int(np.argmax(counts))] -= 1
            counts[k] += 1
    order = np.random.default_rng(seed).permutation(n)
    names = np.repeat(np.array(SPLITS), counts)
    return {ids[i]: str(names[j]) for j, i in enumerate(order)}


def split_patients(dataset_id: str, rows: list[dict], skipped: list[dict], split, seed: int,
                   nothing: str) -> dict[str, str]:
    """The patient-level split of an ingest's rows, after logging its skipped cases.

    Raises:
        ValueError: no row to ingest (the skipped cases' reasons, or ``nothing``, included).
    """
    if not rows:
        why = "; ".join(f"{s['case']}: {s['reason']}" for s in skipped) or nothing
        raise ValueError(f"dataset {dataset_id}: nothing to ingest ({why})")
    for s in skipped:
        log.warning("%s: skipped %s", dataset_id, s["reason"])
    return assign_splits((r["patient_id"] for r in rows), split, seed)


def _label_names(values: Iterable[int], given: dict | None) -> str:
    """JSON {value: name}; values without a given name get 'background' (0) or 'label_<v>'."""
    names = {int(k): str(v) for k, v in (given or {}).items()}
    for v in values:
        names.setdefault(int(v), "background" if int(v) == 0 else f"label_{int(v)}")
    return json.dumps({str(k): names[k] for k in sorted(names)})


def as_label_u8(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.rint(arr)):
            raise CaseError(f"{what}: label values are not integers")
        arr = np.rint(arr)
    if arr.dtype.kind not in "fiub":
        raise CaseError(f"{what}: label dtype {arr.dtype} is not numeric")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise CaseError(f"{what}: label values outside 0..255 cannot be stored as uint8 PNG")
    return arr.astype(np.uint8)


def _save_png(u8: np.ndarray, path: Path) -> None:
    # 2D uint8 -> mode "L", no metadata chunks (same as the curation PNGs)
    Image.fromarray(np.ascontiguousarray(u8)).save(path, format="PNG")


def slice_row(dataset_id: str, patient: str, index: int, img: np.ndarray, mask: np.ndarray, work: Path,
              spacing: tuple[float | None, float | None, float | None]) -> dict:
    """Write one slice's image and mask PNGs into ``work``; return its ``labelled_slices`` row."""
    slice_id = f"{patient}_z{index:04d}"
    _save_png(normalize_uint8(img), work / "images" / f"{slice_id}.png")
    _save_png(mask, work / "masks" / f"{slice_id}.png")
    rel = f"labelled/{dataset_id}"
    fg = mask > 0
    return {"dataset_id": dataset_id, "slice_id": slice_id, "patient_id": patient, "split": None,
            "slice_index": int(index), "image_path": f"{rel}/images/{slice_id}.png",
            "mask_path": f"{rel}/masks/{slice_id}.png", "width": int(mask.shape[1]), "height": int(mask.shape[0]),
            "spacing_x": spacing[0], "spacing_y": spacing[1], "slice_thickness": spacing[2],
            "has_foreground": bool(fg.any()), "foreground_fraction": float(fg.mean()) if fg.size else 0.0}


def _ensure_research_tables(research: Path) -> None:
    """Empty curated tables where missing: a research root may hold only labelled data, and
    the views read every table file."""
    for table in RESEARCH_TABLES:
        path = table_file(research, table)
        if not path.exists():
            write_parquet_atomic(table.schema.empty_table(), path)


def _publish(research: Path, dataset_id: str, work: Path, rows: list[dict], ds_row: dict) -> None:
    """Swap the slice folder in, replace the dataset's catalog rows, rebuild the views."""
    final = labelled_dir(research, dataset_id)
    with derived_lock(research):
        replace_dir(work, final)
        # one atomic write drops every old row of the dataset (upsert would keep slices that a
        # re-ingest no longer produces, e.g. keep_empty=False) and adds the new ones
        path = table_file(research, LABELLED_SLICES)
        new = to_arrow(LABELLED_SLICES, rows)
        if path.exists():
            old_tbl = pq.read_table(path, schema=LABELLED_SLICES.schema)
            keep = pc.not_equal(old_tbl["dataset_id"], pa.scalar(dataset_id))
            new = pa.concat_tables([old_tbl.filter(keep), new])
        write_parquet_atomic(new, path)
        upsert(research, DATASETS, [ds_row])
        _ensure_research_tables(research)
        build_research_db(research)


def finish_dataset(research: Path, dataset_id: str, source: str, root: str, work: Path, rows: list[dict],
                   label_values: set[int], label_names: dict | None, split, seed: int, skipped: list[dict],
                   prep: Prep = Prep()) -> dict:
    """Assign the splits (drawn with ``seed``, or ``prep``'s imported ones), publish ``work`` and
    the catalog rows; return the ingest summary.

    Raises:
        ValueError: no slice to ingest (the skipped cases' reasons included).
    """
    if prep.split_of is not None:
        rows, splits = imported_splits(rows, skipped, prep, work)
    else:
        splits = split_patients(dataset_id, rows, skipped, split, seed, "no slices")
    for r in rows:
        r["split"] = splits[r["patient_id"]]
    ds_row = {"dataset_id": dataset_id, "source": source, "root": root, "n_patients": len(splits),
              "n_slices": len(rows), "task": "segmentation", "n_volumes": 0,
              "label_names": _label_names(label_values, prep.names(label_names)),
              "split_seed": None if prep.split_of is not None else int(seed),
              "split_source": prep.split_source or "seeded", "label_mapping": prep.mapping_json(),
              "created_at": dt.datetime.now(dt.timezone.utc), "code_version": code_version()}
    _publish(research, dataset_id, work, rows, ds_row)
    counts = {s: sum(1 for v in splits.values() if v == s) for s in SPLITS}
    return {"dataset_id": dataset_id, "n_patients": len(splits), "n_slices": len(rows), "patients_per_split": counts,
            "skipped": skipped, "out_dir": str(labelled_dir(research, dataset_id)),
            "label_names": json.loads(ds_row["label_names"])}


def new_workdir(research: Path, dataset_id: str) -> Path:
    """An empty ``images/`` + ``masks/`` scratch folder beside the dataset's final folder."""
    work = Path(research) / "labelled" / f".{dataset_id}.tmp{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "images").mkdir(parents=True)
    (work / "masks").mkdir()
    return work


# ---------------------------------------------------------------- NIfTI pairs


def _strip_nii(name: str) -> str | None:
    for ext in _NII:
        if name.endswith(ext):
            return name[: -len(ext)]
    return None


def find_nifti_pairs(root: Path) -> tuple[dict[str, tuple[Path, Path]], list[dict]]:
    """Pair ``imagesTr`` with ``labelsTr`` by case (:func:`~tasks.ingest.nnunet.read_nnunet`);
    returns (pairs, skipped cases with reasons).

    ``<case>_0000`` is the image of ``<case>`` (other channels are ignored: one image per
    slice); ``<case>`` without a channel suffix is accepted too (Decathlon).
    """
    found = read_nnunet(root, _strip_nii)
    pairs = {c.case: (c.channels[0], c.label) for c in found.cases if 0 in c.channels}
    skipped = found.skipped + [{"case": c.case, "reason": f"case {c.case}: no channel _0000 in imagesTr/"}
                               for c in found.cases if 0 not in c.channels]
    return pairs, skipped


def _load_pair(case: str, image_path: Path, label_path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """RAS image (float64) and labels (uint8) of one case, after shape/affine checks."""
    img = nib.as_closest_canonical(nib.load(image_path))
    lab = nib.as_closest_canonical(nib.load(label_path))
    # a trailing singleton (one-channel 4D) is still a 3D volume
    ishape = tuple(d for i, d in enumerate(img.shape) if i < 3 or d != 1)
    lshape = tuple(d for i, d in enumerate(lab.shape) if i < 3 or d != 1)
    if len(ishape) != 3 or len(lshape) != 3:
        raise CaseError(f"case {case}: expected 3D volumes, got image {img.shape} and label {lab.shape}")
    if ishape != lshape:
        raise CaseError(f"case {case}: image shape {ishape} != label shape {lshape}")
    if not np.allclose(img.affine, lab.affine, atol=1e-3):
        raise CaseError(f"case {case}: image and label affines differ (not on the same voxel grid)")
    data = np.asarray(img.dataobj, dtype=np.float64).reshape(ishape)
    if not np.all(np.isfinite(data)):
        raise CaseError(f"case {case}: image has NaN or infinite values")
    labels = as_label_u8(np.asanyarray(lab.dataobj).reshape(lshape), f"case {case}")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return data, labels, zooms


def ingest_nifti_pairs(research: Path, root: Path, dataset_id: str, *, axis: int = 2,
                       split: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0, keep_empty: bool = True,
                       label_names: dict | None = None, source: str = "nifti-pairs", prep: Prep = Prep()) -> dict:
    """Ingest an nnU-Net/Decathlon folder as 2D slices along ``axis`` (0, 1 or 2 of RAS).

    Args:
        research: the research root (``OUT/research``).
        root: folder with ``imagesTr/`` and ``labelsTr/``.
        dataset_id: catalog name; re-ingesting replaces the dataset's files and rows.
        split: train/val/test fractions of patients (cases).
        keep_empty: keep slices whose mask is all background.
        label_names: {value: name}; default from ``root/dataset.json``, else 'label_<v>'.
        source: ``datasets.source`` value (e.g. ``mni152-wm`` for the sample task).
        prep: label mapping and imported split (:class:`Prep`).

    Returns:
        Summary: n_patients, n_slices, patients_per_split, skipped ([{case, reason}]), out_dir.

    Raises:
        FileNotFoundError: no ``imagesTr``/``labelsTr``.
        ValueError: bad arguments, or no case could be ingested (reasons included).
    """
    check_dataset_id(dataset_id)
    check_split(split)
    if axis not in (0, 1, 2):
        raise ValueError(f"axis {axis}: 0, 1 or 2")
    research, root = Path(research), Path(root)
    pairs, skipped = find_nifti_pairs(root)
    names = label_names if label_names is not None else nnunet_label_names(root)
    plane = [a for a in range(3) if a != axis]
    work = new_workdir(research, dataset_id)
    try:
        rows: list[dict] = []
        values: set[int] = set()
        seen: dict[str, str] = {}
        for case, (ip, lp) in pairs.items():
            try:
                patient = safe_id(case)
                if seen.setdefault(patient, case) != case:
                    raise CaseError(f"case {case}: id {patient!r} already used by case {seen[patient]}")
                data, labels, zooms = _load_pair(case, ip, lp)
                labels = prep.mask(labels, f"case {case}")
            except CaseError as e:
                skipped.append({"case": case, "reason": str(e)})
                continue
            except Exception as e:  # noqa: BLE001 - unreadable/corrupt files: skip the case, go on
                skipped.append({"case": case, "reason": f"case {case}: cannot read ({type(e).__name__}: {e})"})
                continue
            values.update(int(v) for v in np.unique(labels))
            spacing = (zooms[plane[0]], zooms[plane[1]], zooms[axis])
            for k in range(data.shape[axis]):
                mask = np.rot90(np.take(labels, k, axis=axis))
                if not keep_empty and not mask.any():
                    continue
                rows.append(slice_row(dataset_id, patient, k, np.rot90(np.take(data, k, axis=axis)), mask, work,
                                      spacing))
        return finish_dataset(research, dataset_id, source, str(root.resolve()), work, rows, values, names, split,
                              seed, skipped, prep)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- reading


def load_labelled(research: Path, dataset_id: str, split: str | None = None) -> list[dict]:
    """Rows of ``labelled_slices`` for a dataset (optionally one split), ordered by slice_id,
    with absolute ``image_file``/``mask_file``.

    Raises:
        KeyError: the dataset is not in the catalog.
        ValueError: unknown split.
    """
    return dataset_rows(research, "labelled_slices", "slice_id", dataset_id, split)


def dataset_rows(research: Path, view: str, key: str, dataset_id: str, split: str | None,
                 hint: str = "ingest it first") -> list[dict]:
    """Rows of a labelled-data ``view`` (labelled_slices, labelled_volumes) for one dataset and
    optionally one split, ordered by ``key``.

    Raises:
        KeyError: the dataset is not in the catalog.
        ValueError: unknown split.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split {split!r}: one of {SPLITS}")
    con = connect(Path(research))
    try:
        if not con.execute("SELECT 1 FROM datasets WHERE dataset_id = ?", [dataset_id]).fetchone():
            raise NotFound(f"dataset {dataset_id!r} not in the catalog: {hint}")
        sql, params = f"SELECT * FROM {view} WHERE dataset_id = ?", [dataset_id]
        if split is not None:
            sql += " AND split = ?"
            params.append(split)
        cur = con.execute(sql + f" ORDER BY {key}", params)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]
    finally:
        con.close()


__all__ = ["SPLITS", "CaseError", "as_label_u8", "assign_splits", "check_dataset_id", "check_split", "dataset_rows",
           "find_nifti_pairs", "finish_dataset", "ingest_nifti_pairs", "labelled_dir", "load_labelled",
           "new_workdir", "safe_id", "slice_row", "split_patients"]
