"""Parameters of every pipeline: one pydantic model each, the single source of their defaults.

The plain runner in ``tasks/`` takes the model; the Prefect flow of the same name takes its
fields as keyword parameters (its signature is made from the model, ``flows/wrap.py``); the
``mrifoundry`` command makes one verb per model (``flows/cli.py``): ``Field`` descriptions are
the help, defaults are shown. Paths, numbers and switches only — never PHI — because Prefect
stores flow parameters in its database. ``{home}`` in a path expands to MRIFOUNDRY_HOME.
"""
from mrifoundry.params.base import OUT, RERUN, RERUN_HELP, Params, is_sequence
from mrifoundry.params.data import (
    CurateParams, IngestParams, DownstreamParams, Labelled2dParams,
)
from mrifoundry.params.models import (
    ModelChoice, PretrainParams, FeaturesParams, ProbeParams, ZeroShotParams, FewShotParams, NnunetParams,
    FrdParams, CompareParams, TransferParams, EpochSweepParams, Volume3dParams, Finetune3dParams,
    Classify3dParams, DemoEvalParams,
)
from mrifoundry.params.tools import (
    SqlParams, OverlapParams, ExportBidsParams, SampleParams, PhiAuditParams, CatalogDocsParams, WhereParams, ReviewParams,
)

__all__ = [
    "OUT", "RERUN", "RERUN_HELP", "Params", "is_sequence", "CurateParams", "IngestParams",
    "DownstreamParams", "Labelled2dParams", "ModelChoice", "PretrainParams", "FeaturesParams",
    "ProbeParams", "ZeroShotParams", "FewShotParams", "NnunetParams", "FrdParams", "CompareParams",
    "TransferParams", "EpochSweepParams", "Volume3dParams", "Finetune3dParams", "Classify3dParams",
    "DemoEvalParams", "SqlParams", "OverlapParams", "ExportBidsParams", "SampleParams", "PhiAuditParams",
    "CatalogDocsParams", "WhereParams", "ReviewParams",
]
