"""MRI-CORE's ablation switches: sampling with replacement, volume-wise min-max, student-only SAM init."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mrifoundry.catalog.views import connect
from mrifoundry.params import PretrainParams
from mrifoundry.tasks.data.samplers import EpochSampler
from mrifoundry.tasks.data.slices import load_slice, query_slices, read_slice_list, volume_windows
from mrifoundry.tasks.pretraining.recipes import recipe
from mrifoundry.tasks.pretraining.runner import run_pretrain
from mrifoundry.tasks.pretraining.slices import train


def test_sampling_with_replacement_draws_seeded_repeats():
    s = EpochSampler(100, 10, seed=3, replacement=True)
    want = np.random.default_rng([3, 0]).integers(0, 100, 100)
    assert np.array_equal(s.permutation(0), want)
    assert len(set(want.tolist())) < 100                          # some slices twice, some never
    assert sorted(sum(s.epoch_batches(0), [])) == sorted(want.tolist())
    plain = EpochSampler(100, 10, seed=3)
    assert sorted(plain.permutation(0).tolist()) == list(range(100))


def test_volume_windows_give_volume_wise_min_max(small_catalog):
    con = connect(small_catalog)
    try:
        series, tp = con.execute("SELECT series_id, temporal_index FROM slices GROUP BY 1, 2 HAVING COUNT(*) > 3 "
                                 "AND max(max_value) > min(max_value) ORDER BY 1 LIMIT 1").fetchone()
        rows = con.execute("SELECT slice_id, png_file, min_value, max_value FROM slices WHERE series_id = ? AND "
                           "temporal_index = ? ORDER BY slice_index", [series, tp]).fetchall()
    finally:
        con.close()
    lo_v, hi_v = min(r[2] for r in rows), max(r[3] for r in rows)
    wins = volume_windows(small_catalog, [r[0] for r in rows])
    got = [load_slice(r[1], w)[0].numpy() for r, w in zip(rows, wins)]
    for (_, png, lo_s, hi_s), g in zip(rows, got):
        u8 = np.asarray(Image.open(png), dtype=np.float64)
        x01 = (u8 - u8.min()) / (u8.max() - u8.min())
        stored = lo_s + x01 * (hi_s - lo_s)                      # the slice's values back, from the PNG
        np.testing.assert_allclose(g, (stored - lo_v) / (hi_v - lo_v), atol=1e-5)
    assert max(g.max() for g in got) == pytest.approx(1.0) and min(g.min() for g in got) == pytest.approx(0.0)
    assert any(g.max() < 0.999 for g in got)                      # not every slice reaches the volume's max
    assert volume_windows(small_catalog, [None]) == [(0.0, 1.0)]


def test_sam_student_init_leaves_the_teacher_random(small_catalog, tmp_path):
    from mrifoundry.models.sam_encoder import SAM_CONFIGS, build_sam_encoder
    torch.manual_seed(1)
    sam = build_sam_encoder(SAM_CONFIGS["sam_tiny"])
    sam_path = tmp_path / "sam_tiny.pth"
    torch.save({f"image_encoder.{k}": v for k, v in sam.state_dict().items()}, sam_path)
    paths = [r["png_file"] for r in query_slices(small_catalog, "SELECT png_file FROM training_slices")][:16]
    # lr 0, momentum 1: nothing moves, the saved weights are the initialisation
    cfg = recipe("mri-core-tiny", init="sam_student", max_iterations=1, base_lr=0.0, min_lr=0.0, momentum=(1.0, 1.0))
    res = train(cfg, paths, tmp_path / "run", init_weights=sam_path)
    sam_fc1 = sam.state_dict()["blocks.0.mlp.lin1.weight"]
    state = torch.load(Path(res.checkpoint).parents[2] / "train_state.pt", weights_only=False)

    def fc1(sd: dict) -> torch.Tensor:
        return next(v for k, v in sd.items() if k.endswith("blocks.0.0.mlp.fc1.weight") or
                    k.endswith("blocks.0.mlp.fc1.weight"))
    student = {k: v for k, v in state["student"].items() if k.startswith("backbone.")}
    teacher = torch.load(res.checkpoint, weights_only=True)["teacher"]
    assert torch.equal(fc1(student), sam_fc1)                     # the student is SAM
    assert not torch.allclose(fc1(teacher), sam_fc1)              # the teacher is not
    with pytest.raises(ValueError, match="sam_student"):
        train(recipe("mae-tiny", init="sam_student", max_iterations=1), paths, tmp_path / "mae", init_weights=sam_path)


def test_runner_with_the_ablation_switches(small_catalog):
    out = small_catalog.parent
    res = run_pretrain(PretrainParams(out=str(out), recipe="mri-core-tiny", run_name="ablation-test",
                                      overrides={"max_iterations": 2, "sampling": "with_replacement",
                                                 "normalization": "volume"}))
    assert res["iterations"] == 2
    paths, windows = read_slice_list(Path(res["run_dir"]) / "slices.txt")
    assert windows is not None and len(windows) == len(paths) > 0
    assert all(0.0 <= lo <= hi <= 1.0 for lo, hi in windows)
