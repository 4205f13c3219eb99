"""The quality record of a converted series: axes from orientation and phase encoding, the
strided sub-grid of large volumes, the 4D middle time point, the thumbnail's geometry."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from mrifoundry.tasks.curation.quality import series as q
from mrifoundry.tasks.curation.quality.iqm import iqms


def body(shape, seed=0, sigma=6.0):
    """A bright box with an inner brighter box in Rayleigh air: any size."""
    rng = np.random.default_rng(seed)
    v = np.abs(rng.normal(0, 3.0, shape) + 1j * rng.normal(0, 3.0, shape))
    sl = tuple(slice(s // 5, s - s // 5) for s in shape)
    inner = tuple(slice(s // 3, s - s // 3) for s in shape)
    v[sl] = 200 + rng.normal(0, sigma, v[sl].shape)
    v[inner] = 300 + rng.normal(0, sigma, v[inner].shape)
    return v.astype(np.float32)


def test_axes_from_orientation_and_phase_encoding():
    assert [q.slab_axis(o) for o in ("sagittal", "coronal", "axial", "oblique", None)] == [0, 1, 2, 2, 2]
    assert [q.pe_axis(d) for d in ("i", "j-", "k", "", None, "x")] == [0, 1, 2, None, None, None]


def test_in_plane_stride_keeps_every_slice_and_the_budget():
    assert q.in_plane_stride((64, 64, 32), 2) == 1
    shape = (300, 300, 120)
    k = q.in_plane_stride(shape, 2)
    assert 300 * 300 * 120 / k ** 2 <= q.VOXEL_BUDGET < 300 * 300 * 120 / (k - 1) ** 2


def test_a_large_volume_is_measured_on_the_sub_grid_with_its_noise_unchanged():
    v = body((240, 240, 40))
    rec = q.series_quality(v, (1, 1, 1), "axial", None)
    k = rec["stride"]
    assert k == q.in_plane_stride(v.shape, 2) > 1
    sub = iqms(v[::k, ::k, :], axis=2)
    full = iqms(v, axis=2)
    for m in ("snr", "cnr", "cjv", "snr_dietrich", "fber"):
        assert rec[m] == pytest.approx(sub[m], rel=1e-5), m            # exactly the sub-grid's metrics
        assert rec[m] == pytest.approx(full[m], rel=0.1), m            # and close to the whole volume's
    assert rec["blank_slices"] == 0.0 and rec["iqm_version"] == q.IQM_VERSION


def test_4d_takes_the_middle_time_point_and_nan_becomes_null():
    frames = np.stack([body((40, 40, 20), seed=s, sigma=sd) for s, sd in ((0, 2.0), (1, 20.0), (2, 2.0))], axis=3)
    rec = q.series_quality(frames, (1, 1, 1, 2), "axial", None)
    assert rec["snr"] == pytest.approx(iqms(frames[..., 1])["snr"], rel=1e-6)
    assert rec["ghost_ratio"] is None and rec["pe_axis"] is None       # no phase-encoding direction: no ghost ratio
    assert all(v is None or math.isfinite(v) for v in rec.values() if isinstance(v, float))


def test_thumbnail_has_three_square_panels_at_the_physical_aspect(tmp_path):
    v = np.zeros((60, 30, 15), np.float32)                             # 60 × 60 × 60 mm at zooms 1, 2, 4
    v[10:50, 5:25, 3:12] = 100.0
    out = q.three_plane_thumbnail(v, (1.0, 2.0, 4.0), tmp_path / "t.png")
    img = np.asarray(Image.open(out))
    assert img.shape == (q.THUMB, 3 * q.THUMB + 8)
    axial = img[:, 2 * q.THUMB + 8:]
    rows, cols = np.nonzero(axial)
    # the box spans 40 mm (x) by 40 mm (y) of the 60 mm square: equal sides on screen
    assert (cols.max() - cols.min()) == pytest.approx(rows.max() - rows.min(), abs=3)
    assert (cols.max() - cols.min()) == pytest.approx(q.THUMB * 40 / 60, abs=4)
    assert Image.open(out).info.get("dpi") is None and not Image.open(out).text   # no metadata chunks
