"""``run_pretrain`` without Prefect on the session's small catalog: the run's checkpoint, loss
curve and ``models`` row; the same run name resumes; stage 2 only for BrainSegFounder."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mrifoundry.catalog.views import connect
from mrifoundry.params import PretrainParams
from mrifoundry.tasks.pretraining.runner import run_pretrain


def test_run_pretrain_registers_the_model_and_a_rerun_resumes(small_catalog):
    out = small_catalog.parent
    lines: list[str] = []
    params = PretrainParams(out=str(out), recipe="mri-core-tiny", run_name="runner-test",
                            overrides={"max_iterations": 2})
    res = run_pretrain(params, progress=lines.append)
    research = out.resolve() / "research"
    assert res["model_id"] == "runner-test" and res["iterations"] == 2
    assert (research / res["checkpoint_path"]).is_file() and Path(res["loss_curve_png"]).is_file()
    assert res["summary_markdown"].startswith("# Pretraining `runner-test`")
    assert [x.split("/")[0] for x in lines if x.startswith("iteration ")] == ["iteration 1", "iteration 2"]
    con = connect(research)
    try:
        (its, ckpt, query) = con.execute("SELECT iterations, checkpoint_file, query FROM models "
                                         "WHERE model_id = 'runner-test'").fetchone()
    finally:
        con.close()
    assert its == 2 and Path(ckpt).name == "teacher_checkpoint.pth" and "training_slices" in query

    # the same run name, one more iteration: only iteration 3 is trained
    lines.clear()
    again = run_pretrain(params.model_copy(update={"overrides": {"max_iterations": 3}}), progress=lines.append)
    assert again["iterations"] == 3
    assert [x.split("/")[0] for x in lines if x.startswith("iteration ")] == ["iteration 3"]
    logged = [json.loads(x)["iteration"] for x in (Path(again["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3]


def test_stage2_query_is_for_brainsegfounder_only(small_catalog):
    with pytest.raises(ValueError, match="BrainSegFounder"):
        run_pretrain(PretrainParams(out=str(small_catalog.parent), recipe="mri-core-tiny", run_name="no-stage2",
                                    stage2_query="SELECT 1"))


def test_brainsegfounder_stage2_starts_from_stage1(volume_catalog):
    """``stage2_query``: a second run ``<run_name>-stage2`` from stage 1's weights, both in ``models``."""
    q = "SELECT series_id, exam_id, nifti_file FROM series WHERE status = 'ok' AND nifti_file IS NOT NULL"
    res = run_pretrain(PretrainParams(out=str(volume_catalog.parent), recipe="brainsegfounder-tiny",
                                      run_name="bsf-runner", overrides={"max_iterations": 1}, stage2_query=q))
    assert res["model_id"] == "bsf-runner-stage2" and res["iterations"] == 1
    con = connect(volume_catalog)
    try:
        rows = dict(con.execute("SELECT model_id, init FROM models WHERE model_id LIKE 'bsf-runner%'").fetchall())
    finally:
        con.close()
    assert rows == {"bsf-runner": "random", "bsf-runner-stage2": "stage 1 (bsf-runner)"}
