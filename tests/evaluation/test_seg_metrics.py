"""mrifoundry.tasks.evaluation.metrics against an independent NumPy/SciPy implementation and hand-derived cases."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import binary_erosion, distance_transform_edt

from mrifoundry.tasks.evaluation.metrics import dice, dice_2d, dice_3d, nsd_3d, surface_dice


# ---- reference implementation (MRI-CORE's definitions, written from scratch) ----

def ref_dice(p: np.ndarray, t: np.ndarray) -> float:
    s = p.sum() + t.sum()
    return 1.0 if s == 0 else 2.0 * np.logical_and(p, t).sum() / s


def ref_nsd(p: np.ndarray, t: np.ndarray, tol: float, spacing=None) -> float:
    if not p.any() or not t.any():
        return 1.0 if p.any() == t.any() else 0.0
    sp = (1.0,) * p.ndim if spacing is None else spacing
    sp_, st = p ^ binary_erosion(p), t ^ binary_erosion(t)
    d_to_t = distance_transform_edt(~st, sampling=sp)
    d_to_p = distance_transform_edt(~sp_, sampling=sp)
    good = (d_to_t[sp_] <= tol).sum() + (d_to_p[st] <= tol).sum()
    return good / (sp_.sum() + st.sum())


def random_masks(rng, shape, empty_every=0):
    """Blobby random masks (smoothed noise), with some slices forced empty."""
    from scipy.ndimage import uniform_filter
    masks = []
    for _ in range(2):
        m = uniform_filter(rng.random(shape), size=3) > 0.55
        masks.append(m)
    p, t = masks
    if empty_every:
        p[::empty_every] = False            # empty pred
        t[1::empty_every] = False           # empty target
        p[2::empty_every] = t[2::empty_every] = False  # both empty
    return p, t


def square(shape, top, left, side, depth=None):
    m = np.zeros(shape, bool)
    if len(shape) == 2:
        m[top:top + side, left:left + side] = True
    else:
        m[1:1 + depth, top:top + side, left:left + side] = True
    return m


# ---- agreement with the reference ----

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dice_2d_and_3d_match_reference(seed):
    rng = np.random.default_rng(seed)
    p, t = random_masks(rng, (24, 20, 20), empty_every=5)
    assert (~p.any(axis=(1, 2)) & ~t.any(axis=(1, 2))).any()  # the both-empty case is present
    want_2d = np.mean([ref_dice(a, b) for a, b in zip(p, t)])
    assert dice_2d(p, t) == pytest.approx(want_2d, abs=1e-6)

    pids = rng.choice(["a", "b", "c", "d"], size=len(p))
    got = dice_3d(p, t, pids)
    assert list(got) == list(dict.fromkeys(pids))  # order of first appearance
    for pid, v in got.items():
        assert v == pytest.approx(ref_dice(p[pids == pid], t[pids == pid]), abs=1e-6)
    assert got.mean == pytest.approx(np.mean([ref_dice(p[pids == k], t[pids == k]) for k in got]),
                                     abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tol,spacing", [(1.0, None), (0.0, None), (2.0, None),
                                         (1.5, (3.0, 0.7, 1.2)), (1.0, (1.0, 0.5, 0.5))])
def test_nsd_3d_matches_reference(seed, tol, spacing):
    rng = np.random.default_rng(seed)
    p, t = random_masks(rng, (12, 24, 24))
    pids = np.repeat(["x", "y", "z"], 4)
    got = nsd_3d(p, t, pids, tolerance=tol, spacing=spacing)
    for pid, v in got.items():
        assert v == pytest.approx(ref_nsd(p[pids == pid], t[pids == pid], tol, spacing), abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_surface_dice_2d_matches_reference_including_border(seed):
    rng = np.random.default_rng(seed)
    p, t = random_masks(rng, (32, 32))
    p[0, :] = t[:, -1] = True  # masks touching the array border: outside counts as background
    for tol, sp in [(1.0, None), (0.0, None), (1.0, (0.6, 1.4))]:
        assert surface_dice(p, t, tol, sp) == pytest.approx(ref_nsd(p, t, tol, sp), abs=1e-6)


def test_empty_conventions():
    z = np.zeros((3, 8, 8), bool)
    m = z.copy()
    m[:, 2:5, 2:5] = True
    ids = ["p"] * 3
    for f in (dice, dice_2d):
        assert f(z, z) == 1.0
        assert f(m, z) == 0.0 and f(z, m) == 0.0
    assert dice_3d(z, z, ids) == {"p": 1.0}
    assert nsd_3d(z, z, ids) == {"p": 1.0}
    assert nsd_3d(m, z, ids) == {"p": 0.0} and nsd_3d(z, m, ids) == {"p": 0.0}


# ---- analytic cases ----

@pytest.mark.parametrize("k", [0, 1, 3, 7])
def test_shifted_squares_dice_exact(k):
    side = 10
    p, t = square((32, 32), 5, 5, side), square((32, 32), 5, 5 + k, side)
    assert dice(p, t) == pytest.approx(1 - k / side, abs=1e-7)
    assert dice_2d(p[None], t[None]) == pytest.approx(1 - k / side, abs=1e-7)


def test_identical_and_disjoint():
    p = square((16, 16), 2, 2, 5)
    q = square((16, 16), 9, 9, 5)
    assert dice_2d(p[None], p[None]) == 1.0
    assert dice_2d(p[None], q[None]) == 0.0
    assert nsd_3d(p[None], p[None], ["a"], tolerance=0.0)["a"] == 1.0
    assert nsd_3d(p[None], q[None], ["a"], tolerance=1.0)["a"] == 0.0


@pytest.mark.parametrize("s,depth", [(4, 1), (4, 3), (6, 3), (5, 5)])
def test_nsd_square_prism_shifted_by_one(s, depth):
    """An s×s square on ``depth`` consecutive slices vs the same shifted by 1 column.

    Surface = mask XOR 3D face-connected erosion, outside the array = background, so the
    first and last slices are entirely surface (s² voxels each) and each of the depth-2
    middle slices contributes its ring of 4s-4 voxels (a one-slice volume is all surface).

    Tolerance 1: every surface voxel of one prism has a surface voxel of the other at
    distance ≤ 1 (the shifted copy of itself, or the neighbouring column), so NSD = 1.

    Tolerance 0: a voxel counts only if it is a surface voxel of both. End slices share
    s(s-1) voxels each; a middle slice shares only the top and bottom ring rows over the
    s-1 common columns, 2(s-1) voxels (P's right column and Q's left column are interior to
    the other). Both directions are symmetric, so

        NSD = [2s(s-1) + 2(d-2)(s-1)] / [2s² + (d-2)(4s-4)]
            = (s-1)(s+d-2) / (s² + 2(d-2)(s-1))      (d ≥ 2),    (s-1)/s for d = 1.

    e.g. s=4, d=3 -> 15/22.
    """
    shape = (depth + 2, 16, 16)
    p = square(shape, 4, 4, s, depth)
    q = square(shape, 4, 5, s, depth)
    want0 = (s - 1) / s if depth == 1 else (s - 1) * (s + depth - 2) / (s * s + 2 * (depth - 2) * (s - 1))
    ids = ["pt"] * shape[0]
    assert nsd_3d(p, q, ids, tolerance=1.0)["pt"] == pytest.approx(1.0, abs=1e-7)
    assert nsd_3d(p, q, ids, tolerance=0.0)["pt"] == pytest.approx(want0, abs=1e-7)
    if (s, depth) == (4, 3):
        assert want0 == pytest.approx(15 / 22)


def test_nsd_tolerance_in_mm_with_spacing():
    """Shift of 1 column at 2 mm column spacing (3 mm on the other axes, so no other neighbour is
    within 2 mm): 2 mm tolerance gives 1.0; 1 mm accepts only shared voxels, as tolerance 0 does."""
    shape = (5, 16, 16)
    p, q = square(shape, 4, 4, 4, 3), square(shape, 4, 5, 4, 3)
    ids = ["pt"] * 5
    sp = (3.0, 3.0, 2.0)
    assert nsd_3d(p, q, ids, tolerance=2.0, spacing=sp)["pt"] == pytest.approx(1.0)
    assert nsd_3d(p, q, ids, tolerance=1.0, spacing=sp)["pt"] == pytest.approx(15 / 22)


def test_input_validation():
    a = np.zeros((2, 4, 4), bool)
    with pytest.raises(ValueError):
        dice_2d(a, a[:1])
    with pytest.raises(ValueError):
        dice_2d(a[0], a[0])
    with pytest.raises(ValueError):
        dice_3d(a, a, ["x"])
    with pytest.raises(ValueError):
        nsd_3d(a, a, ["x", "x"], spacing=(1.0, 1.0))
    with pytest.raises(ValueError):
        nsd_3d(a, a, ["x", "x"], tolerance=-1.0)
