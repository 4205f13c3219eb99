"""What a labelled 2D ingest does beyond reading: a label mapping (select, merge, rename;
:mod:`tasks.ingest.labels`) and an imported split (:mod:`tasks.ingest.split_file`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrifoundry.errors import UsageError
from mrifoundry.tasks.ingest.labels import LabelMapping

__all__ = ["Prep", "imported_splits"]


@dataclass(frozen=True)
class Prep:
    """The label mapping applied to every mask, and the published split that replaces the drawn one."""

    mapping: LabelMapping | None = None
    split_of: dict[str, str] | None = None      # patient_id → split, from a published split file
    split_source: str | None = None             # '<file> sha256:<prefix>'

    def mask(self, labels: np.ndarray, what: str) -> np.ndarray:
        return self.mapping.apply(labels, what) if self.mapping else labels

    def names(self, given: dict | None) -> dict | None:
        return self.mapping.names if self.mapping else given

    def mapping_json(self) -> str | None:
        return self.mapping.to_json() if self.mapping else None


def imported_splits(rows: list[dict], skipped: list[dict], prep: Prep, work: Path) -> tuple[list[dict], dict]:
    """Keep the rows of patients the split file names (the others are skipped, their PNGs removed)."""
    out = []
    for r in rows:
        if r["patient_id"] in prep.split_of:
            out.append(r)
            continue
        (work / "images" / f"{r['slice_id']}.png").unlink(missing_ok=True)
        (work / "masks" / f"{r['slice_id']}.png").unlink(missing_ok=True)
    for p in sorted({r["patient_id"] for r in rows} - set(prep.split_of)):
        skipped.append({"case": p, "reason": f"patient {p} is not in the split file"})
    if not out:
        raise UsageError(f"no patient of the dataset is in the split file {prep.split_source}")
    return out, {r["patient_id"]: prep.split_of[r["patient_id"]] for r in out}
