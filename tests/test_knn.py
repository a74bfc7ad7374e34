"""k-nearest-neighbour label accuracy (mvae.evaluation.knn), shared by the tutorial and the
benchmark against other methods: predictions against a plain loop over neighbours, stratified
folds, and grouped folds that never split a group."""

from __future__ import annotations

import numpy as np
import pytest

from mvae.errors import InputError
from mvae.evaluation.knn import (grouped_stratified_folds, knn_cv_accuracy, knn_predict,
                                 stratified_folds)


def test_knn_cv_matches_a_brute_force_reference():
    rng = np.random.default_rng(3)
    x = np.vstack([rng.normal(0, 1, (20, 2)), rng.normal(4, 1, (20, 2))])
    y = np.array(["a"] * 20 + ["b"] * 20)
    # two well-separated clusters: leave-out accuracy is (nearly) perfect
    acc = knn_cv_accuracy(x, y, k=5, n_folds=5, n_repeats=3, seed=0)
    assert acc.min() >= 0.95
    # folds are stratified: each fold holds 4 of each class
    folds = stratified_folds(y, 5, np.random.default_rng(0))
    for f in range(5):
        assert (y[folds == f] == "a").sum() == 4 and (y[folds == f] == "b").sum() == 4
    # prediction agrees with a plain loop over neighbours
    test = rng.normal(2, 2, (15, 2))
    got = knn_predict(x, y, test, 7)
    for t, g in zip(test, got):
        order = np.argsort(((x - t) ** 2).sum(1), kind="stable")[:7]
        labels, counts = np.unique(y[order], return_counts=True)
        winners = set(labels[counts == counts.max()])
        want = next(y[j] for j in order if y[j] in winners)
        assert g == want


def _hand_made():
    """12 subjects, 3 to 6 samples each; a subject's label mostly constant, subject 'k' mixed."""
    groups, labels = [], []
    spec = {"a": ("x", 3), "b": ("x", 4), "c": ("x", 5), "d": ("x", 3), "e": ("y", 6),
            "f": ("y", 3), "g": ("y", 4), "h": ("y", 3), "i": ("z", 5), "j": ("z", 4),
            "k": ("z", 3), "l": ("x", 4)}
    for g, (lab, n) in spec.items():
        groups += [g] * n
        labels += [lab] * n
    labels[-1] = "y"  # subject 'l' has one sample with another label
    return np.array(labels), np.array(groups)


@pytest.mark.parametrize("seed", range(5))
def test_grouped_folds_never_split_a_group(seed):
    y, groups = _hand_made()
    order = np.random.default_rng(seed).permutation(len(y))  # samples in any order
    y, groups = y[order], groups[order]
    folds = grouped_stratified_folds(y, groups, 3, np.random.default_rng(seed))
    assert folds.shape == y.shape and set(folds) == {0, 1, 2}
    for g in np.unique(groups):
        assert len(set(folds[groups == g])) == 1, g
    # classes are spread: every class (4 or 5 subjects) reaches at least 2 of the 3 folds
    for cls in np.unique(y):
        assert len(set(folds[y == cls])) >= 2, cls


def test_grouped_folds_are_balanced_by_class_on_equal_groups():
    # 10 subjects of 2 samples per class, 5 folds: exactly 2 subjects of each class per fold
    y = np.repeat(["p", "q"], 20)
    groups = np.repeat(np.arange(20), 2)
    folds = grouped_stratified_folds(y, groups, 5, np.random.default_rng(0))
    for f in range(5):
        assert (y[folds == f] == "p").sum() == 4 and (y[folds == f] == "q").sum() == 4


def test_grouped_cv_keeps_a_subject_out_of_its_own_neighbours():
    # each subject's samples are near-duplicates of one another and its label is random: with
    # ungrouped folds a sample's nearest neighbours are its own subject (accuracy ~1); with
    # grouped folds they are other subjects, whose labels carry no information (accuracy ~1/2)
    rng = np.random.default_rng(0)
    n_subjects, per = 40, 5
    centres = rng.normal(0, 10, (n_subjects, 3))
    x = np.repeat(centres, per, axis=0) + rng.normal(0, 0.01, (n_subjects * per, 3))
    subject_label = rng.permutation(np.repeat(["u", "v"], n_subjects // 2))
    y = np.repeat(subject_label, per)
    groups = np.repeat(np.arange(n_subjects), per)
    plain = knn_cv_accuracy(x, y, k=3, n_folds=5, n_repeats=3, seed=0)
    grouped = knn_cv_accuracy(x, y, k=3, n_folds=5, n_repeats=3, seed=0, groups=groups)
    assert plain.min() >= 0.95
    assert grouped.max() <= 0.8


def test_grouped_folds_reject_too_few_groups_or_mismatched_lengths():
    with pytest.raises(InputError, match="2 groups cannot fill 3 folds"):
        grouped_stratified_folds(np.array(["a", "b"]), np.array([1, 2]), 3,
                                 np.random.default_rng(0))
    with pytest.raises(InputError, match="of one length"):
        grouped_stratified_folds(np.array(["a", "b"]), np.array([1, 2, 3]), 2,
                                 np.random.default_rng(0))
