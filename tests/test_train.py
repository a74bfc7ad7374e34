"""Pieces of the training loop checked against torch's own implementations."""

import os

import numpy as np
import pytest
import torch

from mvae.training.loop import _adam, _clip_gradients


def _params(seed, scale):
    rng = np.random.default_rng(seed)
    ps = [torch.nn.Parameter(torch.tensor(rng.normal(size=s))) for s in [(5, 3), (3,), ()]]
    for p in ps:
        p.grad = torch.tensor(rng.normal(size=p.shape) * scale)
    return ps


@pytest.mark.parametrize("scale", [0.01, 1.0, 50.0])
def test_clipping_matches_clip_grad_norm(scale):
    """Same result as torch.nn.utils.clip_grad_norm_ below and above the threshold."""
    ours, theirs = _params(0, scale), _params(0, scale)
    before = [p.grad.clone() for p in ours]
    assert _clip_gradients(ours, 2.0)
    torch.nn.utils.clip_grad_norm_(theirs, 2.0)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-12, atol=1e-15)
    total = float(torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in before])))
    if total <= 2.0:  # untouched, bit for bit, when no clipping is needed
        assert all(torch.equal(a.grad, b) for a, b in zip(ours, before))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_clipping_reports_non_finite_gradients(bad):
    ps = _params(1, 1.0)
    ps[0].grad[1, 2] = bad
    assert not _clip_gradients(ps, 2.0)


def test_fused_adam_takes_the_same_steps_as_the_default():
    """The fused kernel used for training against torch's reference (for-loop) Adam."""
    torch.manual_seed(0)
    a, b = torch.nn.Linear(6, 4).double(), torch.nn.Linear(6, 4).double()
    b.load_state_dict(a.state_dict())
    opt_a, opt_b = _adam(a, 1e-2), torch.optim.Adam(b.parameters(), lr=1e-2, foreach=False)
    assert opt_a.defaults.get("fused")
    x = torch.randn(8, 6, dtype=torch.float64)
    for _ in range(5):
        for m, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            m(x).pow(2).sum().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-10)


def test_reuse_freed_memory_changes_no_number_and_is_a_no_op_without_glibc(monkeypatch):
    """The allocator setting is about speed only (its effect on page faults is measured by
    benchmarks/throughput.py): a tensor computed inside equals one computed outside, and without
    glibc's mallopt the block does nothing."""
    import ctypes

    from mvae.training.loop import reuse_freed_memory

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5000, generator=g)
    want = torch.log_softmax(x @ x[:10].T, -1)
    with reuse_freed_memory():
        got = torch.log_softmax(x @ x[:10].T, -1)
    assert torch.equal(got, want)

    def no_libc(*args, **kwargs):
        raise OSError("no C library here")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    with reuse_freed_memory():
        assert torch.equal(torch.log_softmax(x @ x[:10].T, -1), want)


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux's /proc")
def test_memory_freed_inside_reuse_freed_memory_goes_back_to_the_system_on_exit():
    """Inside the block a freed 256 MB buffer stays in the heap (mmap is off); after it, the
    process's resident memory is back near where it was (malloc_trim), not 256 MB higher."""
    from mvae.training.loop import reuse_freed_memory

    page = os.sysconf("SC_PAGE_SIZE")

    def resident_mb():
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * page / 2**20

    before = resident_mb()
    with reuse_freed_memory():
        big = torch.ones(64 * 2**20)  # 256 MB, written
        inside = resident_mb()
        del big
    after = resident_mb()
    assert inside - before > 200  # it was resident
    assert after - before < 64  # and is given back
