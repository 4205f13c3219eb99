"""Volume crops for the 3D recipes: geometry, pairing, determinism, metadata targets."""
from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest

from mrifoundry.tasks.pretraining.volumes import effective_batch_size
from mrifoundry.tasks.data.volumes import (VolumeDataset, _crop_affine, body_part_classes, crop_box, load_volume, meta_vector,
                                  query_volumes, select_pairs)


def _nifti(path, data, affine):
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), str(path))
    return str(path)


@pytest.fixture
def exam(tmp_path):
    """Two series of one exam in the same world frame: B is A's grid shifted by whole voxels
    with its first two axes swapped, so every B voxel centre is an A voxel centre."""
    rng = np.random.default_rng(0)
    a = rng.random((20, 24, 12)).astype(np.float32)
    aff_a = np.diag([1.0, 1.0, 2.0, 1.0])
    aff_a[:3, 3] = [-10.0, 5.0, 3.0]
    # B[i, j, k] = A[j + 2, i + 3, k]: world of B voxel (i, j, k) = world of A voxel (j + 2, i + 3, k)
    b = np.transpose(a, (1, 0, 2))[3:, 2:, :]
    perm = np.array([[0, 1, 0, 2], [1, 0, 0, 3], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    aff_b = aff_a @ perm
    rows = [{"series_id": "sa", "exam_id": "e1", "nifti_file": _nifti(tmp_path / "a.nii.gz", a, aff_a),
             "repetition_time": 600.0, "echo_time": 11.0, "flip_angle": 90.0, "body_part": "brain"},
            {"series_id": "sb", "exam_id": "e1", "nifti_file": _nifti(tmp_path / "b.nii.gz", b, aff_b),
             "repetition_time": None, "echo_time": 95.0, "flip_angle": float("nan"), "body_part": "brain"},
            {"series_id": "sc", "exam_id": "e2", "nifti_file": _nifti(tmp_path / "c.nii.gz", a[:8], aff_a),
             "repetition_time": 5000.0, "echo_time": 80.0, "flip_angle": 150.0, "body_part": "knee"}]
    return rows


def test_load_volume_robust_min_max(exam):
    vol, _ = load_volume(exam[0]["nifti_file"])
    raw = np.asarray(nib.load(exam[0]["nifti_file"]).dataobj, dtype=np.float32)
    lo, hi = np.percentile(raw, [0.5, 99.5])
    np.testing.assert_allclose(vol, np.clip((raw - lo) / (hi - lo), 0, 1), atol=1e-5)


def test_crop_matches_source_and_its_affine(exam):
    vol, affine = load_volume(exam[0]["nifti_file"])
    roi = 16                                   # larger than the 12-voxel third axis: padded there
    starts, pads = crop_box(vol.shape, roi, np.random.default_rng(3))
    assert pads == [0, 0, 2]
    ds = VolumeDataset(exam, roi, seed=0, flip_prob=0.0)
    sample = ds[0]
    crop = sample["image"][0].numpy()
    starts, pads = crop_box(vol.shape, roi, np.random.default_rng([0, 0, 0]))
    caff = _crop_affine(affine, starts, pads)
    for idx in [(0, 0, 2), (5, 7, 9), (15, 15, 13)]:
        src = np.round(np.linalg.inv(affine) @ caff @ np.array([*idx, 1.0]))[:3].astype(int)
        assert crop[idx] == pytest.approx(vol[tuple(src)])
    assert np.all(crop[:, :, :2] == 0) and np.all(crop[:, :, 14:] == 0)   # the padding


def test_partner_series_lands_on_the_same_world_grid(exam):
    ds = VolumeDataset(exam[:2], 8, seed=1, flip_prob=0.0, pairs=select_pairs(exam[:2]),
                       body_parts=body_part_classes(exam))
    vol_a, aff_a = load_volume(exam[0]["nifti_file"])
    vol_b, aff_b = load_volume(exam[1]["nifti_file"])
    sample = ds[0]
    starts, pads = crop_box(vol_a.shape, 8, np.random.default_rng([1, 0, 0]))
    caff = _crop_affine(aff_a, starts, pads)
    img2 = sample["image2"][0].numpy()
    checked = 0
    for idx in np.ndindex(8, 8, 8):
        vb = np.linalg.inv(aff_b) @ caff @ np.array([*idx, 1.0])
        ib = np.round(vb[:3]).astype(int)
        if np.all(ib >= 0) and np.all(ib < vol_b.shape):
            assert img2[idx] == pytest.approx(vol_b[tuple(ib)], abs=1e-5)
            checked += 1
        else:
            assert img2[idx] == 0.0                # outside B's field of view
    assert checked > 100
    assert sample["body_part"].item() == body_part_classes(exam).index("brain")
    np.testing.assert_allclose(sample["meta"].numpy(), [math.log(600), math.log(11), 1.0], rtol=1e-6)
    m2 = sample["meta2"].numpy()
    assert math.isnan(m2[0]) and m2[1] == pytest.approx(math.log(95)) and math.isnan(m2[2])


def test_draws_depend_on_seed_epoch_and_index_only(exam):
    ds = VolumeDataset(exam, 8, seed=5, flip_prob=0.5)
    a = ds[2]["image"]
    assert np.array_equal(a, VolumeDataset(exam, 8, seed=5, flip_prob=0.5)[2]["image"])
    ds.set_epoch(1)
    assert not np.array_equal(a, ds[2]["image"])


def test_pairs_body_parts_and_meta(exam):
    assert select_pairs(exam) == [[1], [0], []]
    assert body_part_classes(exam) == ["brain", "knee"]
    assert np.all(np.isnan(meta_vector({})))
    assert math.isnan(meta_vector({"repetition_time": 0.0})[0])     # log of 0 is not a target


def test_batch_size_never_leaves_a_single_item_batch():
    for n in range(2, 40):
        for world in (1, 2, 3):
            if n < 2 * world:
                with pytest.raises(ValueError):
                    effective_batch_size(n, 2, world)
                continue
            bs = effective_batch_size(n, 2, world)
            steps = math.ceil(n / (bs * world))
            assert n // (steps * world) >= 2, (n, world, bs)
    assert effective_batch_size(100, 8, 1) == 8


def test_query_volumes_needs_nifti_file(volume_catalog):
    rows = query_volumes(volume_catalog, "SELECT series_id, nifti_file, exam_id FROM series WHERE nifti_path IS NOT "
                                         "NULL")
    assert len(rows) >= 6 and all(r["nifti_file"].startswith("/") for r in rows)
    assert [r["series_id"] for r in rows] == sorted(r["series_id"] for r in rows)
    with pytest.raises(ValueError, match="nifti_file"):
        query_volumes(volume_catalog, "SELECT series_id FROM series")


@pytest.mark.parametrize("shift", [(0.0, 0.0, 0.0), (7.3, -4.1, 2.6), (-10.0, 0.0, 0.0), (500.0, 0.0, 0.0)])
def test_partner_resampling_reads_a_box_but_equals_the_whole_volume(shift):
    """_resample_to slices the partner to the box the crop maps into; the result must equal
    nibabel's resampling of the whole volume, also for an oblique, partly or wholly outside crop."""
    from nibabel.processing import resample_from_to

    from mrifoundry.tasks.data.volumes import _resample_to
    rng = np.random.default_rng(2)
    data = rng.random((30, 26, 18)).astype(np.float32)
    src_affine = np.diag([1.0, 1.2, 2.0, 1.0])
    src_affine[:3, 3] = [-5.0, 3.0, 1.0]
    c, s = np.cos(0.4), np.sin(0.4)
    crop_affine = np.eye(4)
    crop_affine[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1.5]]
    crop_affine[:3, 3] = np.array([2.0, 4.0, 3.0]) + shift
    whole = resample_from_to(nib.Nifti1Image(data, src_affine), ((12, 12, 12), crop_affine), order=1,
                             mode="constant", cval=0.0)
    got = _resample_to(data, src_affine, (12, 12, 12), crop_affine)
    np.testing.assert_allclose(got, np.asarray(whole.dataobj), atol=1e-6)
    assert (got != 0).any() == (shift[0] < 100)
