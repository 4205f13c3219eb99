"""``mrifoundry`` command: one verb per params model (mrifoundry/params.py).

A pipeline verb calls its plain runner in ``tasks/`` (no Prefect server to start); ``--prefect``
sends it through the Prefect flow of the same name instead (task states, artifacts, retries), as
``curate --runner dask|slurm`` always does. Options, defaults and help come from the model
(flows/cli_args.py). Exit codes: 0 done, 1 some items failed, 2 usage or missing input, 3 the
output is busy, 4 PHI audit hit, 28 disk full (mrifoundry/errors.py, docs/runbook.md).
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import dataclass

from mrifoundry import params as P
from mrifoundry.flows.cli_args import add_model_args, params_from_args

from mrifoundry.flows.console import (  # noqa: F401 - QUIET_PRIVATE_ENV: the tests read it here
    QUIET_PRIVATE_ENV, _check_inputs, _check_not_busy, _prepare_prefect, quiet_private_env, run_verb,
)


@dataclass(frozen=True)
class Verb:
    name: str
    params: type[P.Params]
    run: str                        # "module:function": the plain runner (or a tool verb, → exit code)
    flow: str | None = None         # "module:function": the Prefect flow (--prefect)
    positional: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()    # path fields that must exist before anything starts
    tool: bool = False              # the function prints its own output and returns the exit code

    @property
    def help(self) -> str:
        return (self.params.__doc__ or "").split(":", 1)[-1].strip().rstrip(".")


_EV, _T = "mrifoundry.tasks.evaluation", "mrifoundry.flows.cli_tools"
VERBS = (
    Verb("curate", P.CurateParams, "mrifoundry.flows.cli:run_curate", "mrifoundry.flows.curate:curate",
         inputs=("archive", "reports", "rules")),
    Verb("ingest", P.IngestParams, "mrifoundry.tasks.ingest.runner:run_ingest", "mrifoundry.flows.ingest:ingest",
         inputs=("bids", "nifti")),
    Verb("ingest-downstream", P.DownstreamParams, "mrifoundry.tasks.ingest.runner:run_ingest_downstream",
         "mrifoundry.flows.downstream:ingest_downstream_flow", positional=("root",), inputs=("root",)),
    Verb("ingest-labelled", P.Labelled2dParams, "mrifoundry.tasks.ingest.labelled2d_run:run_ingest_labelled",
         "mrifoundry.flows.labelled:ingest_labelled", positional=("root",), inputs=("root",)),
    Verb("pretrain", P.PretrainParams, "mrifoundry.tasks.pretraining.runner:run_pretrain",
         "mrifoundry.flows.pretrain:pretrain"),
    Verb("features", P.FeaturesParams, f"{_EV}.runs:run_features", "mrifoundry.flows.features:extract_features_flow"),
    Verb("linear-probe", P.ProbeParams, f"{_EV}.runs:run_linear_probe", "mrifoundry.flows.evaluate:linear_probe"),
    Verb("zero-shot", P.ZeroShotParams, f"{_EV}.runs:run_zero_shot", "mrifoundry.flows.evaluate:zero_shot",
         positional=("dataset_id",)),
    Verb("few-shot", P.FewShotParams, f"{_EV}.runs:run_few_shot", "mrifoundry.flows.evaluate:few_shot",
         positional=("dataset_id",)),
    Verb("nnunet-baseline", P.NnunetParams, f"{_EV}.nnunet_baseline:run_nnunet", "mrifoundry.flows.nnunet:nnunet_baseline",
         positional=("dataset_id",)),
    Verb("compare", P.CompareParams, f"{_EV}.compare:run_compare", "mrifoundry.flows.compare:compare_flow"),
    Verb("frd", P.FrdParams, f"{_EV}.runs:run_frd", "mrifoundry.flows.evaluate:frd_flow"),
    Verb("transfer", P.TransferParams, f"{_EV}.runs:run_transfer", "mrifoundry.flows.evaluate:transfer"),
    Verb("epoch-sweep", P.EpochSweepParams, f"{_EV}.epoch_sweep:run_epoch_sweep", "mrifoundry.flows.evaluate:epoch_sweep"),
    Verb("finetune-3d", P.Finetune3dParams, f"{_EV}.volume_runs:run_finetune_3d",
         "mrifoundry.flows.finetune:finetune_3d", positional=("dataset_id",)),
    Verb("classify-3d", P.Classify3dParams, f"{_EV}.volume_runs:run_classify_3d",
         "mrifoundry.flows.finetune:classify_3d", positional=("dataset_id",)),
    Verb("demo-eval", P.DemoEvalParams, f"{_EV}.demo:run_demo_eval", "mrifoundry.flows.demo_eval:demo_eval"),
    Verb("sql", P.SqlParams, f"{_T}:sql", positional=("query",), tool=True),
    Verb("overlap", P.OverlapParams, f"{_T}:overlap", positional=("query",), tool=True),
    Verb("export-bids", P.ExportBidsParams, f"{_T}:export_bids", tool=True),
    Verb("sample", P.SampleParams, f"{_T}:sample", tool=True),
    Verb("phi-audit", P.PhiAuditParams, f"{_T}:phi_audit", inputs=("out",), tool=True),
    Verb("catalog-docs", P.CatalogDocsParams, f"{_T}:catalog_docs", tool=True),
    Verb("where", P.WhereParams, f"{_T}:where", tool=True),
    Verb("review", P.ReviewParams, f"{_T}:review", positional=("action", "file"), inputs=("file",), tool=True),
)


def _load(ref: str):
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def run_curate(params: P.CurateParams, progress=None) -> dict:
    """The plain curation run of the command: the embedded sample and defaults resolved first."""
    from mrifoundry.flows.params import resolve
    from mrifoundry.tasks.curation.runner import run_curation
    return run_curation(resolve(params), progress=progress)


def _progress():
    """Progress lines on the terminal; none into a pipe or a log (the result JSON goes to stdout)."""
    return (lambda line: print(line, file=sys.stderr, flush=True)) if sys.stderr.isatty() else None


def _run(verb: Verb, a: argparse.Namespace) -> int:
    p = params_from_args(verb.params, a, verb.positional)
    _check_inputs({f"--{f.replace('_', '-')}": getattr(p, f) for f in verb.inputs})
    if verb.tool:
        return _load(verb.run)(p)
    _check_not_busy(getattr(p, "out", None))
    if verb.flow and (a.prefect or getattr(p, "runner", "threads") != "threads"):
        _prepare_prefect(a)
        res = _load(verb.flow)(**p.model_dump())
    else:
        res = _load(verb.run)(p, progress=_progress())
    print(json.dumps(res, indent=1, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mrifoundry", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of an expected failure (also MRIFOUNDRY_DEBUG=1)")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="VERB")
    for verb in VERBS:
        v = sub.add_parser(verb.name, help=verb.help, description=verb.params.__doc__)
        add_model_args(v, verb.params, verb.positional)
        if verb.flow:
            v.add_argument("--prefect", action="store_true",
                           help=f"run through the Prefect flow ({verb.flow.rsplit(':', 1)[0].rsplit('.', 1)[1]}"
                                ".py: task states, artifacts, `prefect flow-run retry`); default: the plain "
                                "runner, no server")
        v.set_defaults(fn=lambda a, verb=verb: _run(verb, a))
    return p


def main(argv: list[str] | None = None) -> int:
    quiet_private_env()
    a = build_parser().parse_args(argv)
    return run_verb(a)


if __name__ == "__main__":
    raise SystemExit(main())
