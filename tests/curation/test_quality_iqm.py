"""Image-quality metrics against NumPy written here, on synthetic volumes with planted masks,
known noise, a planted ghost, a dropped slab and clipping."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from mrifoundry.tasks.curation.quality.iqm import IQM_NAMES, iqms
from mrifoundry.tasks.curation.quality.masks import masks_of

SHAPE = (48, 40, 32)


def phantom(seed: int = 0, sigma: float = 4.0, air_sigma: float = 2.0):
    """A body of three intensity classes (60, 100, 140) in magnitude noise; returns (volume, classes)."""
    rng = np.random.default_rng(seed)
    classes = np.zeros(SHAPE, np.uint8)
    classes[8:40, 8:32, 4:28] = 1
    classes[12:36, 10:30, 8:24] = 2
    classes[16:32, 14:26, 10:22] = 3
    v = np.abs(rng.normal(0.0, air_sigma, SHAPE))                       # air: magnitude of complex noise
    for c, mu in ((1, 60.0), (2, 100.0), (3, 140.0)):
        m = classes == c
        v[m] = mu + rng.normal(0.0, sigma, int(m.sum()))
    return v, classes


def test_masks_find_the_planted_body_and_classes():
    v, classes = phantom()
    m = masks_of(v)
    assert np.array_equal(m.foreground, classes > 0)
    # multi-Otsu thresholds of unequal classes are not at the midpoints: a few tail voxels cross
    assert np.mean(m.classes[classes > 0] == classes[classes > 0]) > 0.999
    assert not (m.air & ndi.binary_dilation(classes > 0, iterations=2)).any() and m.air[0, 0, 0]


def test_metrics_equal_numpy_on_the_planted_masks():
    v, classes = phantom()
    m = masks_of(v)                                                   # checked against the plant above
    fg_m = classes > 0
    air_m = ~ndi.binary_dilation(fg_m, iterations=2)
    assert np.array_equal(m.air, air_m)
    fg, air, mid, bright = v[fg_m], v[air_m], v[m.classes == 2], v[m.classes == 3]
    n = fg.size
    mad = np.median(np.abs(air - np.median(air)))
    x = np.abs(v.ravel())
    b = np.sqrt((x ** 2).sum())
    want = {
        "snr": fg.mean() / (fg.std() * np.sqrt(n / (n - 1))),
        "snr_dietrich": fg.mean() / (1.4826 * mad * np.sqrt(2 / (4 - np.pi))),
        "cnr": abs(bright.mean() - mid.mean()) / np.sqrt(air.std() ** 2 + mid.std() ** 2 + bright.std() ** 2),
        "cjv": (bright.std() + mid.std()) / abs(bright.mean() - mid.mean()),
        "efc": np.sum(x / b * np.log((x + 1e-16) / b)) / (x.size / np.sqrt(x.size) * np.log(1 / np.sqrt(x.size))),
        "fber": np.median(fg ** 2) / np.median(air ** 2),
        "bright2max": np.median(bright) / np.percentile(fg, 99.95),
    }
    got = iqms(v)
    assert set(got) == set(IQM_NAMES)
    for k, w in want.items():
        assert got[k] == pytest.approx(w, rel=1e-9), k
    assert got["blank_slices"] == 0.0 and got["slice_jump"] < 0.6 and math.isnan(got["ghost_ratio"])
    assert got["cjv"] == pytest.approx(8 / 40, rel=0.1)               # σ 4 in both classes, 40 apart
    assert got["snr_dietrich"] > got["snr"]                            # the air is quieter than the body


def test_snr_follows_the_noise():
    low, _ = phantom(sigma=2.0)
    high, _ = phantom(sigma=8.0)
    assert iqms(low)["cnr"] > 2 * iqms(high)["cnr"] and iqms(low)["cjv"] < iqms(high)["cjv"] / 2


def test_a_planted_ghost_is_measured_along_the_phase_axis():
    v, classes = phantom()
    clean = iqms(v, pe_axis=1)["ghost_ratio"]
    ghost = v + 0.1 * np.roll(np.where(classes > 0, v, 0.0), SHAPE[1] // 2, axis=1)
    body = classes > 0
    region = np.roll(body, SHAPE[1] // 2, axis=1) & ~ndi.binary_dilation(body, iterations=2)   # in the air
    want = ghost[region].mean() / ghost[body].mean()
    got = iqms(ghost, pe_axis=1)["ghost_ratio"]
    assert got == pytest.approx(want, rel=1e-9) and got > 5 * clean


def test_a_dropped_slab_and_clipping():
    v, classes = phantom()
    dropped = v.copy()
    body = classes > 0
    dropped[:, :, 14:17] = np.where(body[:, :, 14:17], np.abs(np.random.default_rng(1).normal(0, 2, (48, 40, 3))),
                                    dropped[:, :, 14:17])
    got = iqms(dropped, axis=2)
    assert got["blank_slices"] == pytest.approx(3 / 24)               # body slices 4..27
    assert got["slice_jump"] > 0.8
    clipped = np.minimum(v, np.percentile(v[body], 95))
    assert iqms(clipped)["saturated_fraction"] == pytest.approx(0.05, abs=0.01)


def test_constant_volume_is_undefined_not_an_error():
    got = iqms(np.ones(SHAPE))
    assert all(math.isnan(got[k]) for k in ("snr", "cnr", "cjv", "ghost_ratio"))


def _qi1_numpy(v, air, z=10.0):
    """Mortamet's step 1 as MRIQC states it, written out again: robust z of the positive air voxels,
    threshold, 6-connected opening, share of the air."""
    pos = v[air & (v > 0)]
    loc = np.median(pos)
    spread = 1.4826 * np.median(np.abs(pos - loc))
    art = air & ((v - loc) / spread > z)
    art = ndi.binary_opening(art, structure=ndi.generate_binary_structure(3, 1)) & air
    return art.sum() / air.sum()


def test_qi1_counts_artefact_signal_in_the_air():
    v, classes = phantom()
    clean = iqms(v)["qi1"]
    streak = v.copy()
    streak[2:6, 2:38, 2:30] += 25.0                                  # a bright wrap-around band in the air
    m = masks_of(streak)
    got = iqms(streak, masks=m)["qi1"]
    assert got == pytest.approx(_qi1_numpy(streak, m.air), rel=1e-12)
    band = np.zeros(SHAPE, bool)
    band[2:6, 2:38, 2:30] = True
    assert got == pytest.approx((band & m.air).sum() / m.air.sum(), rel=0.1) and got > 0.05
    assert clean < 1e-3                                               # Rayleigh air: no 10-sigma voxels survive the opening
