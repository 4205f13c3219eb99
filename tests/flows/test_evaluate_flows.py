"""The evaluation flows under a real Prefect server with tiny models: linear probing on
catalog slices and zero-shot k-means segmentation of the MNI152 white-matter task; both
write their metrics and pictures into the catalog."""
from __future__ import annotations

import json

import pytest

from catalog.views import connect

pytestmark = [pytest.mark.prefect_server]


@pytest.fixture(scope="module")
def research(prefect_server, small_catalog, tmp_path_factory):
    from mrifoundry.sample.labelled import make_mni_wm_dataset
    from tasks.labelled import ingest_nifti_pairs
    root = make_mni_wm_dataset(tmp_path_factory.mktemp("mni-wm"), n_cases=4, seed=0)
    ingest_nifti_pairs(small_catalog, root, "mni-wm", split=(0.5, 0.0, 0.5), seed=0)
    return small_catalog


def test_linear_probe_flow(research):
    from flows.evaluate import linear_probe
    res = linear_probe(out=str(research.parent),
                       query="SELECT png_file, patient_id, orientation AS label FROM training_slices",
                       model="random", arch="vit_tiny", image_size=64, eval_id="probe-tiny", epochs=20)
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
    from flows.evaluate import zero_shot
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
    from flows.evaluate import frd_flow
    first = frd_flow(dataset_ids=["mni-wm"], out=str(research.parent), n=8, workers=1, eval_id="frd-tiny")
    again = frd_flow(dataset_ids=["mni-wm"], out=str(research.parent), n=8, workers=1, eval_id="frd-tiny")
    assert first["mni-wm"]["cache_misses"] == 16 and again["mni-wm"]["cache_misses"] == 0
    assert again["mni-wm"]["frd"] == first["mni-wm"]["frd"]
    con = connect(research)
    value = con.execute("SELECT value FROM evaluations WHERE eval_id = 'frd-tiny' AND metric = 'frd:mni-wm'").fetchone()
    con.close()
    assert value[0] == pytest.approx(first["mni-wm"]["frd"])
