"""A published train/val/test split, imported instead of drawing one.

Two forms: a CSV with a patient (or case) column and a ``split`` column, or a JSON object
``{"train": [...], "val": [...], "test": [...]}``. nnU-Net's ``splits_final.json`` (a list of
folds, each ``{"train": [...], "val": [...]}``) is read as its fold ``fold``: those two lists,
and no test patients. Names go through the ingest's patient-id rule, so a file written with
the dataset's case names matches the catalog's ``patient_id``.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable

from mrifoundry.digest import file_sha256
from mrifoundry.errors import UsageError

SPLITS = ("train", "val", "test")
_ALIASES = {"training": "train", "tr": "train", "validation": "val", "valid": "val", "ts": "test", "testing": "test"}


def read_split_file(path: Path, to_id: Callable[[str], str] = str, fold: int = 0) -> tuple[dict[str, str], str]:
    """({patient_id: split}, provenance text '<file name> sha256:<prefix>').

    Raises:
        UsageError: unknown split names, a patient in two splits, an unreadable layout.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, list):   # nnU-Net splits_final.json
            if not 0 <= fold < len(data):
                raise UsageError(f"{path.name}: fold {fold} not in its {len(data)} folds")
            data = data[fold]
        if not isinstance(data, dict):
            raise UsageError(f"{path.name}: expected {{'train': [...], 'val': [...], 'test': [...]}}")
        pairs = [(name, split) for split, names in data.items() for name in names]
    else:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        cols = {c.lower().strip(): c for c in (rows[0].keys() if rows else [])}
        who = next((cols[c] for c in ("patient_id", "patient", "case", "case_id", "subject") if c in cols), None)
        if who is None or "split" not in cols:
            raise UsageError(f"{path.name}: a CSV needs a patient (or case) column and a split column")
        pairs = [(r[who], r[cols["split"]]) for r in rows]
    out: dict[str, str] = {}
    for name, split in pairs:
        s = _ALIASES.get(str(split).strip().lower(), str(split).strip().lower())
        if s not in SPLITS:
            raise UsageError(f"{path.name}: split {split!r} of {name!r} is not one of train, val, test")
        pid = to_id(str(name).strip())
        if out.setdefault(pid, s) != s:
            raise UsageError(f"{path.name}: {name!r} is in both {out[pid]} and {s}")
    if not out:
        raise UsageError(f"{path.name}: no patients listed")
    return out, f"{path.name} sha256:{file_sha256(path)[:16]}"
