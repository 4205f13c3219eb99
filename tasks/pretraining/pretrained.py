"""A ``pretrain`` run of the catalog (table ``models``) as a zoo model to load.

Slice runs (DINOv2, MAE, BrainFound) load through the ``mri-core`` entry (their teacher is
written in MRI-CORE's layout); volume runs through the zoo entry of their method, from the
encoder checkpoint in the method's published layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mrifoundry.errors import NotFound
from mrifoundry.catalog.views import connect

__all__ = ["PretrainedRun", "pretrained_run", "zoo_entry_for"]


@dataclass(frozen=True)
class PretrainedRun:
    model_id: str
    entry: str        # zoo entry name (models/zoo.py)
    checkpoint: str   # absolute checkpoint file
    arch: str         # backbone configuration of the run
    objective: str


def zoo_entry_for(objective: str, arch: str) -> str:
    """The zoo entry that loads a run's checkpoint: ``triad`` splits by encoder kind."""
    if objective == "triad":
        from mrifoundry.models.encoders3d import PLAINCONV_CONFIGS
        return "triad-unet" if arch in PLAINCONV_CONFIGS else "triad-swin"
    if objective in ("brainsegfounder", "prism"):
        return objective
    return "mri-core"


def pretrained_run(research: Path, model_id: str) -> PretrainedRun:
    """The ``models`` row ``model_id`` as a loadable zoo model.

    Raises:
        LookupError: no such run in the catalog, or it has no checkpoint yet.
    """
    con = connect(research)
    try:
        row = con.execute("SELECT checkpoint_file, arch, objective FROM models WHERE model_id = ?",
                          [model_id]).fetchone()
    finally:
        con.close()
    if row is None or row[0] is None:
        raise NotFound(f"no pretrained model {model_id!r} with a checkpoint in the catalog's models table")
    checkpoint, arch, objective = row
    return PretrainedRun(model_id, zoo_entry_for(objective, arch), checkpoint, arch, objective)

