"""Tests of mvae.maths.compositions against independent references.

References: scikit-bio 0.7.4 (``ilr``, ``ilr_inv``, ``tree_basis``, ``clr``, ``closure``),
``scipy.linalg.helmert``, values worked out by hand, and mathematical identities of an
orthonormal ILR basis.
"""

import json
import zlib

import numpy as np
import pytest
import scipy.sparse
import torch
from scipy.linalg import helmert
from skbio import TreeNode
from skbio.stats.composition import clr as sk_clr
from skbio.stats.composition import closure as sk_closure
from skbio.stats.composition import ilr as sk_ilr
from skbio.stats.composition import ilr_inv as sk_ilr_inv
from skbio.stats.composition import tree_basis

from mvae.maths.compositions import (
    HelmertBasis,
    center,
    closure,
    clr,
    clr_pseudocount,
    log_pseudocount,
)
from mvae.maths.bases import basis_from_config
from mvae.maths.trees import TreeBasis
from mvae.errors import InputError

LN2 = np.log(2.0)

# ---------------------------------------------------------------------------
# tree helpers (test-side, independent of the module)
# ---------------------------------------------------------------------------


def random_newick(rng, tips, name_internal=True):
    """A random bifurcating tree by merging random pairs of clades."""
    clades = list(tips)
    k = 0
    while len(clades) > 1:
        i, j = sorted(rng.choice(len(clades), size=2, replace=False))
        right = clades.pop(j)
        left = clades.pop(i)
        label = f"n{k}" if name_internal else ""
        length = f":{rng.uniform(0.01, 1):.3f}"
        clades.append(f"({left}{length},{right}{length}){label}")
        k += 1
    return clades[0] + ";"


def balanced_newick(tips):
    """Halve recursively, the first half taking the extra tip."""
    if len(tips) == 1:
        return tips[0]
    mid = (len(tips) + 1) // 2
    return f"({balanced_newick(tips[:mid])},{balanced_newick(tips[mid:])})"


def caterpillar_newick(tips):
    """((((t0,t1),t2),t3),...)."""
    return "(" * (len(tips) - 1) + tips[0] + "," + "),".join(tips[1:]) + ");"


def skbio_tree_ilr(x, tree, feature_ids):
    """skbio's ILR with tree_basis(tree), the table's columns put into the tree's tip order."""
    basis, names = tree_basis(tree)
    tip_order = [feature_ids.index(t.name) for t in tree.tips()]
    return sk_ilr(x[..., tip_order], basis=basis.toarray()), names


def expected_names(skbio_names):
    return [n if n is not None else f"y{i}" for i, n in enumerate(skbio_names)]


def positive(rng, shape):
    return rng.lognormal(sigma=1.5, size=shape)


# ---------------------------------------------------------------------------
# element-wise functions
# ---------------------------------------------------------------------------


def test_closure_clr_against_skbio():
    rng = np.random.default_rng(0)
    x = positive(rng, (6, 9))
    np.testing.assert_allclose(closure(x), sk_closure(x), rtol=0, atol=1e-14)
    np.testing.assert_allclose(clr(x), sk_clr(x), rtol=0, atol=1e-12)
    counts = rng.poisson(2.0, size=(6, 9))
    np.testing.assert_allclose(clr_pseudocount(counts, 0.5), sk_clr(counts + 0.5), atol=1e-12)
    np.testing.assert_allclose(log_pseudocount(counts, 0.5), np.log(counts + 0.5), atol=0)
    np.testing.assert_allclose(center(x), x - x.mean(axis=1, keepdims=True), atol=1e-14)


def test_elementwise_hand_values():
    np.testing.assert_allclose(closure([[2, 2, 4], [1, 0, 3]]), [[0.25, 0.25, 0.5], [0.25, 0.0, 0.75]])
    np.testing.assert_allclose(clr(np.array([1.0, 2.0, 4.0])), [-LN2, 0.0, LN2], atol=1e-15)
    np.testing.assert_allclose(clr_pseudocount(np.array([0, 1, 3])), [-LN2, 0.0, LN2], atol=1e-15)
    np.testing.assert_allclose(log_pseudocount(np.array([0, 1, 3])), [0.0, LN2, 2 * LN2])
    np.testing.assert_allclose(center(np.array([1.0, 2.0, 6.0])), [-2.0, -1.0, 3.0])


def test_clr_pseudocount_sparse_gives_dense():
    rng = np.random.default_rng(1)
    counts = rng.poisson(0.3, size=(7, 11))
    sparse = scipy.sparse.csr_matrix(counts)
    out = clr_pseudocount(sparse, 1.0)
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, sk_clr(counts + 1.0), atol=1e-12)
    np.testing.assert_allclose(log_pseudocount(sparse, 2.0), np.log(counts + 2.0), atol=0)


def test_elementwise_torch_matches_numpy():
    rng = np.random.default_rng(2)
    x = positive(rng, (4, 6))
    for fn in (closure, clr, center, log_pseudocount, clr_pseudocount):
        t = fn(torch.from_numpy(x))
        assert isinstance(t, torch.Tensor) and t.dtype == torch.float64
        np.testing.assert_allclose(t.numpy(), fn(x), atol=1e-13)


def test_elementwise_do_not_modify_input():
    rng = np.random.default_rng(3)
    x = positive(rng, (3, 5))
    keep = x.copy()
    t = torch.from_numpy(x.copy())
    for fn in (closure, clr, center, log_pseudocount, clr_pseudocount):
        fn(x)
        fn(t)
    np.testing.assert_array_equal(x, keep)
    np.testing.assert_array_equal(t.numpy(), keep)


def test_elementwise_errors():
    with pytest.raises(InputError, match=r"rows? 1\b"):
        closure(np.array([[1, 2], [0, 0], [3, 0]]))
    with pytest.raises(InputError, match="the composition"):
        closure(np.zeros(4))
    with pytest.raises(InputError, match="clr_pseudocount"):
        clr(np.array([[1.0, 2.0], [0.0, 3.0]]))
    with pytest.raises(InputError, match="pseudocount must be a positive"):
        clr_pseudocount(np.ones(3), pseudocount=0)
    with pytest.raises(InputError, match="pseudocount must be a positive"):
        log_pseudocount(np.ones(3), pseudocount="one")
    with pytest.raises(InputError, match="non-negative"):
        log_pseudocount(np.array([1.0, -2.0]))


# ---------------------------------------------------------------------------
# Helmert basis
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("D", [2, 3, 17, 100])
def test_helmert_matches_skbio(D):
    rng = np.random.default_rng(D)
    basis = HelmertBasis(D)
    x = positive(rng, (5, D))
    np.testing.assert_allclose(basis.ilr(x), sk_ilr(x), rtol=0, atol=1e-10)
    np.testing.assert_allclose(basis.forward(np.log(x)), sk_ilr(x), rtol=0, atol=1e-10)
    y = rng.normal(size=(5, D - 1))
    np.testing.assert_allclose(basis.ilr_inv(y), sk_ilr_inv(y), rtol=0, atol=1e-10)
    # scipy.linalg.helmert(D) (full=False) is already the (D-1) x D matrix skbio uses
    np.testing.assert_allclose(basis.dense().T, helmert(D), rtol=0, atol=1e-14)


def test_helmert_hand_values():
    # D = 2: y = (log x0 - log x1) / sqrt(2)
    np.testing.assert_allclose(HelmertBasis(2).ilr(np.array([1.0, 2.0])), [-0.4901290717342735], atol=1e-15)
    # D = 3, x = (1, 2, 4): y0 = (0 - log 2)/sqrt(2), y1 = (0 + log 2 - 2 log 4)/sqrt(6) = -3 log 2/sqrt(6)
    y = HelmertBasis(3).ilr(np.array([1.0, 2.0, 4.0]))
    np.testing.assert_allclose(y, [-0.4901290717342735, -0.8489284545103327], atol=1e-15)
    s2, s6 = np.sqrt(2.0), np.sqrt(6.0)
    np.testing.assert_allclose(
        HelmertBasis(3).dense(), [[1 / s2, 1 / s6], [-1 / s2, 1 / s6], [0.0, -2 / s6]], atol=1e-15
    )
    y2 = np.array([-0.4901290717342735])
    np.testing.assert_allclose(HelmertBasis(2).ilr_inv(y2), [1 / 3, 2 / 3], atol=1e-15)


# ---------------------------------------------------------------------------
# tree bases against skbio.stats.composition.tree_basis
# ---------------------------------------------------------------------------


def _tree_case(kind, rng):
    """(skbio tree for tree_basis, feature ids, builder of our basis from the user order)."""
    if kind == "balanced":
        ids = [f"f{i}" for i in range(13)]
        newick = balanced_newick(ids) + ";"
        return TreeNode.read([newick]), ids, lambda user_ids: TreeBasis.balanced(13, ids)
    if kind in ("random", "random_treenode", "random_unnamed"):
        ids = [f"otu{i}" for i in range(25)]
        newick = random_newick(rng, ids, name_internal=kind != "random_unnamed")
        tree = TreeNode.read([newick])
        source = tree if kind == "random_treenode" else newick
        return tree, ids, lambda user_ids: TreeBasis.from_tree(source, user_ids)
    if kind == "caterpillar":
        ids = [f"t{i}" for i in range(30)]
        newick = caterpillar_newick(ids)
        return TreeNode.read([newick]), ids, lambda user_ids: TreeBasis.from_tree(newick, user_ids)
    if kind == "two_tips":
        ids = ["a", "b"]
        return TreeNode.read(["(a,b)r;"]), ids, lambda user_ids: TreeBasis.from_tree("(a,b)r;", user_ids)
    raise AssertionError(kind)


TREE_KINDS = ["balanced", "random", "random_treenode", "random_unnamed", "caterpillar", "two_tips"]


@pytest.mark.parametrize("kind", TREE_KINDS)
def test_tree_basis_matches_skbio(kind):
    rng = np.random.default_rng(zlib.crc32(kind.encode()))
    tree, ids, build = _tree_case(kind, rng)
    user_ids = list(ids) if kind == "balanced" else [ids[i] for i in rng.permutation(len(ids))]
    basis = build(user_ids)
    x = positive(rng, (6, len(ids)))
    expected, names = skbio_tree_ilr(x, tree, user_ids)
    np.testing.assert_allclose(basis.ilr(x), expected, rtol=0, atol=1e-10)
    assert basis.balance_names == expected_names(names)
    assert basis.feature_ids == tuple(user_ids)
    y = rng.normal(size=(6, len(ids) - 1))
    tip_order = [user_ids.index(t.name) for t in tree.tips()]
    expected_inv = np.empty_like(x)
    expected_inv[:, tip_order] = sk_ilr_inv(y, basis=tree_basis(tree)[0].toarray())
    np.testing.assert_allclose(basis.ilr_inv(y), expected_inv, rtol=0, atol=1e-10)


def test_tree_hand_values():
    # ((b,c)a,d)root: root = sqrt(2/3) log d - sqrt(1/6) (log b + log c); a = (log c - log b)/sqrt(2)
    basis = TreeBasis.from_tree("((b,c)a,d)root;", ["b", "c", "d"])
    assert basis.balance_names == ["root", "a"]
    y = basis.ilr(np.array([1.0, 2.0, 4.0]))
    np.testing.assert_allclose(y, [0.8489284545103327, 0.4901290717342735], atol=1e-15)
    s2, s6 = np.sqrt(2.0), np.sqrt(6.0)
    psi = [[-1 / s6, -1 / s2], [-1 / s6, 1 / s2], [2 / s6, 0.0]]  # rows b, c, d
    np.testing.assert_allclose(basis.dense(), psi, atol=1e-15)
    two = TreeBasis.from_tree("(a,b);", ["b", "a"])  # numerator = second child = b
    np.testing.assert_allclose(two.ilr(np.array([2.0, 1.0])), [LN2 / np.sqrt(2.0)], atol=1e-15)


def test_multifurcations_resolved_like_skbio_bifurcate():
    rng = np.random.default_rng(5)
    newick = "((a,b,c,d)x,(e,f)y,g,(h,i,j)z)root;"
    ids = list("abcdefghij")
    user_ids = [ids[i] for i in rng.permutation(len(ids))]
    with pytest.warns(UserWarning, match="resolved 3 multifurcating nodes"):
        basis = TreeBasis.from_tree(newick, user_ids)
    reference = TreeNode.read([newick]).bifurcate()
    x = positive(rng, (4, len(ids)))
    expected, names = skbio_tree_ilr(x, reference, user_ids)
    np.testing.assert_allclose(basis.ilr(x), expected, rtol=0, atol=1e-10)
    assert basis.balance_names == expected_names(names)


def test_extra_tips_pruned_with_warning():
    rng = np.random.default_rng(6)
    ids = ["a", "b", "c", "d", "e"]
    # x1 and x2 are not features: n2 and n4 lose a child and are collapsed in place
    newick = "((a,b)n1,((c,x1)n2,(d,(e,x2)n4)n3)n5)root;"
    with pytest.warns(UserWarning, match=r"pruned 2 tips.*'x1', 'x2'"):
        basis = TreeBasis.from_tree(newick, ids[::-1])
    hand_pruned = TreeNode.read(["((a,b)n1,(c,(d,e)n3)n5)root;"])
    x = positive(rng, (5, 5))
    expected, names = skbio_tree_ilr(x, hand_pruned, ids[::-1])
    np.testing.assert_allclose(basis.ilr(x), expected, rtol=0, atol=1e-10)
    assert basis.balance_names == ["root", "n1", "n5", "n3"] == names
    # where skbio's shear() keeps child positions, it is the same tree
    newick2 = "((a,b)n1,(d,(c,x)n2)n3)root;"
    with pytest.warns(UserWarning, match="pruned 1 tips"):
        basis2 = TreeBasis.from_tree(newick2, ["a", "b", "c", "d"])
    sheared = TreeNode.read([newick2]).shear(["a", "b", "c", "d"])
    expected2, _ = skbio_tree_ilr(x[:, :4], sheared, ["a", "b", "c", "d"])
    np.testing.assert_allclose(basis2.ilr(x[:, :4]), expected2, rtol=0, atol=1e-10)


def test_single_child_chain_keeps_position_and_lower_name():
    basis = TreeBasis.from_tree("(((a,b)inner)outer,c)root;", ["a", "b", "c"])
    reference = TreeNode.read(["((a,b)inner,c)root;"])
    x = positive(np.random.default_rng(7), (3, 3))
    expected, names = skbio_tree_ilr(x, reference, ["a", "b", "c"])
    np.testing.assert_allclose(basis.ilr(x), expected, rtol=0, atol=1e-12)
    assert basis.balance_names == ["root", "inner"]


def test_missing_features_are_an_error_listing_them():
    newick = "((a,b)n1,(c,(d,e)n2)n3)root;"
    with pytest.raises(InputError, match=r"2 of 5 features are not tips of the tree: 'zz', 'yy'") as err:
        TreeBasis.from_tree(newick, ["a", "zz", "c", "yy", "e"])
    assert "'b', 'd'" in str(err.value)  # tips not in the table, listed separately
    many = [f"m{i}" for i in range(15)]
    with pytest.raises(InputError, match=r"15 of 16 .*'m9' \(and 5 more\)"):
        TreeBasis.from_tree(newick, ["a"] + many)


def test_newick_parsing_details(tmp_path):
    # quoted labels, branch lengths, comments, underscores kept literally, support values
    newick = "(('tax a':0.1,tax_b:0.2)0.95:0.3[&comment],('it''s':1e-3,d)'clade x':2)100;"
    ids = ["tax a", "tax_b", "it's", "d"]
    basis = TreeBasis.from_tree(newick, ids)
    assert basis.balance_names == ["y0", "y1", "clade x"]
    path = tmp_path / "tree.nwk"
    path.write_text(newick + "\n")
    from_file = TreeBasis.from_tree(path, ids)
    from_str_path = TreeBasis.from_tree(str(path), ids)
    np.testing.assert_array_equal(from_file.dense(), basis.dense())
    np.testing.assert_array_equal(from_str_path.dense(), basis.dense())
    reference = TreeNode.read([newick], convert_underscores=False)
    x = positive(np.random.default_rng(8), (3, 4))
    expected, _ = skbio_tree_ilr(x, reference, ids)
    np.testing.assert_allclose(basis.ilr(x), expected, rtol=0, atol=1e-12)
    for bad, why in [("((a,b),c;", "unbalanced"), ("((a,b)),c);", "closes more parentheses"),
                     ("(a:x,b);", "length"), ("(a b,c);", "whitespace")]:
        with pytest.raises(InputError, match=f"cannot parse the Newick tree from the given "
                                             f"string: .*{why}"):
            TreeBasis.from_tree(bad, ["a", "b", "c"])
    # a missing final ';' is tolerated; text after the first tree is ignored
    for lenient in ["((a,b),c)", "((a,b),c);((a,c),b);"]:
        np.testing.assert_array_equal(TreeBasis.from_tree(lenient, ["a", "b", "c"]).dense(),
                                      TreeBasis.from_tree("((a,b),c);", ["a", "b", "c"]).dense())
    with pytest.raises(InputError, match="neither a Newick string"):
        TreeBasis.from_tree(str(tmp_path / "missing.nwk"), ["a", "b"])
    with pytest.raises(InputError, match="same feature id"):
        TreeBasis.from_tree("((a,b),a);", ["a", "b"])


def test_duplicate_internal_names_fall_back_to_index():
    basis = TreeBasis.from_tree("((a,b)g,((c,d)g,e)h)y0;", list("abcde"))
    # breadth first: y0 (root), g, h, g -> the repeated "g" become y1 and y3
    assert basis.balance_names == ["y0", "y1", "h", "y3"]


def test_helmert_is_a_caterpillar():
    D = 12
    # node i has numerator = parts 0..i-1 (second child) and denominator = part i (first child)
    newick = "t0"
    for i in range(1, D):
        newick = f"(t{i},{newick})"
    tree = TreeBasis.from_tree(newick + ";", [f"t{i}" for i in range(D)])
    np.testing.assert_allclose(tree.dense()[:, ::-1], HelmertBasis(D).dense(), atol=1e-15)


# ---------------------------------------------------------------------------
# identities shared by every basis
# ---------------------------------------------------------------------------


def _bases():
    rng = np.random.default_rng(9)
    ids = [f"s{i}" for i in range(19)]
    return {
        "helmert2": HelmertBasis(2),
        "helmert19": HelmertBasis(19),
        "balanced2": TreeBasis.balanced(2),
        "balanced19": TreeBasis.balanced(19),
        "random19": TreeBasis.from_tree(random_newick(rng, ids), [ids[i] for i in rng.permutation(19)]),
        "caterpillar19": TreeBasis.from_tree(caterpillar_newick(ids), ids[::-1]),
    }


BASES = _bases()


@pytest.fixture(params=sorted(BASES))
def basis(request):
    return BASES[request.param]


def test_dense_is_orthonormal_and_spans_clr(basis):
    D = basis.n_features
    psi = basis.dense()
    assert psi.shape == (D, D - 1)
    np.testing.assert_allclose(psi.T @ psi, np.eye(D - 1), atol=1e-13)
    np.testing.assert_allclose(psi.T @ np.ones(D), 0.0, atol=1e-13)
    np.testing.assert_allclose(psi @ psi.T, np.eye(D) - 1.0 / D, atol=1e-13)


def test_fast_transforms_equal_dense(basis):
    rng = np.random.default_rng(10)
    D = basis.n_features
    psi = basis.dense()
    v = rng.normal(size=(2, 3, D))
    y = rng.normal(size=(2, 3, D - 1))
    np.testing.assert_allclose(basis.forward(v), v @ psi, atol=1e-12)
    np.testing.assert_allclose(basis.inverse(y), y @ psi.T, atol=1e-12)
    np.testing.assert_allclose(basis.forward(v[0, 0]), v[0, 0] @ psi, atol=1e-12)  # 1-D input
    assert len(basis.balance_names) == D - 1


def test_round_trips(basis):
    rng = np.random.default_rng(11)
    D = basis.n_features
    x = closure(positive(rng, (8, D)))
    np.testing.assert_allclose(basis.ilr_inv(basis.ilr(x)), x, rtol=1e-12, atol=0)
    v = rng.normal(size=(8, D))
    np.testing.assert_allclose(basis.inverse(basis.forward(v)), center(v), atol=1e-12)
    y = rng.normal(size=(8, D - 1))
    np.testing.assert_allclose(basis.forward(basis.inverse(y)), y, atol=1e-12)
    np.testing.assert_allclose(basis.inverse(y).sum(axis=-1), 0.0, atol=1e-12)


def test_inputs_not_modified_and_dtypes(basis):
    rng = np.random.default_rng(12)
    D = basis.n_features
    v = rng.normal(size=(4, D))
    y = rng.normal(size=(4, D - 1))
    v0, y0 = v.copy(), y.copy()
    tv, ty = torch.from_numpy(v.copy()), torch.from_numpy(y.copy())
    for f, arg in ((basis.forward, v), (basis.inverse, y), (basis.ilr, np.exp(v)), (basis.ilr_inv, y)):
        f(arg)
    basis.forward(tv), basis.inverse(ty)
    np.testing.assert_array_equal(v, v0)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(tv.numpy(), v0)
    np.testing.assert_array_equal(ty.numpy(), y0)
    assert basis.forward(v.astype(np.float32)).dtype == np.float32
    assert basis.inverse(y.astype(np.float32)).dtype == np.float32
    assert basis.forward(np.ones((2, D), dtype=np.int64)).dtype == np.float64
    with pytest.raises(InputError, match=f"length {D}"):
        basis.forward(np.ones((2, D + 1)))
    with pytest.raises(InputError, match=f"length {D - 1}"):
        basis.inverse(np.ones(D))


def test_torch_matches_numpy(basis):
    rng = np.random.default_rng(13)
    D = basis.n_features
    x = positive(rng, (5, D))
    y = rng.normal(size=(5, D - 1))
    for f, arg in ((basis.forward, np.log(x)), (basis.inverse, y), (basis.ilr, x), (basis.ilr_inv, y)):
        ref = f(arg)
        t64 = f(torch.from_numpy(arg))
        assert isinstance(t64, torch.Tensor) and t64.dtype == torch.float64
        np.testing.assert_allclose(t64.numpy(), ref, rtol=0, atol=1e-12)
        t32 = f(torch.from_numpy(arg).float())
        assert t32.dtype == torch.float32
        np.testing.assert_allclose(t32.numpy(), ref, rtol=1e-5, atol=1e-5)


GRADCHECK_BASES = {
    "helmert5": HelmertBasis(5),
    "balanced6": TreeBasis.balanced(6),
    "tree6": TreeBasis.from_tree("((a,(b,c)),((d,e),f));", list("fedcba")),
}


@pytest.mark.parametrize("name", sorted(GRADCHECK_BASES))
def test_torch_gradcheck(name):
    basis = GRADCHECK_BASES[name]
    D = basis.n_features
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(2, D, dtype=torch.float64, generator=gen, requires_grad=True)
    y = torch.randn(2, D - 1, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(basis.forward, (v,))
    assert torch.autograd.gradcheck(basis.inverse, (y,))
    assert torch.autograd.gradcheck(basis.ilr_inv, (y,))
    assert torch.autograd.gradcheck(basis.ilr, (v.detach().exp().requires_grad_(),))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_cuda_stays_on_device(basis):
    rng = np.random.default_rng(14)
    v = rng.normal(size=(3, basis.n_features))
    out = basis.forward(torch.from_numpy(v).cuda())
    assert out.device.type == "cuda"
    np.testing.assert_allclose(out.cpu().numpy(), basis.forward(v), atol=1e-12)
    back = basis.inverse(out.float())
    assert back.device.type == "cuda" and back.dtype == torch.float32


def test_config_round_trip(basis):
    config = json.loads(json.dumps(basis.to_config()))
    again = basis_from_config(config)
    assert type(again) is type(basis)
    assert again.balance_names == basis.balance_names
    assert again.feature_ids == basis.feature_ids
    rng = np.random.default_rng(15)
    v = rng.normal(size=(3, basis.n_features))
    np.testing.assert_array_equal(again.forward(v), basis.forward(v))
    y = rng.normal(size=(3, basis.n_features - 1))
    np.testing.assert_array_equal(again.inverse(y), basis.inverse(y))


def test_config_errors():
    # root [0, 4) splits into [0, 2) and [2, 4), but no node covers [2, 4)
    config = {
        "kind": "tree",
        "tip_features": [0, 1, 2, 3],
        "start": [0, 0, 1],
        "split": [2, 1, 2],
        "stop": [4, 2, 3],
    }
    with pytest.raises(InputError, match=r"bifurcating tree \(at range \[2, 4\]\)"):
        basis_from_config(config)
    with pytest.raises(InputError, match="unknown basis kind 'pca'"):
        basis_from_config({"kind": "pca"})
    with pytest.raises(InputError, match="incomplete"):
        basis_from_config({"kind": "tree", "start": [0]})
    with pytest.raises(InputError, match="unique"):
        HelmertBasis(3, ["a", "b", "a"])
    with pytest.raises(InputError, match="n_features must be >= 2"):
        HelmertBasis(1)


def test_dense_refused_at_large_D():
    with pytest.raises(ValueError, match=r"D = 100000 .*79,999,200,000 bytes"):
        HelmertBasis(100_000).dense()
    with pytest.raises(ValueError, match="max_bytes"):
        TreeBasis.balanced(300).dense(max_bytes=1000)
    assert TreeBasis.balanced(300).dense(max_bytes=300 * 299 * 8).shape == (300, 299)


# ---------------------------------------------------------------------------
# scale
# ---------------------------------------------------------------------------


def test_large_D_is_exact_and_a_deep_tree_needs_no_recursion():
    D = 100_000
    rng = np.random.default_rng(16)
    v = rng.normal(size=(4, D))
    ids = [f"t{i}" for i in range(D)]
    # (t99999,(t99998,(...(t1,t0)))): a caterpillar 10^5 deep whose balances are Helmert's, reversed
    newick = "".join(f"(t{i}," for i in range(D - 1, 0, -1)) + "t0" + ")" * (D - 1) + ";"
    caterpillar = TreeBasis.from_tree(newick, ids)  # 10^5 deep: no recursion limit hit
    results = {}
    for name, basis in {
        "helmert": HelmertBasis(D),
        "balanced": TreeBasis.balanced(D),
        "caterpillar": caterpillar,
    }.items():
        y = basis.forward(v)
        back = basis.inverse(y)
        np.testing.assert_allclose(back, center(v), atol=1e-9)
        yt = basis.forward(torch.from_numpy(v))
        np.testing.assert_allclose(yt.numpy(), y, atol=1e-10)
        results[name] = y
    # two different algorithms for the same basis (Helmert = caterpillar, balances reversed)
    np.testing.assert_allclose(results["caterpillar"][:, ::-1], results["helmert"], atol=1e-9)

def test_float32_accumulates_in_float64():
    # float32 prefix sums over 10^5 parts lose ~1e-5; accumulated in float64 only the
    # final rounding to float32 (~1e-7 here) remains
    D = 100_000
    rng = np.random.default_rng(17)
    v32 = rng.normal(size=(2, D)).astype(np.float32)
    y32 = rng.normal(size=(2, D - 1)).astype(np.float32)
    for basis in (HelmertBasis(D), TreeBasis.balanced(D)):
        exact_fwd = basis.forward(v32.astype(np.float64))
        exact_inv = basis.inverse(y32.astype(np.float64))
        for fwd, inv in (
            (basis.forward(v32), basis.inverse(y32)),
            (basis.forward(torch.from_numpy(v32)).numpy(), basis.inverse(torch.from_numpy(y32)).numpy()),
        ):
            assert fwd.dtype == inv.dtype == np.float32
            np.testing.assert_allclose(fwd, exact_fwd, rtol=0, atol=2e-6)
            np.testing.assert_allclose(inv, exact_inv, rtol=0, atol=2e-6)
