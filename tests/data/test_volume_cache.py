"""Decoded-volume cache of the 3D trainers: same values hit or miss, stale entries, no cache dir."""
from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest

from mrifoundry.tasks.data.volume_cache import VolumeCache
from mrifoundry.tasks.data.volumes import VolumeDataset, load_volume


def _nifti(path, data, affine=None):
    aff = np.diag([1.0, 1.0, 2.0, 1.0]) if affine is None else affine
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), aff), str(path))
    return str(path)


@pytest.fixture
def rows(tmp_path):
    rng = np.random.default_rng(7)
    return [{"series_id": f"s{i}", "exam_id": "e", "nifti_file": _nifti(tmp_path / f"v{i}.nii.gz", rng.random(shape) * 900)}
            for i, shape in enumerate([(20, 22, 10), (9, 30, 14)])]


def test_miss_and_hit_return_the_same_float16_values(rows, tmp_path):
    cache = VolumeCache(tmp_path / "cache")
    ref, ref_aff = load_volume(rows[0]["nifti_file"])
    miss, miss_aff = cache.load(rows[0]["nifti_file"])
    data_file, affine_file = cache.files(rows[0]["nifti_file"])
    assert data_file.exists() and affine_file.exists()
    hit, hit_aff = cache.load(rows[0]["nifti_file"])
    assert isinstance(hit, np.memmap)                       # read by page, not decoded again
    assert miss.dtype == hit.dtype == np.float16
    assert np.array_equal(np.asarray(miss), np.asarray(hit))
    np.testing.assert_array_equal(miss_aff, ref_aff)
    np.testing.assert_array_equal(hit_aff, ref_aff)
    # float16 of values in [0, 1]: at most half an ulp at 1 (2**-11) from the float32 volume
    assert np.abs(np.asarray(hit, dtype=np.float32) - ref).max() <= 2 ** -11
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tmp")]


def test_crops_equal_with_a_cold_cache_a_warm_cache_and_float16_of_no_cache(rows, tmp_path):
    plain = VolumeDataset(rows, 16, seed=3, flip_prob=0.5)
    cached = VolumeDataset(rows, 16, seed=3, flip_prob=0.5, cache_dir=str(tmp_path / "c"))
    for i in range(len(rows)):
        expected = plain[i]["image"].numpy().astype(np.float16).astype(np.float32)
        cold = cached[i]["image"].numpy()
        warm = VolumeDataset(rows, 16, seed=3, flip_prob=0.5, cache_dir=str(tmp_path / "c"))[i]["image"].numpy()
        assert cold.dtype == np.float32 and cold.shape == (1, 16, 16, 16)
        assert np.array_equal(cold, warm)
        assert np.array_equal(cold, expected)


def test_a_rewritten_volume_gets_a_new_entry(rows, tmp_path):
    cache = VolumeCache(tmp_path / "cache")
    path = rows[0]["nifti_file"]
    first, _ = cache.load(path)
    old_file = cache.files(path)[0]
    _nifti(path, np.full((20, 22, 10), 5.0) + np.arange(10))   # re-converted: new contents
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache.files(path)[0] != old_file
    second, _ = cache.load(path)
    np.testing.assert_allclose(np.asarray(second, dtype=np.float32), load_volume(path)[0], atol=2 ** -11)
    assert not np.array_equal(np.asarray(first), np.asarray(second))


def test_a_damaged_entry_is_rebuilt(rows, tmp_path):
    cache = VolumeCache(tmp_path / "cache")
    path = rows[1]["nifti_file"]
    good, _ = cache.load(path)
    good = np.array(good)
    cache.files(path)[0].write_bytes(b"\x93NUMPY garbage")
    again, _ = cache.load(path)
    assert np.array_equal(np.asarray(again), good)
    assert np.array_equal(np.asarray(cache.load(path)[0]), good)   # and stored again


def test_an_unwritable_cache_reads_uncached(rows, tmp_path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    cache = VolumeCache(blocker / "cache")
    a, _ = cache.load(rows[0]["nifti_file"])
    b, _ = cache.load(rows[1]["nifti_file"])
    ref = load_volume(rows[0]["nifti_file"])[0].astype(np.float16)
    assert np.array_equal(a, ref) and b.shape == (9, 30, 14)
    warnings = [r for r in caplog.records if "volume cache" in r.getMessage()]
    assert len(warnings) == 1                                   # once per process, not per volume
