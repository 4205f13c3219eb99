"""Where each zone and each stage artifact lives under the output root.

Stage artifacts (JSON, documented in docs/contracts.md) let every stage check that the
previous one ran and name it when it did not. Research-zone artifacts hold opaque ids
and relative paths only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from mrifoundry.atomic import write_text
from mrifoundry.catalog.ledger import Ledger
from mrifoundry.errors import StageInputMissing
from mrifoundry.settings import load_salt


@dataclass(frozen=True)
class Workspace:
    out: Path
    run_id: str = "cli"

    @property
    def restricted(self) -> Path:
        return self.out / "restricted"

    @property
    def research(self) -> Path:
        return self.out / "research"

    @property
    def state(self) -> Path:
        return self.out / "state"

    def staging(self, exam_id: str) -> Path:
        return self.restricted / "staging" / exam_id

    def work(self, exam_id: str) -> Path:
        return self.research / "work" / exam_id

    def dicom_dir(self, exam_id: str) -> Path:
        return self.research / "dicom" / exam_id

    def png_dir(self, exam_id: str, series_id: str) -> Path:
        return self.research / "png" / exam_id / series_id

    def thumb_path(self, series_id: str) -> Path:
        """Three-plane thumbnail of a converted series, inside the review page's folder."""
        return self.research / "qc" / "thumbs" / f"{series_id}.png"

    def nifti_path(self, exam_id: str, series_id: str) -> Path:
        return self.research / "nifti" / exam_id / f"{series_id}.nii.gz"

    @property
    def selection_path(self) -> Path:
        return self.restricted / "selection.parquet"

    @cached_property
    def salt(self) -> str:
        return load_salt(self.out)

    @cached_property
    def ledger(self) -> Ledger:
        return Ledger(self.state / "ledger.sqlite", run_id=self.run_id)

    def rel(self, path: Path) -> str:
        """A research-zone path relative to the research root (what the catalog stores)."""
        return str(Path(path).resolve().relative_to(self.research.resolve()))

    # -- stage artifacts ---------------------------------------------------------------
    def artifact(self, exam_id: str, stage: str, zone: str = "research") -> Path:
        base = self.staging(exam_id) if zone == "restricted" else self.work(exam_id)
        return base / f"{stage}.json"

    def write_artifact(self, exam_id: str, stage: str, data: dict, zone: str = "research") -> Path:
        return write_text(self.artifact(exam_id, stage, zone), json.dumps(data, indent=1, default=str))

    def read_artifact(self, exam_id: str, stage: str, zone: str = "research", made_by: str | None = None) -> dict:
        """Raises StageInputMissing naming the stage that makes the artifact."""
        path = self.artifact(exam_id, stage, zone)
        if not path.exists():
            raise StageInputMissing(exam_id, "stage_input_missing",
                                    f"{path.name} not found: run stage '{made_by or stage}' first")
        return json.loads(path.read_text())
