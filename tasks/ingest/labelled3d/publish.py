"""Write conformed 3D cases and publish a dataset's ``labelled_volumes`` rows atomically.

Layout: ``research/labelled/<dataset_id>/volumes/images/<case_id>.nii.gz`` (RAS, float32 or
int16, ``[X, Y, Z]`` or ``[X, Y, Z, C]``) and ``.../volumes/labels/<case_id>.nii.gz`` (uint8,
the image's grid). Files are written into a scratch folder that replaces the dataset's folder
in one swap; the dataset's rows (labelled_volumes, and labelled_slices of an earlier 2D ingest
under the same id, whose files the swap removed) are replaced in one write each.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable

import nibabel as nib
import nibabel.processing
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mrifoundry.catalog.schema import DATASETS, LABELLED_SLICES, LABELLED_VOLUMES, RESEARCH_TABLES, Table, to_arrow
from mrifoundry.atomic import replace_dir
from mrifoundry.catalog.store import derived_lock, table_file, upsert, write_parquet_atomic
from mrifoundry.catalog.views import build_research_db
from mrifoundry.tasks.ingest.labelled2d import dataset_rows, labelled_dir

VOLUMES = "volumes"
DESCRIP = b"mrifoundry downstream"


def new_volume_workdir(research: Path, dataset_id: str) -> Path:
    """Empty scratch ``<work>/volumes/{images,labels}`` beside the dataset's final folder."""
    work = Path(research) / "labelled" / f".{dataset_id}.tmp{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    (work / VOLUMES / "images").mkdir(parents=True)
    (work / VOLUMES / "labels").mkdir()
    return work


def _clean(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """A fresh header: geometry, mm units, our description; nothing from the source file."""
    img = nib.Nifti1Image(data, affine)
    hdr = img.header
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr.set_xyzt_units("mm")
    hdr["descrip"] = DESCRIP
    hdr["db_name"] = b""
    hdr["aux_file"] = b""
    hdr["intent_name"] = b""
    hdr.extensions.clear()
    return img


def _output_dtype(data: np.ndarray, source_integer: bool) -> np.ndarray:
    """int16 when every source channel was integer and the rounded values fit, else float32."""
    if source_integer:
        rounded = np.rint(data)
        info = np.iinfo(np.int16)
        if rounded.size == 0 or (rounded.min() >= info.min and rounded.max() <= info.max):
            return rounded.astype(np.int16)
    return data.astype(np.float32, copy=False)


def conform(channels: list[np.ndarray], affine: np.ndarray, label: np.ndarray | None,
            voxel_size_mm: float | None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Resample the channels (linear) and the label (nearest) onto one isotropic RAS grid.

    ``voxel_size_mm=None`` keeps the native grid. Returns (channels ``[X, Y, Z, C]`` float32,
    label uint8 or None, affine).
    """
    if voxel_size_mm is None:
        return np.stack(channels, axis=-1), label, affine
    v = float(voxel_size_mm)
    grid = nibabel.processing.vox2out_vox((channels[0].shape, affine), (v, v, v))
    # mode="nearest": the output box is whole voxels and may end up to a voxel past the last
    # source centre; that plane takes the edge value instead of fading to 0
    out = [np.asarray(nibabel.processing.resample_from_to(nib.Nifti1Image(c, affine), grid, order=1,
                                                          mode="nearest").dataobj, dtype=np.float32)
           for c in channels]
    lab = None
    if label is not None:
        res = nibabel.processing.resample_from_to(nib.Nifti1Image(label.astype(np.float32), affine), grid, order=0,
                                                  mode="nearest")
        lab = np.rint(np.asarray(res.dataobj)).astype(np.uint8)
    return np.stack(out, axis=-1), lab, grid[1]


def write_case(work: Path, dataset_id: str, case_id: str, channels: list[np.ndarray], affine: np.ndarray,
               label: np.ndarray | None, voxel_size_mm: float | None, source_integer: bool) -> dict:
    """Conform and write one case into ``work``; return the file/geometry part of its row."""
    data, lab, out_affine = conform(channels, affine, label, voxel_size_mm)
    data = _output_dtype(data, source_integer)
    if data.shape[-1] == 1:
        data = data[..., 0]
    rel = f"labelled/{dataset_id}/{VOLUMES}"
    nib.save(_clean(data, out_affine), work / VOLUMES / "images" / f"{case_id}.nii.gz")
    row = {"image_path": f"{rel}/images/{case_id}.nii.gz", "label_path": None, "label_values": None,
           "shape": "x".join(str(int(d)) for d in data.shape[:3]),
           "zooms": "x".join(f"{z:g}" for z in np.sqrt((out_affine[:3, :3] ** 2).sum(axis=0)))}
    if lab is not None:
        nib.save(_clean(lab, out_affine), work / VOLUMES / "labels" / f"{case_id}.nii.gz")
        row["label_path"] = f"{rel}/labels/{case_id}.nii.gz"
        row["label_values"] = "[" + ", ".join(str(int(v)) for v in np.unique(lab)) + "]"
    return row


def assign_folds(patients: Iterable[str], folds: int | None, seed: int = 0) -> dict[str, int | None]:
    """Seeded k-fold assignment per patient: sorted, shuffled, dealt round-robin (sizes differ by ≤ 1).

    Independent of the train/val/test split (a generator seeded with ``[seed, 1]``, the split
    uses ``seed``). ``folds=None`` gives every patient ``None``.

    Raises:
        ValueError: ``folds`` below 2.
    """
    ids = sorted(set(patients))
    if folds is None:
        return {p: None for p in ids}
    if int(folds) < 2:
        raise ValueError(f"folds {folds}: at least 2 (or None for no folds)")
    order = np.random.default_rng([int(seed), 1]).permutation(len(ids))
    return {ids[i]: int(j % int(folds)) for j, i in enumerate(order)}


def _replace_rows(research: Path, table: Table, dataset_id: str, rows: list[dict]) -> None:
    path = table_file(research, table)
    new = to_arrow(table, rows)
    if path.exists():
        old = pq.read_table(path, schema=table.schema)
        new = pa.concat_tables([old.filter(pc.not_equal(old["dataset_id"], pa.scalar(dataset_id))), new])
    write_parquet_atomic(new, path)


def publish_volumes(research: Path, dataset_id: str, work: Path, rows: list[dict], ds_row: dict) -> None:
    """Swap ``work`` in as the dataset's folder, replace its catalog rows, rebuild the views."""
    research = Path(research)
    with derived_lock(research):
        replace_dir(work, labelled_dir(research, dataset_id))
        _replace_rows(research, LABELLED_VOLUMES, dataset_id, rows)
        _replace_rows(research, LABELLED_SLICES, dataset_id, [])
        upsert(research, DATASETS, [ds_row])
        for table in RESEARCH_TABLES:  # a root holding only downstream data: the views read every table
            if not table_file(research, table).exists():
                write_parquet_atomic(table.schema.empty_table(), table_file(research, table))
        build_research_db(research)


def load_labelled_volumes(research: Path, dataset_id: str, split: str | None = None) -> list[dict]:
    """Rows of the ``labelled_volumes`` view for a dataset (optionally one split), by case_id,
    with absolute ``image_file`` / ``label_file``.

    Raises:
        FileNotFoundError: no catalog at ``research``.
        KeyError: the dataset is not in the catalog.
        ValueError: unknown split.
    """
    return dataset_rows(research, "labelled_volumes", "case_id", dataset_id, split, "run ingest-downstream first")


__all__ = ["VOLUMES", "assign_folds", "conform", "load_labelled_volumes", "new_volume_workdir", "publish_volumes",
           "write_case"]
