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
* :class:`~mvae.maths.trees.TreeBasis` (in :mod:`mvae.maths.trees`) -- *balances* of a bifurcating tree (a phylogeny, or a
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
        """A JSON-serialisable description; :func:`mvae.maths.bases.basis_from_config` rebuilds the basis."""


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
