"""The epoch sweep: every saved checkpoint of a pretrain run probed, the best named, rows in the catalog."""
from __future__ import annotations

from pathlib import Path

import pytest

from mrifoundry.catalog.views import connect
from mrifoundry.errors import UsageError
from mrifoundry.params import EpochSweepParams, PretrainParams
from mrifoundry.tasks.data.samplers import EpochSampler
from mrifoundry.tasks.evaluation.epoch_sweep import run_epoch_sweep, saved_checkpoints
from mrifoundry.tasks.pretraining.runner import run_pretrain


def test_sweep_probes_every_saved_checkpoint(small_catalog):
    out = small_catalog.parent
    # a teacher checkpoint at every epoch end: three short epochs
    run = run_pretrain(PretrainParams(out=str(out), recipe="mri-core-tiny", run_name="sweep-test",
                                      overrides={"epochs": 3, "batch_size": 32}))
    con = connect(small_catalog)
    n, = con.execute("SELECT n_slices FROM models WHERE model_id = 'sweep-test'").fetchone()
    con.close()
    per_epoch = EpochSampler(n, 32).steps_per_epoch
    ckpts = saved_checkpoints(Path(run["run_dir"]))
    assert [it for it, _ in ckpts] == [per_epoch, 2 * per_epoch, 3 * per_epoch]
    lines: list[str] = []
    res = run_epoch_sweep(EpochSweepParams(out=str(out), pretrained="sweep-test", probe_epochs=5, repeats=1,
                                           query="SELECT png_file, patient_id, orientation AS label FROM training_slices"),
                          progress=lines.append)
    assert [p["iteration"] for p in res["points"]] == [it for it, _ in ckpts] and len(lines) == 3
    con = connect(small_catalog)
    try:
        stored = {r[0]: (r[1], r[2]) for r in con.execute(
            "SELECT eval_id, value, weights_sha256 FROM evaluations WHERE metric = 'balanced_accuracy' "
            "AND eval_id LIKE 'sweep-sweep-test-it%'").fetchall()}
    finally:
        con.close()
    for k, p in enumerate(res["points"], 1):
        assert stored[p["eval_id"]][0] == pytest.approx(p["balanced_accuracy"])
        assert p["epoch"] == pytest.approx(k)
    assert len({sha for _, sha in stored.values()}) == 3          # three different checkpoint files
    best = max(res["points"], key=lambda p: (p["balanced_accuracy"], -p["iteration"]))
    assert res["best"] == best and Path(res["png"]).is_file()
    assert f"best: iteration {best['iteration']}" in res["markdown"]


def test_sweep_refuses_what_it_cannot_probe(small_catalog):
    with pytest.raises(UsageError):
        run_epoch_sweep(EpochSweepParams(out=str(small_catalog.parent), pretrained="no-such-run"))
