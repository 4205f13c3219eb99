"""mrifoundry.tasks.evaluation.probing: separable vs random labels, confusion matrix, patient split, PNG."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from mrifoundry.tasks.evaluation.probing import ProbeResult, patient_split, plot_confusion, train_linear_probe

EPOCHS = 30  # enough for these small problems; keeps the file fast


def blobs(rng, n_per_class, centres, scale=1.0):
    X = np.concatenate([c + scale * rng.standard_normal((n_per_class, len(c))) for c in centres])
    y = np.repeat(np.array(["alpha", "beta", "gamma"][: len(centres)]), n_per_class)
    return X, y


def test_separable_blobs_high_accuracy():
    rng = np.random.default_rng(0)
    d = 16
    centres = [np.eye(d)[i] * 6 for i in range(3)]
    Xtr, ytr = blobs(rng, 100, centres)
    Xte, yte = blobs(rng, 60, centres)
    res = train_linear_probe(Xtr, ytr, Xte, yte, epochs=EPOCHS, lr=1e-2, seed=0)
    assert res.accuracy >= 0.95 and res.balanced_accuracy >= 0.95
    assert res.class_names == ["alpha", "beta", "gamma"]
    assert len(res.train_loss) == EPOCHS and res.train_loss[-1] < res.train_loss[0]
    assert len(res.test_accuracy) == EPOCHS and res.best_accuracy >= res.accuracy


def test_random_labels_near_chance():
    # measured over data seeds 0-9 at these settings: accuracy 0.475-0.5625; 0.75 leaves margin
    rng = np.random.default_rng(1)
    X = rng.standard_normal((400, 32))
    y = rng.permutation(np.repeat([0, 1], 200))
    res = train_linear_probe(X[:240], y[:240], X[240:], y[240:], epochs=EPOCHS, seed=0)
    assert res.accuracy < 0.75
    assert res.balanced_accuracy < 0.75


def test_confusion_matches_sklearn_and_determinism():
    import torch
    threads = torch.get_num_threads()
    rng = np.random.default_rng(2)
    X = rng.standard_normal((150, 8))
    y = (X[:, 0] + 0.8 * rng.standard_normal(150) > 0).astype(int) + (X[:, 1] > 1)
    a = train_linear_probe(X[:100], y[:100], X[100:], y[100:], epochs=10, batch_size=32, seed=3)
    b = train_linear_probe(X[:100], y[:100], X[100:], y[100:], epochs=10, batch_size=32, seed=3)
    want = confusion_matrix(a.y_true, a.y_pred, labels=[0, 1, 2])
    assert isinstance(a.confusion, np.ndarray)
    np.testing.assert_array_equal(a.confusion, want)
    assert a.confusion.sum() == 50
    assert a.accuracy == pytest.approx(np.trace(want) / 50)
    np.testing.assert_array_equal(a.y_pred, b.y_pred)
    assert a.train_loss == b.train_loss
    assert torch.get_num_threads() == threads  # the 1-thread training setting is restored


def test_class_only_in_test_set_is_handled():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((40, 4))
    ytr, yte = np.array(["a", "b"] * 15), np.array(["a", "b", "c", "c"] * 2 + ["a", "b"])
    res = train_linear_probe(X[:30], ytr, X[30:], yte, epochs=3)
    assert res.class_names == ["a", "b", "c"] and res.confusion.shape == (3, 3)
    assert res.confusion[2].sum() == 4 and res.confusion[:, 2].sum() == 0


def test_patient_split_groups_and_reproducible():
    rng = np.random.default_rng(5)
    pids = rng.choice([f"P{i:02d}" for i in range(20)], size=300)
    tr, te = patient_split(pids, train_fraction=0.6, seed=7)
    assert set(pids[tr]).isdisjoint(pids[te])
    assert len(tr) + len(te) == len(pids) and len(np.union1d(tr, te)) == len(pids)
    assert len(set(pids[tr])) == round(0.6 * len(set(pids)))
    tr2, te2 = patient_split(pids, train_fraction=0.6, seed=7)
    np.testing.assert_array_equal(tr, tr2)
    np.testing.assert_array_equal(te, te2)
    # independent of sample order: the same patients end up in train
    perm = rng.permutation(len(pids))
    tr3, _ = patient_split(pids[perm], train_fraction=0.6, seed=7)
    assert set(pids[perm][tr3]) == set(pids[tr])
    assert set(pids[patient_split(pids, seed=8)[0]]) != set(pids[tr])


def test_patient_split_balances_labels_by_patient():
    """One label per patient (body part): every label with ≥ 2 patients lands on both sides,
    each split 60:40 on its own; without labels a 3-patient label can miss the train side."""
    rng = np.random.default_rng(11)
    per_label = {"knee": 10, "brain": 5, "spine": 3, "hand": 2, "foot": 1}
    pids, labels = [], []
    for lab, n in per_label.items():
        for k in range(n):
            m = int(rng.integers(3, 9))                     # slices of that patient
            pids += [f"{lab}-{k}"] * m
            labels += [lab] * m
    pids, labels = np.array(pids), np.array(labels)
    tr, te = patient_split(pids, seed=3, labels=labels)
    assert set(pids[tr]).isdisjoint(pids[te]) and len(tr) + len(te) == len(pids)
    for lab, n in per_label.items():
        n_tr = len(set(pids[tr][labels[tr] == lab]))
        expected = n if n == 1 else min(max(round(0.6 * n), 1), n - 1)
        assert n_tr == expected, lab
        assert len(set(pids[te][labels[te] == lab])) == n - expected, lab
    # independent of sample order, reproducible, seed-dependent
    perm = rng.permutation(len(pids))
    tr2, _ = patient_split(pids[perm], seed=3, labels=labels[perm])
    assert set(pids[perm][tr2]) == set(pids[tr])
    assert any(set(pids[patient_split(pids, seed=s, labels=labels)[0]]) != set(pids[tr]) for s in range(4, 8))
    # the unbalanced split, for contrast: some seed leaves a label with ≥ 2 patients on one side only
    def one_sided(s):
        a, b = patient_split(pids, seed=s)
        return any(lab not in set(labels[a]) or lab not in set(labels[b]) for lab, n in per_label.items() if n >= 2)
    assert any(one_sided(s) for s in range(20))


def test_patient_split_primary_label_and_all_single_patient_labels():
    # patient p1 has 3 × "a" and 2 × "b": its primary label is "a"; ties go to the smaller
    pids = ["p1"] * 5 + ["p2"] * 2 + ["p3", "p4"]
    labels = ["a", "a", "b", "a", "b", "b", "c", "c", "d"]
    tr, te = patient_split(pids, seed=0, labels=labels)   # groups: a={p1}, b/c tie→b={p2}, c={p3}, d={p4}
    assert len(te) > 0 and len(tr) > 0                    # every group is one patient: one still goes to test
    assert len(set(np.asarray(pids)[te])) == 1
    with pytest.raises(ValueError):
        patient_split(pids, labels=labels[:-1])


def test_patient_split_rejects_degenerate():
    with pytest.raises(ValueError):
        patient_split(["a", "a"])
    with pytest.raises(ValueError):
        patient_split(["a", "b"], train_fraction=1.0)
    tr, te = patient_split(["a", "b"], train_fraction=0.9)  # clipped: one patient each side
    assert len(tr) == 1 and len(te) == 1


def test_plot_confusion_writes_png(tmp_path):
    res = ProbeResult(accuracy=0.5, balanced_accuracy=0.5, confusion=np.array([[3, 1], [2, 4]]),
                      class_names=["neg", "pos"], train_loss=[1.0])
    out = plot_confusion(res, tmp_path / "sub" / "cm.png", "probe")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
