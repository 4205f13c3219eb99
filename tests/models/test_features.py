"""Feature extraction into the catalog: one row per queried slice, pooled vectors equal an
independent per-slice computation, patch-grid shards line up, re-extraction replaces."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mrifoundry.catalog.views import connect
from mrifoundry.models import zoo
from mrifoundry.tasks.evaluation.embedding import extract_features, load_features, query_slice_rows

QUERY = "SELECT slice_id FROM training_slices ORDER BY slice_id LIMIT 20"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return zoo.load("random", arch="vit_tiny", image_size=64)


def test_features_registered_and_equal_to_direct_embedding(small_catalog, model):
    row = extract_features(small_catalog, QUERY, model, "tiny-random", batch_size=6, patch_grids=True, shard_size=8)
    assert row["n_slices"] == 20 and row["dim"] == 64 and row["weights_sha256"] == "random"
    con = connect(small_catalog)
    got = con.execute("SELECT f.slice_id, f.embedding, f.grid_file, f.grid_index, s.png_file FROM features f "
                      "JOIN slices s USING (slice_id) WHERE feature_set = 'tiny-random' ORDER BY slice_id").fetchall()
    sets = con.execute("SELECT model, n_slices, patch_grids FROM feature_sets").fetchall()
    con.close()
    assert sets == [("random", 20, True)]
    assert len(got) == 20 and len({g[0] for g in got}) == 20
    for slice_id, emb, grid_file, grid_index, png in got[::7]:
        # independent path: PIL → NumPy min-max → the encoder on exactly that image
        a = np.asarray(Image.open(png).convert("L"), dtype=np.float32)
        a = (a - a.min()) / max(a.max() - a.min(), 1e-12)
        x = torch.nn.functional.interpolate(torch.from_numpy(a)[None, None], size=(64, 64), mode="bilinear",
                                            antialias=True, align_corners=False)
        direct = model.pooled(x.clamp(0, 1))[0].numpy()
        np.testing.assert_allclose(np.asarray(emb, np.float32), direct, rtol=1e-4, atol=1e-5)
        grid = np.load(grid_file)[grid_index]
        assert grid.shape == (64, 4, 4)
        # shards are float16: their mean matches the float32 pooled vector to fp16 precision
        np.testing.assert_allclose(grid.astype(np.float32).mean(axis=(1, 2)), emb, atol=2e-2)


def test_reextraction_replaces_the_set(small_catalog, model):
    extract_features(small_catalog, QUERY, model, "again", batch_size=8)
    extract_features(small_catalog, QUERY.replace("LIMIT 20", "LIMIT 5"), model, "again", batch_size=8)
    ids, mat = load_features(small_catalog, "again")
    assert len(ids) == 5 and mat.shape == (5, 64)
    con = connect(small_catalog)
    n = con.execute("SELECT COUNT(*) FROM features WHERE feature_set = 'again'").fetchone()[0]
    sets = con.execute("SELECT COUNT(*) FROM feature_sets WHERE feature_set = 'again'").fetchone()[0]
    con.close()
    assert n == 5 and sets == 1


def test_slices_named_by_png_file_are_the_same_slices(small_catalog, model):
    """One query convention: slice_id or png_file name the same catalog slices."""
    by_id = query_slice_rows(small_catalog, "SELECT slice_id FROM slices ORDER BY slice_id LIMIT 3")
    files = ", ".join(f"'{r['png_file']}'" for r in by_id)
    by_file = query_slice_rows(small_catalog, f"SELECT png_file FROM slices WHERE png_file IN ({files})")
    assert by_file == by_id and all(r["series_id"] and r["exam_id"] for r in by_id)


def test_query_without_slice_id_is_refused(small_catalog, model):
    with pytest.raises(ValueError, match="slice_id"):
        extract_features(small_catalog, "SELECT series_id FROM slices", model, "bad")
    with pytest.raises(ValueError, match="not in the catalog"):
        extract_features(small_catalog, "SELECT 'nope' AS slice_id", model, "bad")
    with pytest.raises(ValueError, match="feature set name"):
        extract_features(small_catalog, QUERY, model, "../escape")


def test_probe_on_stored_features_equals_probe_on_fresh_embedding(small_catalog, model):
    """Probing reads a stored feature set: the same vectors, so the same probe, as embedding anew."""
    from mrifoundry.tasks.evaluation.evaluate import linear_probe_eval
    query = "SELECT slice_id, patient_id, orientation AS label FROM training_slices"
    extract_features(small_catalog, query, model, "probe-store", batch_size=8)
    kw = dict(model_label="random", weights_sha="random", query=query, epochs=15, seed=0)
    fresh = linear_probe_eval(small_catalog, model, eval_id="probe-fresh", **kw)
    stored = linear_probe_eval(small_catalog, model, eval_id="probe-stored", feature_set="probe-store", **kw)
    assert stored["n_test"] == fresh["n_test"] > 0 and stored["classes"] == fresh["classes"]
    assert stored["accuracy"] == pytest.approx(fresh["accuracy"], abs=1e-9)
    with pytest.raises(ValueError, match="not in feature set"):
        extract_features(small_catalog, "SELECT slice_id FROM slices ORDER BY slice_id LIMIT 2", model, "probe-part")
        linear_probe_eval(small_catalog, model, eval_id="probe-missing", feature_set="probe-part", **kw)
