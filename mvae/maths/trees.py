r"""Balances of a bifurcating tree: the ILR basis microbiome users mean by "balances".

A :class:`TreeBasis` takes a phylogeny in Newick (read by scikit-bio's ``TreeNode.read``) or a
balanced tree over the features, and gives the coordinate of each internal node: the scaled log
ratio of the geometric means of its two clades (Egozcue & Pawlowsky-Glahn 2005), exactly as
``skbio.stats.composition.tree_basis`` builds them, applied in O(D) with prefix sums once the
features are ordered as the tree's tips (docs/model.md). The default basis of a fit is the
Helmert basis of :mod:`mvae.maths.compositions`; this module is loaded only for trees.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import deque

import numpy as np

from mvae.errors import InputError

from .compositions import Basis, _check_feature_ids, _check_n_features, _list_some

__all__ = ["TreeBasis"]

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
