"""Flow ``ingest`` under a real Prefect server, then a 3D recipe pretrains on the BIDS query."""
from __future__ import annotations

import pytest

from mrifoundry.catalog.views import connect
from mrifoundry.sample.bids_corpus import make_bids

pytestmark = [pytest.mark.prefect_server]


def test_a_bids_dataset_goes_in_by_one_flow_and_a_volume_recipe_trains_on_it(prefect_server, tmp_path):
    from mrifoundry.flows.ingest import ingest
    from mrifoundry.flows.pretrain import pretrain
    root = make_bids(tmp_path / "ds-test", broken=False)
    out = tmp_path / "out"
    res = ingest(bids=str(root), dataset="ds-test", out=str(out), body_part="brain")
    assert res["outcomes"] == {"done": 4} and res["catalog"]["series"] == 4
    assert (out / "research" / "qc" / "ingest-ds-test.png").exists()
    query = ("SELECT r.series_id, r.exam_id, r.nifti_file, r.sequence_type, e.body_part FROM series r "
             "JOIN exams e USING (exam_id) WHERE e.dataset = 'ds-test' AND r.status = 'ok' "
             "AND r.sequence_type IN ('T1', 'T2')")
    run = pretrain(out=str(out), query=query, recipe="brainsegfounder-tiny", run_name="bids-bsf",
                   overrides={"max_iterations": 2})
    assert run["iterations"] == 2
    con = connect(out / "research")
    try:
        row = con.execute("SELECT n_slices, query, checkpoint_file FROM models WHERE model_id = 'bids-bsf'").fetchone()
    finally:
        con.close()
    assert row[0] == 3 and row[1] == query   # the three anatomical volumes
    from mrifoundry.models import zoo
    assert zoo.load("brainsegfounder", row[2]).encoder.cfg.embed_dim == 12
