r"""Compositions: closure, log-ratios and isometric log-ratio (ILR) bases.

A *composition* is a vector of :math:`D` non-negative parts of which only the
ratios carry information: a microbiome sample sequenced to 10,000 or to 50,000
reads says the same thing about its taxa once the counts are divided by the
depth. :func:`closure` does that division; every function here is invariant to
it (Aitchison 1986).

**The zero problem.** Log-ratios need positive parts, but count tables are
mostly zeros (95-98 % in 16S tables). The usual remedy adds a *pseudocount*
:math:`c` before taking logs, :func:`log_pseudocount` and
:func:`clr_pseudocount`. It biases small counts towards each other; the mvae
encoder sees :math:`\log(x + c)` while its multinomial decoder never does.

**clr.** The centred log-ratio :math:`\operatorname{clr}(x) = \log x -
\overline{\log x}` maps a composition to a vector that sums to zero
(:func:`clr`, :func:`center`). It is redundant: :math:`D` numbers on a
:math:`(D-1)`-dimensional hyperplane.

**ilr.** An orthonormal basis :math:`\Psi \in \mathbb{R}^{D\times(D-1)}` of that
hyperplane (:math:`\Psi^\top\Psi = I`, :math:`\Psi^\top 1 = 0`,
:math:`\Psi\Psi^\top = I - 11^\top/D`) gives the isometric log-ratio
coordinates :math:`\operatorname{ilr}(x) = \Psi^\top \operatorname{clr}(x)`
(Egozcue et al. 2003). A :class:`Basis` does this in :math:`O(D)` time without
ever forming the dense :math:`\Psi` (at :math:`D = 10^5` it would take 80 GB):

* :class:`HelmertBasis` -- the default, the Gram-Schmidt (Helmert) basis that
  ``skbio.stats.composition.ilr`` uses when no basis is given;
* :class:`TreeBasis` -- *balances* of a bifurcating tree (a phylogeny, or a
  balanced tree): coordinate :math:`n` compares the geometric means of the two
  clades below internal node :math:`n`, exactly as
  ``skbio.stats.composition.tree_basis`` builds them.

Every function takes a numpy array or a torch tensor, works along the last
axis, returns the same kind and never modifies its input. torch and
scikit-bio are imported only when used.

>>> import numpy as np
>>> x = np.array([[10, 20, 40], [1, 1, 1]])
>>> closure(x)
array([[0.14285714, 0.28571429, 0.57142857],
       [0.33333333, 0.33333333, 0.33333333]])
>>> basis = HelmertBasis(3)
>>> y = basis.ilr(x)                     # (2, 3) -> (2, 2)
>>> np.round(y, 6)
array([[-0.490129, -0.848928],
       [ 0.      ,  0.      ]])
>>> np.allclose(basis.ilr_inv(y), closure(x))
True

References
----------
Aitchison, J. (1986). *The Statistical Analysis of Compositional Data*.
Chapman & Hall.

Egozcue, J. J., Pawlowsky-Glahn, V., Mateu-Figueras, G. & Barceló-Vidal, C.
(2003). Isometric logratio transformations for compositional data analysis.
*Mathematical Geology* 35(3), 279-300.

Egozcue, J. J. & Pawlowsky-Glahn, V. (2005). Groups of parts and their
balances in compositional data analysis. *Mathematical Geology* 37(7), 795-828.
"""

from __future__ import annotations

import abc
import math
import os
import re
import warnings
from collections import deque

import numpy as np

from mvae.errors import InputError

__all__ = [
    "closure",
    "clr",
    "log_pseudocount",
    "clr_pseudocount",
    "center",
    "Basis",
    "HelmertBasis",
    "TreeBasis",
    "basis_from_config",
]

_MAX_LISTED = 10  # how many offending ids an error message names


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _is_torch(x) -> bool:
    """True for a torch tensor (or Parameter) without importing torch."""
    return type(x).__module__.split(".", 1)[0] == "torch"


def _is_sparse(x) -> bool:
    """True for a scipy.sparse matrix or array without importing scipy."""
    return type(x).__module__.startswith("scipy.sparse")


def _as_numpy(x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 0:
        raise InputError(f"{name}: expected an array with at least one axis, got a scalar {x!r}")
    return x


def _float_dtype(dtype) -> np.dtype:
    """The dtype of a result: the input's if it is floating, else float64."""
    return dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float64)


def _list_some(items, n: int = _MAX_LISTED) -> str:
    items = list(items)
    shown = ", ".join(repr(i) for i in items[:n])
    if len(items) > n:
        shown += f" (and {len(items) - n} more)"
    return shown


def _where(mask: np.ndarray) -> str:
    """Name the rows where ``mask`` (shape ``x.shape[:-1]``) is true."""
    idx = np.argwhere(mask)
    if mask.ndim == 1:
        return "row" + ("s " if len(idx) > 1 else " ") + _list_some(int(i[0]) for i in idx)
    return "rows " + _list_some(tuple(int(j) for j in i) for i in idx)


def _check_pseudocount(pseudocount) -> float:
    try:
        c = float(pseudocount)
    except (TypeError, ValueError):
        c = float("nan")
    if not (math.isfinite(c) and c > 0):
        raise InputError(
            f"pseudocount must be a positive finite number, got {pseudocount!r}; "
            "use clr() for data without zeros"
        )
    return c


def _softmax(v):
    """closure(exp(v)) along the last axis, without overflow."""
    if _is_torch(v):
        import torch

        return torch.softmax(v, dim=-1)
    e = np.exp(v - v.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------------------
# element-wise compositional maths
# ---------------------------------------------------------------------------


def closure(x):
    r"""Divide each composition by its total.

    .. math:: \mathcal{C}(x)_d = x_d \Big/ \textstyle\sum_{j=1}^{D} x_j

    Parameters
    ----------
    x : ndarray or torch.Tensor, shape (..., D)
        Non-negative parts (counts or proportions) along the last axis.

    Returns
    -------
    ndarray or torch.Tensor, shape (..., D)
        Proportions that sum to 1 along the last axis (floating point; integer
        input gives float64).

    Raises
    ------
    InputError
        If a composition sums to zero (numpy input; the message names the rows).

    Examples
    --------
    >>> closure(np.array([[2, 2, 4], [1, 0, 3]]))
    array([[0.25, 0.25, 0.5 ],
           [0.25, 0.  , 0.75]])
    """
    if _is_torch(x):
        return x / x.sum(dim=-1, keepdim=True)
    x = _as_numpy(x, "closure")
    total = x.sum(axis=-1, keepdims=True)
    zero = total[..., 0] == 0
    if np.any(zero):
        where = "the composition" if x.ndim == 1 else _where(zero)
        raise InputError(
            f"closure: {where} of x (shape {x.shape}) sum(s) to 0, so it has no proportions; "
            "drop empty samples before closing the table"
        )
    return x / total


def center(v):
    r"""Subtract the mean along the last axis (project onto the clr hyperplane).

    .. math:: H v = v - \bar v\,1, \qquad H = I - 11^\top / D

    Parameters
    ----------
    v : ndarray or torch.Tensor, shape (..., D)

    Returns
    -------
    ndarray or torch.Tensor, shape (..., D)
        ``v`` minus its mean along the last axis (sums to 0).

    Examples
    --------
    >>> center(np.array([1.0, 2.0, 6.0]))
    array([-2., -1.,  3.])
    """
    if _is_torch(v):
        return v - v.mean(dim=-1, keepdim=True)
    v = _as_numpy(v, "center")
    v = v.astype(_float_dtype(v.dtype), copy=False)
    return v - v.mean(axis=-1, keepdims=True)


def clr(x):
    r"""Centred log-ratio of strictly positive compositions.

    .. math:: \operatorname{clr}(x)_d = \log x_d - \frac{1}{D}\sum_{j=1}^{D}\log x_j

    Parameters
    ----------
    x : ndarray or torch.Tensor, shape (..., D)
        Positive parts; they need not be closed (clr is scale invariant).

    Returns
    -------
    ndarray or torch.Tensor, shape (..., D)
        clr coordinates, summing to 0 along the last axis.

    Raises
    ------
    InputError
        If a part is zero or negative (numpy input). For count data use
        :func:`clr_pseudocount`.

    Examples
    --------
    >>> np.round(clr(np.array([1.0, 2.0, 4.0])), 6)      # log 2 * [-1, 0, 1]
    array([-0.693147,  0.      ,  0.693147])
    """
    if _is_torch(x):
        return center(x.log())
    x = _as_numpy(x, "clr")
    bad = ~(x > 0)
    if np.any(bad & ~np.isnan(x)):
        first = tuple(int(i) for i in np.argwhere(bad & ~np.isnan(x))[0])
        raise InputError(
            f"clr: x must be strictly positive, but x{list(first)} = {x[first]!r}; "
            "for counts with zeros use clr_pseudocount(x, pseudocount=...)"
        )
    return center(np.log(x))


def log_pseudocount(x, pseudocount=1.0):
    r"""Logarithm after adding a pseudocount, for counts that contain zeros.

    .. math:: \ell_d = \log(x_d + c)

    Parameters
    ----------
    x : ndarray, torch.Tensor or scipy.sparse matrix, shape (..., D)
        Non-negative counts. Sparse input gives a dense numpy result.
    pseudocount : float, default 1.0
        :math:`c > 0`.

    Returns
    -------
    ndarray or torch.Tensor, shape (..., D)

    Examples
    --------
    >>> log_pseudocount(np.array([0, 1, 3]))
    array([0.        , 0.69314718, 1.38629436])
    """
    c = _check_pseudocount(pseudocount)
    if _is_torch(x):
        return (x + c).log()
    if _is_sparse(x):
        x = x.toarray()
    x = _as_numpy(x, "log_pseudocount")
    if np.any(x < 0):
        first = tuple(int(i) for i in np.argwhere(x < 0)[0])
        raise InputError(
            f"log_pseudocount: counts must be non-negative, but x{list(first)} = {x[first]!r}"
        )
    return np.log(x + c)


def clr_pseudocount(x, pseudocount=1.0):
    r"""Centred log-ratio after adding a pseudocount.

    .. math:: \operatorname{clr}(x + c)_d = \log(x_d + c) - \frac{1}{D}\sum_{j}\log(x_j + c)

    Parameters
    ----------
    x : ndarray, torch.Tensor or scipy.sparse matrix, shape (..., D)
        Non-negative counts, possibly with zeros. Sparse input gives a dense
        numpy result.
    pseudocount : float, default 1.0
        :math:`c > 0`.

    Returns
    -------
    ndarray or torch.Tensor, shape (..., D)
        Sums to 0 along the last axis.

    Examples
    --------
    >>> np.round(clr_pseudocount(np.array([0, 1, 3])), 6)
    array([-0.693147,  0.      ,  0.693147])
    """
    return center(log_pseudocount(x, pseudocount))


# ---------------------------------------------------------------------------
# bases
# ---------------------------------------------------------------------------


def _check_n_features(n_features) -> int:
    if isinstance(n_features, bool) or not isinstance(n_features, (int, np.integer)):
        raise InputError(f"n_features must be an integer >= 2, got {n_features!r}")
    if n_features < 2:
        raise InputError(
            f"n_features must be >= 2 (a composition of one part has no log-ratios), got {n_features}"
        )
    return int(n_features)


def _check_feature_ids(feature_ids, n_features: int | None):
    if feature_ids is None:
        return None
    if isinstance(feature_ids, str):
        raise InputError("feature_ids must be a sequence of ids, not a single string")
    ids = tuple(str(i) for i in feature_ids)
    if n_features is not None and len(ids) != n_features:
        raise InputError(f"feature_ids has {len(ids)} ids but n_features is {n_features}")
    if len(set(ids)) != len(ids):
        seen, dup = set(), []
        for i in ids:
            if i in seen and i not in dup:
                dup.append(i)
            seen.add(i)
        raise InputError(f"feature_ids must be unique; repeated: {_list_some(dup)}")
    return ids


def _default_names(n: int) -> list[str]:
    return [f"y{i}" for i in range(n)]


class Basis(abc.ABC):
    r"""An orthonormal ILR basis :math:`\Psi` (D x (D-1)) applied in O(D).

    Subclasses implement the numpy and torch kernels; this class checks shapes,
    dispatches on the array kind and keeps dtypes: sums are accumulated in
    float64 and the result is cast back to the input's floating dtype (integer
    input gives float64).

    Attributes
    ----------
    n_features : int
        :math:`D`, the number of parts.
    n_balances : int
        :math:`D - 1`, the number of ILR coordinates.
    feature_ids : tuple of str or None
        Names of the parts, in the order of the last axis.
    balance_names : list of str
        Names of the coordinates, length :math:`D - 1`.
    """

    def __init__(self, n_features, feature_ids=None, balance_names=None):
        self._n = _check_n_features(n_features)
        self._feature_ids = _check_feature_ids(feature_ids, self._n)
        if balance_names is None:
            balance_names = _default_names(self._n - 1)
        balance_names = [str(b) for b in balance_names]
        if len(balance_names) != self._n - 1:
            raise InputError(
                f"balance_names has {len(balance_names)} names, expected n_features - 1 = {self._n - 1}"
            )
        self._balance_names = balance_names
        self._torch_cache: dict = {}

    # -- description -------------------------------------------------------

    @property
    def n_features(self) -> int:
        """Number of parts D."""
        return self._n

    @property
    def n_balances(self) -> int:
        """Number of ILR coordinates D - 1."""
        return self._n - 1

    @property
    def feature_ids(self):
        """Part names (tuple of str) in input order, or None."""
        return self._feature_ids

    @property
    def balance_names(self) -> list[str]:
        """Coordinate names, length D - 1 (a copy)."""
        return list(self._balance_names)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_features={self._n})"

    # -- transforms ----------------------------------------------------------

    def _check_last_axis(self, shape, expected: int, what: str):
        if len(shape) == 0 or shape[-1] != expected:
            raise InputError(
                f"{type(self).__name__}.{what}: expected the last axis to have length {expected} "
                f"(n_features = {self._n}), got an input of shape {tuple(shape)}"
            )

    @staticmethod
    def _work_dtype(t):
        import torch

        # MPS has no float64; everything else accumulates in double precision
        return torch.float32 if t.device.type == "mps" else torch.float64

    @staticmethod
    def _out_dtype_torch(t):
        import torch

        return t.dtype if t.is_floating_point() else torch.float64

    def forward(self, v):
        r"""ILR coordinates of clr (or log) vectors.

        .. math:: y = \Psi^\top v

        Because :math:`\Psi^\top 1 = 0`, ``v`` need not be centred: log values
        give the same result as their clr.

        Parameters
        ----------
        v : ndarray or torch.Tensor, shape (..., D)

        Returns
        -------
        ndarray or torch.Tensor, shape (..., D - 1)
            Same kind, device and (floating) dtype as ``v``; differentiable for
            torch input.

        Examples
        --------
        >>> HelmertBasis(3).forward(np.array([0.0, 0.0, 3.0]))
        array([ 0.        , -2.44948974])
        """
        if _is_torch(v):
            self._check_last_axis(v.shape, self._n, "forward")
            return self._forward_torch(v).to(self._out_dtype_torch(v))
        v = _as_numpy(v, f"{type(self).__name__}.forward")
        self._check_last_axis(v.shape, self._n, "forward")
        return self._forward_numpy(v).astype(_float_dtype(v.dtype), copy=False)

    def inverse(self, y):
        r"""clr vectors from ILR coordinates.

        .. math:: v = \Psi y

        Parameters
        ----------
        y : ndarray or torch.Tensor, shape (..., D - 1)

        Returns
        -------
        ndarray or torch.Tensor, shape (..., D)
            A clr vector (sums to 0 along the last axis), same kind, device and
            (floating) dtype as ``y``.

        Examples
        --------
        >>> np.round(HelmertBasis(3).inverse(np.array([0.0, -2.44948974])), 6)
        array([-1., -1.,  2.])
        """
        if _is_torch(y):
            self._check_last_axis(y.shape, self._n - 1, "inverse")
            return self._inverse_torch(y).to(self._out_dtype_torch(y))
        y = _as_numpy(y, f"{type(self).__name__}.inverse")
        self._check_last_axis(y.shape, self._n - 1, "inverse")
        return self._inverse_numpy(y).astype(_float_dtype(y.dtype), copy=False)

    def ilr(self, x):
        r"""Isometric log-ratio of positive compositions.

        .. math:: \operatorname{ilr}(x) = \Psi^\top \operatorname{clr}(x)

        Parameters
        ----------
        x : ndarray or torch.Tensor, shape (..., D)
            Positive parts (use ``forward(clr_pseudocount(x))`` for counts).

        Returns
        -------
        ndarray or torch.Tensor, shape (..., D - 1)

        Examples
        --------
        >>> np.round(HelmertBasis(2).ilr(np.array([1.0, 2.0])), 6)   # -log(2) / sqrt(2)
        array([-0.490129])
        """
        return self.forward(clr(x))

    def ilr_inv(self, y):
        r"""Compositions from ILR coordinates.

        .. math:: \operatorname{ilr}^{-1}(y) = \mathcal{C}\big(\exp(\Psi y)\big)

        Computed as a softmax, so large coordinates do not overflow.

        Parameters
        ----------
        y : ndarray or torch.Tensor, shape (..., D - 1)

        Returns
        -------
        ndarray or torch.Tensor, shape (..., D)
            Proportions summing to 1 along the last axis.

        Examples
        --------
        >>> np.round(HelmertBasis(2).ilr_inv(np.array([-0.49012907])), 6)
        array([0.333333, 0.666667])
        """
        return _softmax(self.inverse(y))

    def dense(self, max_bytes=2**28) -> np.ndarray:
        r"""The basis as a dense float64 matrix (for small D, tests and plots).

        .. math:: \Psi \in \mathbb{R}^{D \times (D-1)}, \quad \Psi^\top\Psi = I,\ \Psi^\top 1 = 0

        Parameters
        ----------
        max_bytes : int, default 2**28 (256 MiB)
            Refuse to allocate more than this.

        Returns
        -------
        ndarray, shape (D, D - 1)
            Column ``n`` is the clr vector of balance ``n``.

        Raises
        ------
        ValueError
            If the matrix would need more than ``max_bytes``.

        Examples
        --------
        >>> np.round(HelmertBasis(3).dense(), 4)
        array([[ 0.7071,  0.4082],
               [-0.7071,  0.4082],
               [ 0.    , -0.8165]])
        """
        need = self._n * (self._n - 1) * 8
        if need > max_bytes:
            raise ValueError(
                f"{type(self).__name__}.dense(): a dense basis for D = {self._n} features needs "
                f"{need:,} bytes ({need / 2**30:.2f} GiB), more than max_bytes = {int(max_bytes):,}; "
                "use forward()/inverse(), which never form it, or raise max_bytes"
            )
        return self._dense()

    # -- to implement ----------------------------------------------------------

    @abc.abstractmethod
    def _forward_numpy(self, v: np.ndarray) -> np.ndarray: ...

    @abc.abstractmethod
    def _inverse_numpy(self, y: np.ndarray) -> np.ndarray: ...

    @abc.abstractmethod
    def _forward_torch(self, v): ...

    @abc.abstractmethod
    def _inverse_torch(self, y): ...

    @abc.abstractmethod
    def _dense(self) -> np.ndarray: ...

    @abc.abstractmethod
    def to_config(self) -> dict:
        """A JSON-serialisable description; :func:`basis_from_config` rebuilds the basis."""


class HelmertBasis(Basis):
    r"""The Helmert (Gram-Schmidt) ILR basis, scikit-bio's default.

    Coordinate :math:`i - 1` (:math:`i = 1, \dots, D-1`) contrasts the first
    :math:`i` parts with part :math:`i` (0-based):

    .. math:: y_{i-1} = \frac{S_i - i\,v_i}{\sqrt{i(i+1)}}, \qquad S_i = \sum_{k<i} v_k

    so :math:`\Psi^\top` equals ``scipy.linalg.helmert(D)`` (which already
    omits the constant row) and the basis used by
    ``skbio.stats.composition.ilr`` when no ``basis`` is given. Forward is one
    cumulative sum, inverse one reverse cumulative sum.

    Parameters
    ----------
    n_features : int
        :math:`D \ge 2`.
    feature_ids : sequence of str, optional
        Names of the parts, length :math:`D`.

    Notes
    -----
    ``balance_names`` are ``"y0"``, ..., ``"y{D-2}"``.

    Examples
    --------
    >>> basis = HelmertBasis(3)
    >>> np.round(basis.ilr(np.array([1.0, 2.0, 4.0])), 6)
    array([-0.490129, -0.848928])
    """

    def __init__(self, n_features, feature_ids=None):
        super().__init__(n_features, feature_ids)
        i = np.arange(1, self._n, dtype=np.float64)
        self._i = i  # (D-1,)
        self._c = 1.0 / np.sqrt(i * (i + 1.0))  # (D-1,)

    def _forward_numpy(self, v):
        s = np.cumsum(v, axis=-1, dtype=np.float64)[..., :-1]  # S_i, i = 1..D-1
        return (s - self._i * v[..., 1:]) * self._c

    def _inverse_numpy(self, y):
        w = y * self._c  # (..., D-1), float64
        tail = np.cumsum(w[..., ::-1], axis=-1)[..., ::-1]  # tail[k] = sum_{i > k} w_i
        v = np.zeros(y.shape[:-1] + (self._n,))
        v[..., :-1] = tail
        v[..., 1:] -= self._i * w
        return v

    def _consts(self, t):
        import torch

        key = (str(t.device), self._work_dtype(t))
        if key not in self._torch_cache:
            wd = key[1]
            self._torch_cache[key] = (
                torch.as_tensor(self._i, dtype=wd, device=t.device),
                torch.as_tensor(self._c, dtype=wd, device=t.device),
            )
        return self._torch_cache[key]

    def _forward_torch(self, v):
        import torch

        i, c = self._consts(v)
        s = torch.cumsum(v, dim=-1, dtype=i.dtype)[..., :-1]
        return (s - i * v[..., 1:].to(i.dtype)) * c

    def _inverse_torch(self, y):
        import torch

        i, c = self._consts(y)
        w = y.to(i.dtype) * c
        tail = torch.flip(torch.cumsum(torch.flip(w, [-1]), dim=-1), [-1])
        zero = torch.zeros(y.shape[:-1] + (1,), dtype=w.dtype, device=w.device)
        return torch.cat([tail, zero], dim=-1) - torch.cat([zero, i * w], dim=-1)

    def _dense(self):
        rows = np.arange(self._n)[:, None]  # (D, 1)
        i = np.arange(1, self._n)[None, :]  # (1, D-1)
        return (rows < i) * self._c - (rows == i) * (self._i * self._c)

    def to_config(self) -> dict:
        """JSON-serialisable description.

        Examples
        --------
        >>> HelmertBasis(3, ["a", "b", "c"]).to_config()
        {'kind': 'helmert', 'n_features': 3, 'feature_ids': ['a', 'b', 'c']}
        """
        ids = None if self._feature_ids is None else list(self._feature_ids)
        return {"kind": "helmert", "n_features": self._n, "feature_ids": ids}


# ---------------------------------------------------------------------------
# trees
# ---------------------------------------------------------------------------

_NUMERIC = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _parse_newick(text: str, source: str):
    """Read the first tree of a Newick text with scikit-bio's reader.

    Returns ``(names, parent)``, one entry per node, nodes numbered in preorder
    (the root is 0, its parent -1; children follow their parent in Newick
    order). ``skbio.TreeNode.read`` keeps an explicit stack, so deep trees do
    not recurse. Labels are taken literally (``convert_underscores=False``):
    quotes are removed, but underscores are NOT turned into spaces (unlike
    skbio's default). Branch lengths and ``[comments]`` are skipped; a final
    ``;`` may be missing.
    """
    import io

    from skbio import TreeNode  # imported here: importing skbio takes seconds
    from skbio.io import NewickFormatError

    if ";" not in text:  # a lone tree without its terminator, which skbio would reject
        text = text.rstrip() + ";"
    try:
        tree = TreeNode.read(io.StringIO(text), format="newick", verify=False,
                             convert_underscores=False)
    except NewickFormatError as exc:
        raise InputError(f"cannot parse the Newick tree from {source}: {exc}") from exc
    except IndexError as exc:  # skbio's reader runs off its stack on a surplus ')'
        raise InputError(f"cannot parse the Newick tree from {source}: a ')' closes more "
                         "parentheses than were opened") from exc
    return _tree_from_skbio(tree)


def _tree_from_skbio(tree):
    """(names, parent) from an skbio.TreeNode, in preorder, without recursion."""
    names, parent = [], []
    stack = [(tree, -1)]
    while stack:
        node, up = stack.pop()
        names.append(None if node.name is None else str(node.name))
        parent.append(up)
        idx = len(names) - 1
        stack.extend((child, idx) for child in reversed(node.children))  # first child next
    return names, parent


def _read_tree(tree):
    if isinstance(tree, os.PathLike) or (isinstance(tree, str) and not tree.lstrip().startswith("(")):
        path = os.fspath(tree)
        if not os.path.isfile(path):
            raise InputError(
                f"tree {path!r} is neither a Newick string (which starts with '(') nor an existing file"
            )
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except UnicodeDecodeError as exc:
            raise InputError(f"tree file {path!r} is not UTF-8 text ({exc.reason} at byte "
                             f"{exc.start}); is it a Newick file?") from exc
        return _parse_newick(text, f"file {path!r}")
    if isinstance(tree, str):
        return _parse_newick(tree, "the given string")
    if hasattr(tree, "children") and hasattr(tree, "name"):
        return _tree_from_skbio(tree)
    raise InputError(
        "tree must be a Newick string, a path to a Newick file or a skbio.TreeNode, "
        f"got {type(tree).__name__}"
    )


def _is_support_value(name) -> bool:
    return bool(_NUMERIC.match(name))


def _balance_names(raw: list) -> list[str]:
    """Internal node names where usable, else ``"y{index}"``."""
    usable = [r for r in raw if r and not _is_support_value(r)]
    counts: dict = {}
    for r in usable:
        counts[r] = counts.get(r, 0) + 1
    out = [r if (r and counts.get(r) == 1) else None for r in raw]
    taken = {r for r in out if r is not None}
    for i, r in enumerate(out):
        if r is None:
            name, k = f"y{i}", 1
            while name in taken:
                name, k = f"y{i}_{k}", k + 1
            out[i] = name
            taken.add(name)
    return out


class TreeBasis(Basis):
    r"""Balances of a bifurcating tree over the features (sequential binary partition).

    Each internal node :math:`n` splits its tips into a *numerator* clade
    :math:`R` (``r`` tips) and a *denominator* clade :math:`S` (``s`` tips) and
    gives the balance

    .. math:: y_n = \sqrt{\tfrac{rs}{r+s}}\,
              \log\frac{g(x_R)}{g(x_S)}
            = \sqrt{\tfrac{s}{r(r+s)}}\sum_{R} v_d - \sqrt{\tfrac{r}{s(r+s)}}\sum_{S} v_d

    with :math:`g` the geometric mean and :math:`v = \log x`. The tips are
    numbered so that every clade is a contiguous range: node :math:`n` covers
    ``[start, stop)``, its numerator ``[start, split)``. With prefix sums
    :math:`P_k = \sum_{j<k} v_j` the forward map is
    :math:`y_n = A_n (P_{split} - P_{start}) - B_n (P_{stop} - P_{split})`,
    :math:`A_n = \sqrt{s/(r(r+s))}`, :math:`B_n = \sqrt{r/(s(r+s))}`; the
    inverse adds :math:`A_n y_n` at ``start``, :math:`-(A_n + B_n) y_n` at
    ``split`` and :math:`B_n y_n` at ``stop`` of a difference array and takes
    its cumulative sum. Both are O(D) for any tree shape; sums run in float64.

    Conventions (those of ``skbio.stats.composition.tree_basis`` in
    scikit-bio 0.7.4, so that ``basis.ilr(x)`` equals
    ``skbio.stats.composition.ilr(x_in_tip_order, basis=tree_basis(tree)[0])``):

    * balances are ordered level by level from the root (breadth first,
      children in Newick order);
    * the numerator is the *second* child in Newick order, the denominator the
      first, e.g. ``((b,c)a,d)root;`` gives ``root`` = log(d / g(b, c)) and
      ``a`` = log(c / b), up to the factors above;
    * features keep the user's order on the last axis; the tree's tip order is
      an internal permutation.

    Build one with :meth:`balanced` or :meth:`from_tree`; the constructor takes
    the internal arrays (as stored by :meth:`to_config`) and checks that they
    describe a bifurcating tree.

    Parameters
    ----------
    tip_features : array_like of int, shape (D,)
        Feature index (position on the input's last axis) of each tip, tips
        numbered numerator-first, i.e. in reverse Newick order.
    start, split, stop : array_like of int, shape (D - 1,)
        Per balance (in balance order): its tips are ``[start, stop)``, the
        numerator ``[start, split)`` and the denominator ``[split, stop)``.
    balance_names : sequence of str, optional
        Default ``"y0"``, ..., ``"y{D-2}"``.
    feature_ids : sequence of str, optional

    Examples
    --------
    >>> basis = TreeBasis.from_tree("((b,c)a,d)root;", feature_ids=["b", "c", "d"])
    >>> basis.balance_names
    ['root', 'a']
    >>> np.round(basis.ilr(np.array([1.0, 2.0, 4.0])), 6)
    array([0.848928, 0.490129])
    """

    def __init__(self, tip_features, start, split, stop, balance_names=None, feature_ids=None):
        perm = np.asarray(tip_features, dtype=np.int64).ravel()
        super().__init__(len(perm), feature_ids, balance_names)
        a = np.asarray(start, dtype=np.int64).ravel()
        m = np.asarray(split, dtype=np.int64).ravel()
        b = np.asarray(stop, dtype=np.int64).ravel()
        _check_ranges(perm, a, m, b)
        self._perm, self._a, self._m, self._b = perm, a, m, b
        self._inv_perm = np.empty_like(perm)
        self._inv_perm[perm] = np.arange(len(perm))
        r = (m - a).astype(np.float64)  # numerator tips
        s = (b - m).astype(np.float64)  # denominator tips
        self._cn = np.sqrt(s / (r * (r + s)))  # weight of the numerator tips
        self._cd = np.sqrt(r / (s * (r + s)))  # weight (negated) of the denominator tips
        # numpy inverse: the difference array d[a] += cn y, d[m] -= (cn + cd) y, d[b] += cd y
        # as a sorted segment sum (np.add.reduceat) instead of a slow unbuffered np.add.at
        nb = len(a)
        idx = np.concatenate([a, m, b])
        node = np.concatenate([np.arange(nb)] * 3)
        coef = np.concatenate([self._cn, -(self._cn + self._cd), self._cd])
        keep = idx < self._n  # d[D] never reaches the cumulative sum
        idx, node, coef = idx[keep], node[keep], coef[keep]
        order = np.argsort(idx, kind="stable")
        idx, self._sc_node, self._sc_coef = idx[order], node[order], coef[order]
        self._sc_target, self._sc_start = np.unique(idx, return_index=True)

    # -- constructors ------------------------------------------------------------

    @classmethod
    def balanced(cls, n_features, feature_ids=None):
        r"""Balances of a balanced binary tree over the features in their given order.

        The tree is the one written, in Newick, by halving the features
        recursively, the first half taking the extra feature when the count is
        odd: ``((f0,f1),f2)`` for three features, ``((f0,f1),(f2,f3))`` for four.

        .. math:: \text{depth} = \lceil \log_2 D \rceil

        Parameters
        ----------
        n_features : int
            :math:`D \ge 2`.
        feature_ids : sequence of str, optional

        Returns
        -------
        TreeBasis
            Balance names ``"y0"``, ..., ``"y{D-2}"`` (breadth first).

        Examples
        --------
        >>> basis = TreeBasis.balanced(4)
        >>> np.round(basis.dense(), 4)
        array([[-0.5   , -0.7071,  0.    ],
               [-0.5   ,  0.7071,  0.    ],
               [ 0.5   ,  0.    , -0.7071],
               [ 0.5   ,  0.    ,  0.7071]])
        """
        D = _check_n_features(n_features)
        starts, splits, stops = [], [], []
        queue = deque([(0, D)])  # feature ranges [lo, hi) in Newick order, breadth first
        while queue:
            lo, hi = queue.popleft()
            mid = lo + (hi - lo + 1) // 2  # first child [lo, mid) = denominator
            # tips are numbered in reverse Newick order: feature f sits at tip D - 1 - f
            starts.append(D - hi)
            splits.append(D - mid)
            stops.append(D - lo)
            for child in ((lo, mid), (mid, hi)):
                if child[1] - child[0] >= 2:
                    queue.append(child)
        return cls(np.arange(D)[::-1], starts, splits, stops, None, feature_ids)

    @classmethod
    def from_tree(cls, tree, feature_ids):
        r"""Balances of a phylogeny whose tips are the features.

        Tips are matched to ``feature_ids`` by name (literally: Newick
        underscores stay underscores). Tips that are not features are pruned
        (a warning names them), nodes left with one child are collapsed (the
        merged node keeps the lower node's name, or the upper one's when the
        lower is unnamed), and nodes with :math:`k > 2` children are resolved
        as ``skbio.TreeNode.bifurcate`` does: children :math:`(c_0, \dots,
        c_{k-1})` become :math:`(c_{k-1}, (c_{k-2}, \dots (c_0, c_1)))`, with
        a warning. Nothing recurses, so caterpillar trees with :math:`10^5`
        tips are fine; construction is :math:`O(\text{nodes})`.

        .. math:: y_n = \sqrt{\tfrac{rs}{r+s}}\,\log\frac{g(x_{\text{2nd child}})}{g(x_{\text{1st child}})}

        Parameters
        ----------
        tree : str, os.PathLike or skbio.TreeNode
            A Newick string (starting with ``"("``), a path to a Newick file
            (its first tree is used; read as UTF-8 text) or a
            ``skbio.TreeNode``. Newick text is read with scikit-bio's reader
            (``skbio.TreeNode.read``, underscores kept).
        feature_ids : sequence of str, length D
            The table's feature ids, in the order of the last axis of the data.

        Returns
        -------
        TreeBasis
            ``balance_names`` are the internal nodes' names where present,
            unique and not purely numeric (numbers are usually bootstrap
            support values); any other balance ``n`` is named ``"y{n}"``.

        Raises
        ------
        InputError
            If a feature is not a tip of the tree (the message lists up to 10
            of them, and separately the tips that are not features), if a
            feature names several tips, or if the Newick text cannot be parsed.

        Examples
        --------
        >>> basis = TreeBasis.from_tree("((b,c)a,d)root;", feature_ids=["d", "c", "b"])
        >>> np.round(basis.dense(), 4)            # rows in the order d, c, b
        array([[ 0.8165,  0.    ],
               [-0.4082,  0.7071],
               [-0.4082, -0.7071]])
        """
        if feature_ids is None:
            raise InputError("TreeBasis.from_tree needs feature_ids to match features to the tree's tips")
        ids = _check_feature_ids(feature_ids, None)
        D = _check_n_features(len(ids))
        names, parent = _read_tree(tree)  # nodes in preorder, root 0
        n_nodes = len(names)
        children: list = [[] for _ in range(n_nodes)]
        for node in range(1, n_nodes):
            children[parent[node]].append(node)
        feature_index = {f: j for j, f in enumerate(ids)}

        # match tips (in Newick order) to features
        tip_of = [-1] * D
        extra, duplicated = [], []
        for node in range(n_nodes):
            if children[node]:
                continue
            name = names[node]
            j = feature_index.get(name, -1) if name is not None else -1
            if j < 0:
                extra.append("<unnamed>" if name is None else name)
            elif tip_of[j] >= 0:
                duplicated.append(name)
            else:
                tip_of[j] = node
        missing = [ids[j] for j in range(D) if tip_of[j] < 0]
        if missing:
            raise InputError(
                f"{len(missing)} of {D} features are not tips of the tree: {_list_some(missing)}. "
                f"Separately, {len(extra)} tips of the tree are not features of the table"
                + (f": {_list_some(extra)}" if extra else "")
                + ". Every feature needs a tip with exactly the same name (underscores are not "
                "turned into spaces); use the tree built for this table, or filter the table "
                "to the features in the tree"
            )
        if duplicated:
            raise InputError(
                f"several tips of the tree carry the same feature id: {_list_some(sorted(set(duplicated)))}"
            )

        # prune: keep the feature tips and their ancestors
        keep = bytearray(n_nodes)
        for node in tip_of:
            while node >= 0 and not keep[node]:
                keep[node] = 1
                node = parent[node]
        if extra:
            children = [[c for c in kids if keep[c]] for kids in children]

        # Rebuild strictly bifurcating: collapse one-child chains, resolve multifurcations.
        # Nodes are allocated in "numerator-first" preorder (the second child in Newick
        # order before the first), which is the order the tips are numbered in.
        new_name: list = []
        new_parent: list = []
        new_feature: list = []  # feature index of a tip, -1 for internal nodes
        numerator: list = []  # the second (numerator) child of an internal node
        depth: list = []
        resolved = 0

        def alloc(name, feature, up, second):
            idx = len(new_name)
            new_name.append(name)
            new_parent.append(up)
            new_feature.append(feature)
            numerator.append(-1)
            depth.append(depth[up] + 1 if up >= 0 else 0)
            if second:
                numerator[up] = idx
            return idx

        work = [(0, -1, False)]
        while work:
            node, up, second = work.pop()
            kids = children[node]
            name = names[node] or None
            while len(kids) == 1:
                node = kids[0]
                kids = children[node]
                name = names[node] or name  # the lower node's name wins, as in skbio's prune()
            if not kids:
                alloc(names[node], feature_index[names[node]], up, second)
                continue
            cur = alloc(name, -1, up, second)
            if len(kids) > 2:
                # as skbio's bifurcate(): (c0, ..., ck-1) -> (ck-1, (ck-2, ... (c0, c1)))
                resolved += 1
                for j in range(len(kids) - 1, 1, -1):
                    work.append((kids[j], cur, False))
                    cur = alloc(None, -1, cur, True)
            work.append((kids[0], cur, False))
            work.append((kids[1], cur, True))  # popped first

        if extra:
            warnings.warn(
                f"pruned {len(extra)} tips of the tree that are not features of the table: "
                f"{_list_some(extra)}",
                UserWarning,
                stacklevel=2,
            )
        if resolved:
            warnings.warn(
                f"resolved {resolved} multifurcating node{'s' if resolved > 1 else ''} of the tree into "
                "bifurcations (as skbio TreeNode.bifurcate does); the balances inside those nodes "
                "depend on the order of their children",
                UserWarning,
                stacklevel=2,
            )
        return cls._from_preorder(new_name, new_parent, new_feature, numerator, depth, ids)

    @classmethod
    def _from_preorder(cls, names, parent, feature, numerator, depth, feature_ids):
        """Ranges of a bifurcating tree whose nodes are numbered in numerator-first preorder."""
        feature = np.asarray(feature, dtype=np.int64)
        is_tip = feature >= 0
        first_tip = np.cumsum(is_tip) - is_tip  # tips allocated before each node
        size = is_tip.astype(np.int64).tolist()  # tips below each node
        for node in range(len(names) - 1, 0, -1):  # children come after their parents
            size[parent[node]] += size[node]
        size = np.asarray(size, dtype=np.int64)
        internal = np.flatnonzero(~is_tip)
        # breadth first with children in Newick order = by depth, then reverse allocation order
        bfs = internal[np.lexsort((-internal, np.asarray(depth)[internal]))]
        start = first_tip[bfs]
        split = start + size[np.asarray(numerator)[bfs]]
        stop = start + size[bfs]
        balance_names = _balance_names([names[n] for n in bfs])
        return cls(feature[is_tip], start, split, stop, balance_names, feature_ids)

    # -- kernels -----------------------------------------------------------------

    def _forward_numpy(self, v):
        vt = v[..., self._perm]  # (..., D) in tip order
        p = np.zeros(v.shape[:-1] + (self._n + 1,))
        np.cumsum(vt, axis=-1, dtype=np.float64, out=p[..., 1:])  # p[k] = sum of tips < k
        num = p[..., self._m] - p[..., self._a]  # (..., D-1)
        den = p[..., self._b] - p[..., self._m]
        return self._cn * num - self._cd * den

    def _inverse_numpy(self, y):
        vals = y[..., self._sc_node] * self._sc_coef  # (..., <= 3(D-1)), float64
        d = np.zeros(y.shape[:-1] + (self._n,))
        d[..., self._sc_target] = np.add.reduceat(vals, self._sc_start, axis=-1)
        vt = np.cumsum(d, axis=-1)  # clr vector in tip order
        return vt[..., self._inv_perm]

    def _consts(self, t):
        import torch

        key = (str(t.device), self._work_dtype(t))
        if key not in self._torch_cache:
            dev, wd = t.device, key[1]
            self._torch_cache[key] = tuple(
                torch.as_tensor(arr, device=dev)
                for arr in (self._perm, self._inv_perm, self._a, self._m, self._b)
            ) + (
                torch.as_tensor(self._cn, dtype=wd, device=dev),
                torch.as_tensor(self._cd, dtype=wd, device=dev),
            )
        return self._torch_cache[key]

    def _forward_torch(self, v):
        import torch

        perm, _, a, m, b, cn, cd = self._consts(v)
        vt = v.index_select(-1, perm)
        zero = torch.zeros(v.shape[:-1] + (1,), dtype=cn.dtype, device=v.device)
        p = torch.cat([zero, torch.cumsum(vt, dim=-1, dtype=cn.dtype)], dim=-1)  # (..., D+1)
        pa, pm, pb = p.index_select(-1, a), p.index_select(-1, m), p.index_select(-1, b)
        return cn * (pm - pa) - cd * (pb - pm)

    def _inverse_torch(self, y):
        import torch

        _, inv_perm, a, m, b, cn, cd = self._consts(y)
        y = y.to(cn.dtype)
        d = torch.zeros(y.shape[:-1] + (self._n + 1,), dtype=cn.dtype, device=y.device)
        d = d.index_add(-1, a, cn * y).index_add(-1, m, -(cn + cd) * y).index_add(-1, b, cd * y)
        vt = torch.cumsum(d[..., : self._n], dim=-1)
        return vt.index_select(-1, inv_perm)

    def _dense(self):
        psi = np.zeros((self._n, self._n - 1))
        for n, (a, m, b) in enumerate(zip(self._a, self._m, self._b)):
            psi[a:m, n] = self._cn[n]
            psi[m:b, n] = -self._cd[n]
        out = np.empty_like(psi)
        out[self._perm] = psi  # tip order -> feature order
        return out

    def to_config(self) -> dict:
        """JSON-serialisable description (the internal arrays as lists).

        Examples
        --------
        >>> TreeBasis.balanced(3).to_config()["split"]
        [1, 2]
        """
        ids = None if self._feature_ids is None else list(self._feature_ids)
        return {
            "kind": "tree",
            "n_features": self._n,
            "feature_ids": ids,
            "balance_names": list(self._balance_names),
            "tip_features": self._perm.tolist(),
            "start": self._a.tolist(),
            "split": self._m.tolist(),
            "stop": self._b.tolist(),
        }


def _check_ranges(perm, a, m, b):
    """Check, in O(D log D), that the arrays describe a strictly bifurcating tree.

    Every balance's two halves must be single tips or the range of another
    balance, each non-root range being used exactly once, and the root [0, D)
    must be present.
    """
    D = len(perm)
    if not np.array_equal(np.sort(perm), np.arange(D)):
        raise InputError(f"tip_features must be a permutation of 0..{D - 1}")
    if not (len(a) == len(m) == len(b) == D - 1):
        raise InputError(
            f"start, split and stop must each have n_features - 1 = {D - 1} entries, "
            f"got {len(a)}, {len(m)} and {len(b)}"
        )
    if np.any(a < 0) or np.any(b > D) or np.any(a >= m) or np.any(m >= b):
        raise InputError("tree ranges must satisfy 0 <= start < split < stop <= n_features")
    key = a * (D + 1) + b  # one integer per range [a, b)
    if len(np.unique(key)) != D - 1 or not np.any(key == D):
        raise InputError("tree ranges must be distinct and include the root range [0, n_features)")
    lo = np.concatenate([a, m])
    hi = np.concatenate([m, b])
    inner = hi - lo > 1
    half = lo[inner] * (D + 1) + hi[inner]
    known = np.isin(half, key)
    if not known.all():
        bad = int(np.flatnonzero(~known)[0])
        raise InputError(
            "tree ranges do not form a bifurcating tree "
            f"(at range {[int(lo[inner][bad]), int(hi[inner][bad])]})"
        )
    if len(np.unique(half)) != len(half) or len(half) != D - 2:
        raise InputError("tree ranges do not form a bifurcating tree (a range is used twice or not at all)")


def basis_from_config(config: dict) -> Basis:
    """Rebuild a basis from :meth:`Basis.to_config` output (e.g. read back from JSON).

    Parameters
    ----------
    config : dict
        With ``"kind"`` ``"helmert"`` or ``"tree"``.

    Returns
    -------
    Basis

    Examples
    --------
    >>> import json
    >>> basis = TreeBasis.balanced(5, feature_ids=list("abcde"))
    >>> again = basis_from_config(json.loads(json.dumps(basis.to_config())))
    >>> np.array_equal(again.dense(), basis.dense()), again.feature_ids == basis.feature_ids
    (True, True)
    """
    try:
        kind = config["kind"]
        if kind == "helmert":
            return HelmertBasis(config["n_features"], config.get("feature_ids"))
        if kind == "tree":
            basis = TreeBasis(
                config["tip_features"],
                config["start"],
                config["split"],
                config["stop"],
                config.get("balance_names"),
                config.get("feature_ids"),
            )
            if "n_features" in config and config["n_features"] != basis.n_features:
                raise InputError(
                    f"basis config says n_features = {config['n_features']} "
                    f"but its tree has {basis.n_features} tips"
                )
            return basis
    except (KeyError, TypeError) as err:
        raise InputError(f"basis config is incomplete or malformed: {err!r}") from err
    raise InputError(f"unknown basis kind {kind!r} in config; expected 'helmert' or 'tree'")
