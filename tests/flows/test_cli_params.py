"""The command and the flows are made from the params models: one set of defaults, one shape."""
from __future__ import annotations

import inspect
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest

from mrifoundry import params as P
from mrifoundry.errors import UsageError
from mrifoundry.flows import cli
from mrifoundry.flows.cli_args import params_from_args

REPO = Path(__file__).resolve().parents[2]
PIPELINES = [v for v in cli.VERBS if v.flow]


def _parse(argv):
    return cli.build_parser().parse_args(argv)


@pytest.mark.parametrize("verb", cli.VERBS, ids=lambda v: v.name)
def test_every_field_is_an_option_with_its_default_in_the_help(verb, capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([verb.name, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, f in verb.params.model_fields.items():
        assert "--" + name.replace("_", "-") in text, name
        if not f.is_required():
            assert "(default: " in text
    # given nothing but the required fields, the CLI hands the model its own defaults
    argv = [verb.name, *({"ingest": ["--bids", "x"]}.get(verb.name, []))]
    for name, f in verb.params.model_fields.items():
        if f.is_required():
            choices = typing.get_args(f.annotation) if typing.get_origin(f.annotation) is typing.Literal else ()
            argv += ["--" + name.replace("_", "-"), "1,2,3" if name == "split" else choices[0] if choices else "x"]
    p = params_from_args(verb.params, _parse(argv), verb.positional)
    required = {n for n, f in verb.params.model_fields.items() if f.is_required()}
    given = required | ({"bids"} if verb.name == "ingest" else set())
    assert p.model_dump(exclude=given) == verb.params(**{n: getattr(p, n) for n in given}).model_dump(exclude=given)


@pytest.mark.parametrize("verb", PIPELINES, ids=lambda v: v.name)
def test_flow_signature_is_the_model(verb):
    """Prefect's parameter schema, deployments and callers see exactly the model's fields and defaults."""
    flow = cli._load(verb.flow)
    sig = inspect.signature(flow.fn)
    fields = verb.params.model_fields
    assert set(sig.parameters) == set(fields)
    for name, prm in sig.parameters.items():
        f = fields[name]
        want = inspect.Parameter.empty if f.is_required() else f.get_default(call_default_factory=True)
        assert prm.default == want, name


def test_shapes_lists_tuples_json_bools_and_none():
    a = _parse(["finetune-3d", "brats", "--label-fractions", "0.1,0.25", "--label-fractions", "1",
                "--overrides", '{"overlap": 0.25}', "--no-freeze", "--lr", "none"])
    p = params_from_args(P.Finetune3dParams, a, ("dataset_id",))
    assert p.dataset_id == "brats" and p.label_fractions == [0.1, 0.25, 1.0]
    assert p.overrides == {"overlap": 0.25} and p.freeze is False and p.lr is None
    a = _parse(["curate", "--archive", "x", "--nifti-shape", "256x256x128", "--no-png", "--voxel-size", "0",
                "--date-start", "2019-01-02", "--rerun", "failed"])
    c = params_from_args(P.CurateParams, a)
    assert c.nifti_shape == (256, 256, 128) and c.write_png is False and c.voxel_size_mm is None
    assert str(c.date_start) == "2019-01-02" and c.rerun == "failed" and c.write_nifti is True
    d = params_from_args(P.DownstreamParams, _parse(["ingest-downstream", "/d", "--dataset-id", "b",
                                                     "--split", "0.5,0.25,0.25"]), ("root",))
    assert d.root == "/d" and d.split == (0.5, 0.25, 0.25)
    q = params_from_args(P.SqlParams, _parse(["sql", "--query", "SELECT 1"]), ("query",))
    assert q.query == "SELECT 1"


@pytest.mark.parametrize("argv, words", [
    (["curate", "--archive", "x", "--workers", "0"], "--workers: Input should be greater than or equal to 1"),
    (["ingest", "--bids", "a", "--nifti", "b"], "exactly one of bids"),
    (["few-shot"], "--dataset-id: Field required"),
    (["sql"], "--query: Field required"),
])
def test_invalid_values_are_one_line_usage_errors(argv, words):
    with pytest.raises(UsageError) as e:
        verb = next(v for v in cli.VERBS if v.name == argv[0])
        params_from_args(verb.params, _parse(argv), verb.positional)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_usage_error_exit_code(tmp_path, capsys):
    assert cli.main(["curate", "--archive", str(tmp_path), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mrifoundry curate: --workers")


def test_curate_starts_fast_without_prefect(tmp_path):
    """`mrifoundry curate` on a folder: the plain runner is at work within 2 s (imports, parsing,
    lock, index) — measured to the first exam entering the stages."""
    from tests.dicom_factory import write_series
    write_series(tmp_path / "archive" / "s", n_slices=5, extra=dict(PatientID="MRN0003", StudyDate="20180305"))
    code = ("import sys, time; t0 = time.perf_counter(); import mrifoundry.tasks.curation.runner as r; "
            "orig = r.threaded_exams\n"
            "def timed(*a):\n    print(f'START {time.perf_counter() - t0:.3f}', file=sys.stderr); return orig(*a)\n"
            "r.threaded_exams = timed\n"
            "from mrifoundry.flows.cli import main; sys.exit(main(sys.argv[1:]))")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code, "curate", "--archive", str(tmp_path / "archive"), "--out",
                        str(tmp_path / "out"), "--workers", "1", "--no-phi-audit"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300,
                       env={"PATH": "/usr/bin:/bin", "MRIFOUNDRY_HOME": str(tmp_path / "home")})
    assert p.returncode == 0, p.stderr[-2000:]
    started = float(next(ln for ln in p.stderr.splitlines() if ln.startswith("START")).split()[1])
    assert started < 2.0, (started, time.perf_counter() - t0)
