"""The evaluation flows under a real Prefect server with tiny models: linear probing on
catalog slices and zero-shot k-means segmentation of the MNI152 white-matter task; both
write their metrics and pictures into the catalog."""
from __future__ import annotations

import json

import pytest

from mrifoundry.catalog.views import connect

pytestmark = [pytest.mark.prefect_server]


@pytest.fixture(scope="module")
def research(prefect_server, small_catalog, tmp_path_factory):
    from mrifoundry.sample.labelled import make_mni_wm_dataset
    from mrifoundry.tasks.ingest.labelled2d import ingest_nifti_pairs
    root = make_mni_wm_dataset(tmp_path_factory.mktemp("mni-wm"), n_cases=4, seed=0)
    ingest_nifti_pairs(small_catalog, root, "mni-wm", split=(0.5, 0.0, 0.5), seed=0)
    return small_catalog


def test_linear_probe_flow(research):
    from mrifoundry.flows.evaluate import linear_probe
    res = linear_probe(out=str(research.parent),
                       query="SELECT png_file, patient_id, orientation AS label FROM training_slices",
                       model="random", arch="vit_tiny", image_size=64, eval_id="probe-tiny", epochs=20, repeats=1)
    assert 0.0 <= res["accuracy"] <= 1.0
    con = connect(research)
    rows = dict(con.execute("SELECT metric, value FROM evaluations WHERE eval_id = 'probe-tiny'").fetchall())
    pic = con.execute("SELECT DISTINCT picture_file FROM evaluations WHERE eval_id = 'probe-tiny'").fetchone()[0]
    details = json.loads(con.execute("SELECT details FROM evaluations WHERE eval_id = 'probe-tiny' LIMIT 1").fetchone()[0])
    con.close()
    assert rows["accuracy"] == pytest.approx(res["accuracy"])
    # accuracy is the trace of the confusion matrix over its sum
    import numpy as np
    cm = np.array(details["confusion"])
    assert rows["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert open(pic, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_zero_shot_flow(research):
    from mrifoundry.flows.evaluate import zero_shot
    res = zero_shot(dataset_id="mni-wm", out=str(research.parent), k_values=[2, 4], model="random", arch="vit_tiny",
                    image_size=64, eval_id="zs-tiny")
    assert set(res["dice_per_k"]) == {"2", "4"} and res["n_slices"] > 0
    con = connect(research)
    rows = con.execute("SELECT metric, value, n, picture_file FROM evaluations WHERE eval_id = 'zs-tiny' "
                       "ORDER BY metric").fetchall()
    con.close()
    assert [r[0] for r in rows] == ["dice_k2", "dice_k4"]
    assert all(0.0 <= r[1] <= 1.0 for r in rows) and all(r[2] == res["n_slices"] for r in rows)
    pictures = [r[3] for r in rows if r[3]]
    assert len(pictures) == 1 and open(pictures[0], "rb").read(4) == b"\x89PNG"
    assert len(res["overlays"]) == 3


def test_frd_flow_uses_its_cache_the_second_time(research):
    from mrifoundry.flows.evaluate import frd_flow
    first = frd_flow(dataset_ids=["mni-wm"], out=str(research.parent), n=8, workers=1, eval_id="frd-tiny")
    again = frd_flow(dataset_ids=["mni-wm"], out=str(research.parent), n=8, workers=1, eval_id="frd-tiny")
    assert first["mni-wm"]["cache_misses"] == 16 and again["mni-wm"]["cache_misses"] == 0
    assert again["mni-wm"]["frd"] == first["mni-wm"]["frd"]
    con = connect(research)
    value = con.execute("SELECT value FROM evaluations WHERE eval_id = 'frd-tiny' AND metric = 'frd:mni-wm'").fetchone()
    con.close()
    assert value[0] == pytest.approx(first["mni-wm"]["frd"])


def test_few_shot_flow_tiny(research):
    from mrifoundry.flows.evaluate import few_shot
    res = few_shot(dataset_id="mni-wm", out=str(research.parent), model="random", arch="sam_tiny", preset="tiny",
                   random_decoder=True, overrides={"repeats": 1, "epochs": 10, "k_patients": 1, "n_val_patients": 0}, eval_id="fs-tiny")
    con = connect(research)
    rows = dict(con.execute("SELECT metric, value FROM evaluations WHERE eval_id = 'fs-tiny'").fetchall())
    pic = con.execute("SELECT DISTINCT picture_file FROM evaluations WHERE eval_id = 'fs-tiny'").fetchone()[0]
    con.close()
    assert rows["test_dsc_3d"] == pytest.approx(res["summary"]["test_dsc_3d"]["mean"])
    assert 0.0 <= rows["test_dsc_2d"] <= 1.0 and 0.0 <= rows["test_nsd_3d"] <= 1.0
    assert open(pic, "rb").read(4) == b"\x89PNG"


def test_transfer_flow_relates_gain_to_frd(research):
    """Gains and FRDs recorded as rows → the flow's Pearson/Spearman equal SciPy's on them."""
    from scipy import stats

    from mrifoundry.flows.evaluate import transfer
    from mrifoundry.tasks.evaluation.evaluate import record
    gains = {"d1": (0.80, 0.70), "d2": (0.60, 0.58), "d3": (0.90, 0.60), "d4": (0.50, 0.49)}
    frds = {"d1": 3.0, "d2": 1.0, "d3": 5.0, "d4": 0.5}
    rows = []
    for d, (a, b) in gains.items():
        for model, v in (("A", a), ("B", b)):
            rows.append({"eval_id": f"fs-{model}-{d}", "kind": "few-shot", "model": model, "weights_sha256": "x",
                         "dataset": d, "metric": "test_dsc_3d", "value": v})
        rows.append({"eval_id": "frd-synthetic", "kind": "frd", "model": "frd-score v1", "weights_sha256": "n/a",
                     "dataset": d, "metric": f"frd:{d}", "value": frds[d]})
    record(research, rows)
    res = transfer(model_a="A", model_b="B", out=str(research.parent), frd_eval_id="frd-synthetic", eval_id="tr")
    x = [frds[d] for d in sorted(gains)]
    y = [gains[d][0] - gains[d][1] for d in sorted(gains)]
    assert res["n"] == 4
    assert res["pearson"]["r"] == pytest.approx(stats.pearsonr(x, y)[0])
    assert res["spearman"]["r"] == pytest.approx(stats.spearmanr(x, y)[0])
    assert open(res["png"], "rb").read(4) == b"\x89PNG"


def test_a_volume_run_through_extract_features_and_linear_probe(prefect_server, volume_catalog):
    """A Triad run of the catalog's models table: extract-features and linear-probe load it
    through the zoo entry of its method and switch to volumes (default queries per kind)."""
    import torch

    from mrifoundry.flows.evaluate import linear_probe
    from mrifoundry.flows.features import extract_features_flow
    from mrifoundry.tasks.pretraining.recipes import recipe
    from mrifoundry.tasks.pretraining.volumes import train_volumes
    from mrifoundry.tasks.pretraining.report import register_model
    from mrifoundry.tasks.data.volumes import DEFAULT_QUERY, query_volumes
    rows = query_volumes(volume_catalog, DEFAULT_QUERY)
    texts = torch.nn.functional.normalize(torch.randn(len(rows), 384, generator=torch.Generator().manual_seed(0)),
                                          dim=1).numpy()
    run = volume_catalog / "models" / "triad-unet-flowtest"
    res = train_volumes(recipe("triad-tiny", encoder="unet_tiny", max_iterations=1), rows, run, texts=texts)
    register_model(volume_catalog, {"model_id": "triad-unet-flowtest", "recipe": "triad-tiny", "objective": "triad",
                                    "arch": "unet_tiny", "init": "random", "query": DEFAULT_QUERY,
                                    "n_slices": len(rows), "iterations": 1,
                                    "checkpoint_path": str(res.checkpoint.relative_to(volume_catalog))})
    row = extract_features_flow(out=str(volume_catalog.parent), pretrained="triad-unet-flowtest")
    con = connect(volume_catalog)
    n_nifti = con.execute("SELECT COUNT(*) FROM series WHERE nifti_path IS NOT NULL").fetchone()[0]
    got = con.execute("SELECT model, unit, n_slices FROM feature_sets WHERE feature_set = 'triad-unet-flowtest'"
                      ).fetchone()
    n_vec = con.execute("SELECT COUNT(*) FROM volume_features WHERE feature_set = 'triad-unet-flowtest'").fetchone()[0]
    con.close()
    assert got == ("triad-unet", "volume", n_nifti) == (row["model"], row["unit"], row["n_slices"]) and n_vec == n_nifti
    probe = linear_probe(out=str(volume_catalog.parent), pretrained="triad-unet-flowtest", eval_id="vprobe-flow",
                         epochs=5)
    con = connect(volume_catalog)
    model, details = con.execute("SELECT model, details FROM evaluations WHERE eval_id = 'vprobe-flow' LIMIT 1"
                                 ).fetchone()
    con.close()
    assert probe["unit"] == json.loads(details)["unit"] == "volumes" and model == "triad-unet-flowtest"
