"""HD95 and lesion-wise F1 (tasks/evaluation/metrics.py) against independent code: HD95 by brute force over
surface voxels (scipy cdist, np.percentile), lesion counts on planted components counted by hand."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import binary_erosion
from scipy.spatial.distance import cdist

from mrifoundry.tasks.evaluation.metrics import field_diagonal, hd95, lesion_counts, lesion_f1
from mrifoundry.tasks.evaluation.seg3d_protocol import case_metrics

SHAPE = (24, 26, 20)


def brute_hd95(a: np.ndarray, b: np.ndarray, spacing) -> float:
    """max over both directions of the 95th percentile of surface-to-nearest-surface distances,
    surface = mask minus its erosion (face connectivity), everything outside the array background."""
    def surface(m):
        padded = np.pad(m, 1)
        return np.argwhere(padded & ~binary_erosion(padded)) * np.asarray(spacing, float)
    d = cdist(surface(a), surface(b))
    return float(max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95)))


def cube(lo, size) -> np.ndarray:
    m = np.zeros(SHAPE, bool)
    m[tuple(slice(a, a + s) for a, s in zip(lo, size))] = True
    return m


def ball(centre, radius) -> np.ndarray:
    g = np.indices(SHAPE)
    return ((g - np.asarray(centre)[:, None, None, None]) ** 2).sum(0) <= radius ** 2


@pytest.mark.parametrize("a, b, spacing", [
    (cube((4, 5, 3), (8, 7, 6)), cube((6, 5, 4), (8, 7, 6)), (1.0, 1.0, 1.0)),     # known offset (2, 0, 1)
    (cube((4, 5, 3), (8, 7, 6)), cube((7, 9, 3), (6, 8, 9)), (1.0, 1.0, 2.5)),     # anisotropic
    (ball((12, 13, 10), 6), ball((14, 11, 9), 4), (0.8, 1.2, 1.5)),
    (ball((12, 13, 10), 5), cube((3, 3, 3), (5, 5, 5)), (1.0, 0.7, 2.0)),          # far apart
])
def test_hd95_equals_a_brute_force_surface_distance(a, b, spacing):
    assert hd95(a, b, spacing) == pytest.approx(brute_hd95(a, b, spacing), rel=1e-5)
    assert hd95(b, a, spacing) == pytest.approx(hd95(a, b, spacing), rel=1e-6)   # symmetric
    assert hd95(a, a, spacing) == 0.0


def test_hd95_of_single_voxels_is_their_distance_in_mm():
    a, b = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    a[5, 5, 5], b[8, 9, 5] = True, True
    assert hd95(a, b) == pytest.approx(5.0)                        # (3, 4, 0) voxels
    assert hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(np.hypot(6, 4))


def test_hd95_with_empty_masks():
    empty, some = np.zeros(SHAPE, bool), cube((4, 4, 4), (3, 3, 3))
    assert hd95(empty, empty, (1, 1, 2)) == 0.0
    diag = np.sqrt(24 ** 2 + 26 ** 2 + 40 ** 2)                    # 24 × 26 × 20 voxels of 1 × 1 × 2 mm
    assert field_diagonal(SHAPE, (1, 1, 2)) == pytest.approx(diag)
    assert hd95(some, empty, (1, 1, 2)) == pytest.approx(diag) == hd95(empty, some, (1, 1, 2))
    assert field_diagonal((240, 240, 155), 1.0) == pytest.approx(373.13, abs=0.01)   # BraTS's value


def planted() -> tuple[np.ndarray, np.ndarray]:
    """Truth: lesions A, B, C and D (D two voxels touching at a corner: one lesion at 26-connectivity).
    Prediction: P1 overlaps A by one voxel; P2 one slab over B and C; P3, P4 in empty space; D missed.
    So TP = 3 (A, B, C, counted on the truth's side), FN = 1 (D), FP = 2 (P3, P4)."""
    t, p = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    t[2:5, 2:5, 2:5] = True                                        # A
    t[10:13, 2:5, 2:5] = True                                      # B
    t[10:12, 8:10, 2:4] = True                                     # C
    t[18, 18, 15] = t[19, 19, 16] = True                           # D: corner contact only
    p[4:7, 4:7, 4:7] = True                                        # P1: shares voxel (4, 4, 4) with A
    p[9:14, 3:9, 3] = True                                         # P2: over B and C
    p[2:4, 20:23, 10:12] = True                                    # P3
    p[20:22, 2:4, 17:19] = True                                    # P4
    return p, t


def test_lesion_counts_on_planted_components():
    p, t = planted()
    assert lesion_counts(p, t) == {"tp": 3, "fp": 2, "fn": 1, "n_target": 4, "n_pred": 4}
    assert lesion_f1(p, t) == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    # two predicted pieces on one lesion: one TP, no FP
    two = np.zeros(SHAPE, bool)
    two[2, 2:5, 2:5] = two[4, 2:5, 2:5] = True
    assert lesion_counts(two, t & (np.indices(SHAPE)[0] < 6)) == {"tp": 1, "fp": 0, "fn": 0, "n_target": 1,
                                                                    "n_pred": 2}


def test_lesion_f1_with_empty_masks():
    empty = np.zeros(SHAPE, bool)
    p, t = planted()
    assert lesion_f1(empty, empty) == 1.0
    assert lesion_counts(p, empty)["fp"] == 4 and lesion_f1(p, empty) == 0.0
    assert lesion_counts(empty, t)["fn"] == 4 and lesion_f1(empty, t) == 0.0


def test_case_metrics_carry_hd95_and_lesion_f1_per_label_and_their_means():
    p, t = planted()
    pred = np.where(p, 2, 0) + np.where(cube((15, 15, 2), (3, 3, 3)), 5, 0)
    target = np.where(t, 2, 0) + np.where(cube((16, 15, 2), (3, 3, 3)), 5, 0)
    got = case_metrics(pred, target, [2, 5], (1.0, 1.0, 2.0), 1.0)
    assert got["hd95_2"] == pytest.approx(brute_hd95(p, t, (1, 1, 2)), rel=1e-5)
    assert got["hd95_5"] == pytest.approx(brute_hd95(pred == 5, target == 5, (1, 1, 2)), rel=1e-5)
    assert got["lesion_f1_2"] == pytest.approx(6 / 9) and got["lesion_f1_5"] == 1.0
    assert got["hd95_mean"] == pytest.approx((got["hd95_2"] + got["hd95_5"]) / 2)
    assert got["lesion_f1_mean"] == pytest.approx((6 / 9 + 1) / 2)
