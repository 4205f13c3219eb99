"""Whole-volume embedding of catalog NIfTIs with 3D encoders, and the volume linear probe."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from mrifoundry.catalog.views import connect
from mrifoundry.models.encoders3d import build_encoder3d
from mrifoundry.models.zoo3d import VolumeZooModel
from mrifoundry.tasks.evaluation.evaluate import PROBE_QUERIES, linear_probe_eval
from mrifoundry.tasks.evaluation.volume_embed import embed_volumes, volume_cube


def _nifti(path, data):
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.eye(4)), str(path))
    return path


def test_cube_is_robust_min_max_and_resizes_the_whole_field_of_view(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(100.0, 20.0, (16, 16, 16))
    data[0, 0, 0] = 1e6                                   # an outlier the 99.5th percentile clips
    lo, hi = np.percentile(data, [0.5, 99.5])             # numpy, independent of MONAI
    expected = np.clip((data - lo) / (hi - lo), 0, 1)
    same = volume_cube(_nifti(tmp_path / "a.nii.gz", data), 16)
    assert same.shape == (1, 16, 16, 16)
    np.testing.assert_allclose(same[0].numpy(), expected, atol=1e-5)
    # a 40 x 24 x 32 volume, low half 0 and high half 1 along x: shrunk to 8^3, the halves stay
    halves = np.zeros((40, 24, 32))
    halves[20:] = 1.0
    cube = volume_cube(_nifti(tmp_path / "b.nii.gz", halves), 8)[0].numpy()
    assert cube.shape == (8, 8, 8) and cube.min() >= 0 and cube.max() <= 1
    # 40 → 8 is a 5-voxel box per output voxel: the halves stay exactly 0 and 1, borders included
    assert cube[:4].max() == 0 and cube[4:].min() == pytest.approx(1.0)
    # a 6^3 volume grows to 12^3: trilinear values stay within the source range, corners kept
    small = rng.uniform(0, 1, (6, 6, 6))
    grown = volume_cube(_nifti(tmp_path / "c.nii.gz", small), 12)[0].numpy()
    lo, hi = np.percentile(small, [0.5, 99.5])
    ref = np.clip((small - lo) / (hi - lo), 0, 1)
    assert grown.shape == (12, 12, 12) and ref.min() - 1e-6 <= grown.min() and grown.max() <= ref.max() + 1e-6
    assert grown[0, 0, 0] == pytest.approx(ref[0, 0, 0], abs=1e-5)   # align_corners=False: the corner voxel


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return VolumeZooModel("tiny", build_encoder3d("unet_tiny").eval(), roi=32)


def test_embed_volumes_of_the_catalog(volume_catalog, tiny_model):
    con = connect(volume_catalog)
    paths = [r[0] for r in con.execute("SELECT nifti_file FROM series WHERE nifti_file IS NOT NULL "
                                       "ORDER BY series_id").fetchall()]
    con.close()
    assert len(paths) >= 4
    seen = []
    X = embed_volumes(tiny_model, paths, batch_size=3, on_progress=lambda d, n, r: seen.append((d, n)))
    assert X.shape == (len(paths), tiny_model.embed_dim) and np.isfinite(X).all()
    assert seen[-1] == (len(paths), len(paths)) and len(seen) == -(-len(paths) // 3)
    one = tiny_model.pooled(volume_cube(paths[1], 32)[None]).numpy()[0]   # batching changes nothing
    np.testing.assert_allclose(X[1], one, rtol=1e-4, atol=1e-5)
    assert len({tuple(np.round(x, 4)) for x in X}) == len(paths)          # distinct volumes, distinct vectors


def test_volume_linear_probe_records_its_numbers(volume_catalog, tiny_model):
    res = linear_probe_eval(volume_catalog, tiny_model, eval_id="vprobe", model_label="tiny", weights_sha="random",
                            query=PROBE_QUERIES["volumes"], epochs=5)
    con = connect(volume_catalog)
    metrics = dict(con.execute("SELECT metric, value FROM evaluations WHERE eval_id = 'vprobe'").fetchall())
    details, n = con.execute("SELECT details, n FROM evaluations WHERE eval_id = 'vprobe' LIMIT 1").fetchone()
    per_patient = dict(con.execute("SELECT e.patient_id, COUNT(*) FROM series s JOIN exams e USING (exam_id) "
                                   "WHERE s.nifti_file IS NOT NULL GROUP BY 1").fetchall())
    con.close()
    d = json.loads(details)
    confusion = np.array(d["confusion"])
    assert res["unit"] == d["unit"] == "volumes"
    # 3 patients: 2 train, 1 test — the test side is one patient's volumes, all of them
    assert n == res["n_test"] == confusion.sum() == d["n_test"] and n in per_patient.values()
    assert d["n_train"] + d["n_test"] == sum(per_patient.values())
    assert metrics["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    with pytest.raises(ValueError, match="nifti_file"):
        linear_probe_eval(volume_catalog, tiny_model, eval_id="bad", model_label="tiny", weights_sha="random",
                          query=PROBE_QUERIES["slices"])


def test_volume_feature_set_in_the_catalog(volume_catalog, tiny_model):
    from mrifoundry.tasks.evaluation.embedding import extract_features, load_features
    with pytest.raises(ValueError, match="series_id"):
        extract_features(volume_catalog, "SELECT slice_id FROM slices", tiny_model, "vol-tiny")
    con = connect(volume_catalog)
    expected = con.execute("SELECT series_id, nifti_file FROM series WHERE nifti_file IS NOT NULL "
                           "ORDER BY series_id").fetchall()
    con.close()
    row = extract_features(volume_catalog, "SELECT series_id FROM series", tiny_model, "vol-tiny")
    assert row["unit"] == "volume" and row["n_slices"] == len(expected) and row["dim"] == tiny_model.embed_dim
    ids, X = load_features(volume_catalog, "vol-tiny")
    assert ids == [s for s, _ in expected]
    np.testing.assert_allclose(X, embed_volumes(tiny_model, [p for _, p in expected]), rtol=1e-5, atol=1e-6)
    con = connect(volume_catalog)
    n, unit, slices = con.execute(
        "SELECT (SELECT COUNT(*) FROM volume_features v JOIN series s USING (series_id) WHERE feature_set = "
        "'vol-tiny'), (SELECT unit FROM feature_sets WHERE feature_set = 'vol-tiny'), "
        "(SELECT COUNT(*) FROM features WHERE feature_set = 'vol-tiny')").fetchone()
    con.close()
    assert (n, unit, slices) == (len(expected), "volume", 0)
    # re-extracted on fewer series: the set is replaced whole
    extract_features(volume_catalog, f"SELECT '{expected[0][0]}' AS series_id", tiny_model, "vol-tiny")
    assert load_features(volume_catalog, "vol-tiny")[0] == [expected[0][0]]
