r"""Label accuracy of an embedding: k-nearest-neighbour cross-validation, numpy only.

One evaluation shared by the tutorial (docs/tutorial.md) and the benchmarks against other methods
(docs/benchmarks.md), so that every embedding is judged alike:

- :func:`stratified_folds` -- seeded folds, every class spread evenly over them;
- :func:`grouped_stratified_folds` -- the same, but all samples of a group (a subject sampled
  repeatedly) fall in one fold, so no subject is in both the training and the test part;
- :func:`knn_predict` -- majority vote among the k nearest training samples (Euclidean), ties
  going to the tied class with the nearest neighbour;
- :func:`knn_cv_accuracy` -- accuracy of :func:`knn_predict` over the folds, for each of several
  seeded fold assignments.
"""

from __future__ import annotations

import numpy as np

from mvae.errors import InputError

__all__ = ["grouped_stratified_folds", "knn_cv_accuracy", "knn_predict", "stratified_folds"]


def stratified_folds(labels: np.ndarray, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold index (0..n_folds-1) per sample; every class is spread evenly over the folds.

    Parameters
    ----------
    labels : ndarray, shape (n,)
    n_folds : int
    rng : numpy.random.Generator
        Shuffles the samples within each class.

    Returns
    -------
    ndarray of int64, shape (n,)
    """
    labels = np.asarray(labels)
    folds = np.empty(len(labels), dtype=np.int64)
    start = 0
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        folds[idx] = (np.arange(len(idx)) + start) % n_folds  # continue where the last class ended
        start += len(idx)
    return folds


def grouped_stratified_folds(labels: np.ndarray, groups: np.ndarray, n_folds: int,
                             rng: np.random.Generator) -> np.ndarray:
    """Fold index per sample with whole groups in one fold, classes spread as evenly as groups allow.

    Each group is filed under its most frequent label (ties: the smallest label). Within each
    class, in a seeded random order, largest groups first, every group goes to the fold that
    holds the fewest samples of that class so far (ties: the fewest samples in all, then the
    lowest index) -- the greedy balancing of scikit-learn's ``StratifiedGroupKFold``, simplified
    to one class per group.

    Parameters
    ----------
    labels : ndarray, shape (n,)
    groups : ndarray, shape (n,)
        Group of each sample (e.g. the subject); samples of one group never share a fold with
        another fold's samples of that group.
    n_folds : int
    rng : numpy.random.Generator
        Orders groups of equal size within a class.

    Returns
    -------
    ndarray of int64, shape (n,)

    Raises
    ------
    InputError
        When ``labels`` and ``groups`` differ in length or there are fewer groups than folds.
    """
    labels, groups = np.asarray(labels), np.asarray(groups)
    if labels.shape != groups.shape or labels.ndim != 1:
        raise InputError(f"labels and groups must be 1-D and of one length; got {labels.shape} "
                         f"and {groups.shape}.")
    group_ids, group_of = np.unique(groups, return_inverse=True)
    if len(group_ids) < n_folds:
        raise InputError(f"{len(group_ids)} groups cannot fill {n_folds} folds.")
    classes, class_of = np.unique(labels, return_inverse=True)
    # counts[g, c]: samples of group g with label c
    counts = np.zeros((len(group_ids), len(classes)), dtype=np.int64)
    np.add.at(counts, (group_of, class_of), 1)
    group_class = counts.argmax(axis=1)  # first maximum: the smallest label wins a tie
    size = counts.sum(axis=1)
    per_class = np.zeros((n_folds, len(classes)), dtype=np.int64)
    total = np.zeros(n_folds, dtype=np.int64)
    fold_of_group = np.empty(len(group_ids), dtype=np.int64)
    for c in range(len(classes)):
        members = np.flatnonzero(group_class == c)
        members = members[rng.permutation(len(members))]
        members = members[np.argsort(-size[members], kind="stable")]  # largest first
        for g in members:
            f = np.lexsort((np.arange(n_folds), total, per_class[:, c]))[0]
            fold_of_group[g] = f
            per_class[f] += counts[g]
            total[f] += size[g]
    return fold_of_group[group_of]


def knn_predict(train_x, train_y, test_x, k: int) -> np.ndarray:
    """Majority vote of the k nearest training samples; ties go to the tied class seen first.

    Parameters
    ----------
    train_x : ndarray, shape (m, p)
    train_y : ndarray, shape (m,)
    test_x : ndarray, shape (t, p)
    k : int

    Returns
    -------
    ndarray, shape (t,)
    """
    # squared Euclidean distances, (t, m)
    d2 = (test_x**2).sum(1)[:, None] - 2.0 * test_x @ train_x.T + (train_x**2).sum(1)[None, :]
    nn = np.argsort(d2, axis=1, kind="stable")[:, :k]  # (t, k), nearest first
    neighbour_labels = train_y[nn]
    classes = np.unique(train_y)
    scores = np.empty((len(test_x), len(classes)))
    for c, cls in enumerate(classes):
        hit = neighbour_labels == cls  # (t, k)
        first = np.where(hit.any(1), hit.argmax(1), k)  # rank of the nearest neighbour of cls
        scores[:, c] = hit.sum(1) - first / k  # votes; first/k < 1 only breaks ties
    return classes[scores.argmax(1)]


def knn_cv_accuracy(x, y, *, k: int, n_folds: int, n_repeats: int, seed: int,
                    groups=None) -> np.ndarray:
    """Cross-validated kNN accuracy for each of ``n_repeats`` seeded stratified fold assignments.

    Parameters
    ----------
    x : array_like, shape (n, p)
        The embedding.
    y : array_like, shape (n,)
        Labels.
    k : int
        Neighbours that vote.
    n_folds : int
    n_repeats : int
        Fold assignments, drawn from ``numpy.random.default_rng([seed, r])``, r = 0, 1, ...
    seed : int
    groups : array_like, shape (n,), optional
        With groups (e.g. subjects), :func:`grouped_stratified_folds`: a group's samples are
        never split between the training and the test part. Without, :func:`stratified_folds`.

    Returns
    -------
    ndarray, shape (n_repeats,)
        Fraction of samples whose label the vote of their k nearest neighbours in the other
        folds gets right.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    out = np.empty(n_repeats)
    for r in range(n_repeats):
        rng = np.random.default_rng([seed, r])
        folds = (stratified_folds(y, n_folds, rng) if groups is None
                 else grouped_stratified_folds(y, np.asarray(groups), n_folds, rng))
        correct = 0
        for f in range(n_folds):
            test = folds == f
            correct += int((knn_predict(x[~test], y[~test], x[test], k) == y[test]).sum())
        out[r] = correct / len(y)
    return out
