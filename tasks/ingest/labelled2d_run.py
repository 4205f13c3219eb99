"""``run_ingest_labelled``: a labelled 2D dataset from the command, a flow or a deployment.

Layouts: nnU-Net / MSD raw folders and other NIfTI pairs (``imagesTr``/``labelsTr``), MRI-CORE's
PNG list files, and mask folders (``images/`` + ``masks/``). A label mapping selects, merges and
renames label values (AMOS liver / pancreas / spleen out of 15 organs: ``{"liver": [6],
"pancreas": [10], "spleen": [1]}``); a published split file replaces the drawn split. The
``datasets`` row records the source, the mapping and where the split came from.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from mrifoundry.errors import UsageError
from mrifoundry.params import Labelled2dParams
from mrifoundry.settings import expand_home, research_dir
from mrifoundry.tasks.ingest.labelled2d import ingest_nifti_pairs, safe_id
from mrifoundry.tasks.ingest.labelled2d_png import ingest_mask_folder, ingest_png_list
from mrifoundry.tasks.ingest.labels import parse_labels
from mrifoundry.tasks.ingest.nnunet import label_names as nnunet_label_names
from mrifoundry.tasks.ingest.prep import Prep
from mrifoundry.tasks.ingest.split_file import read_split_file

__all__ = ["layout_of", "run_ingest_labelled"]


def layout_of(root: Path) -> str:
    """nifti-pairs (imagesTr/), mask-folder (images/ + masks/) or png-list (a file)."""
    if root.is_file():
        return "png-list"
    if (root / "imagesTr").is_dir():
        return "nifti-pairs"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "mask-folder"
    raise UsageError(f"{root}: not a labelled 2D dataset (imagesTr/ + labelsTr/, images/ + masks/, or a PNG list "
                     "file); give --layout")


def run_ingest_labelled(params: Labelled2dParams, *, progress: Callable[[str], None] | None = None) -> dict:
    """Ingest ``params.root`` as 2D slices of ``params.dataset_id`` (OUT/research/labelled/…).

    Returns:
        The ingest summary (n_patients, n_slices, patients_per_split, skipped, label_names, out_dir).
    Raises:
        UsageError: unknown layout, bad mapping or split file; FileNotFoundError: missing folders.
    """
    research, root = research_dir(params.out), Path(expand_home(params.root))
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such dataset folder or list file")
    layout = layout_of(root) if params.layout == "auto" else params.layout
    source_names = nnunet_label_names(root) if layout == "nifti-pairs" else None
    prep = Prep(mapping=parse_labels(params.labels, source_names, params.strict_labels))
    if params.split_file:
        split_of, where = read_split_file(Path(expand_home(params.split_file)), safe_id, params.split_fold)
        prep = Prep(prep.mapping, split_of, where)
    common = dict(split=tuple(params.split), seed=params.seed, keep_empty=params.keep_empty, prep=prep)
    if layout == "nifti-pairs":
        res = ingest_nifti_pairs(research, root, params.dataset_id, axis=params.axis, **common)
    elif layout == "png-list":
        res = ingest_png_list(research, root, params.dataset_id, patient_regex=params.patient_regex, **common)
    else:
        res = ingest_mask_folder(research, root, params.dataset_id, patient_regex=params.patient_regex, **common)
    if progress:
        progress(f"ingest-labelled {params.dataset_id} ({layout}): {res['n_slices']} slices of "
                 f"{res['n_patients']} patients, {len(res['skipped'])} skipped")
    return {**res, "layout": layout, "split_source": prep.split_source or "seeded"}
