"""mvae.training.optim.Adam against torch.optim.Adam, the independent reference."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from mvae.training.optim import Adam


class _Small(torch.nn.Module):
    """Two layers, a scalar parameter and a frozen-by-usage parameter that never gets a gradient."""

    def __init__(self, dtype):
        super().__init__()
        self.a = torch.nn.Linear(6, 5).to(dtype)
        self.b = torch.nn.Linear(5, 3).to(dtype)
        self.scale = torch.nn.Parameter(torch.tensor(0.3, dtype=dtype))
        self.unused = torch.nn.Parameter(torch.ones(4, dtype=dtype))

    def forward(self, x):
        return self.b(torch.tanh(self.a(x))) * self.scale


def _pair(dtype, seed=0):
    torch.manual_seed(seed)
    a = _Small(dtype)
    b = _Small(dtype)
    b.load_state_dict(a.state_dict())
    return a, b


def _data(dtype, steps, seed=1):
    rng = np.random.default_rng(seed)
    return [(torch.tensor(rng.normal(size=(8, 6)), dtype=dtype),
             torch.tensor(rng.normal(size=(8, 3)), dtype=dtype)) for _ in range(steps)]


def _run(module, opt, data):
    for x, y in data:
        opt.zero_grad(set_to_none=True)
        (module(x) - y).pow(2).sum().backward()
        opt.step()


def _assert_same(m1, m2, rtol, atol):
    for (name, p), q in zip(m1.named_parameters(), m2.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=rtol, atol=atol,
                                   err_msg=name)


TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-6, 1e-6)}


@pytest.mark.parametrize("fused", [None, False], ids=["fused-kernel", "tensor-ops"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_adam_takes_torch_adams_steps(fused, dtype):
    """50 steps from the same start: the same parameter trajectory as torch's reference
    (single-tensor) Adam with the same learning rate and default betas and eps."""
    ours_m, ref_m = _pair(dtype)
    data = _data(dtype, 50)
    ours = Adam(ours_m.parameters(), lr=1e-2, fused=fused)
    ref = torch.optim.Adam(ref_m.parameters(), lr=1e-2, foreach=False)
    _run(ours_m, ours, data)
    _run(ref_m, ref, data)
    _assert_same(ours_m, ref_m, *TOL[dtype])
    moved = ours_m.a.weight.detach() - _pair(dtype)[0].a.weight.detach()
    assert float(moved.abs().max()) > 0.05  # the parameters did travel
    assert torch.equal(ours_m.unused, torch.ones(4, dtype=dtype))  # no gradient: untouched
    unused_at = [n for n, _ in ours_m.named_parameters()].index("unused")
    assert unused_at not in ours.state and len(ours.state) == 5  # ... and no state for it


def test_fused_path_is_bitwise_torchs_fused_adam():
    """The fused path calls the kernel torch.optim.Adam(fused=True) calls, in the same way."""
    ours_m, ref_m = _pair(torch.float32)
    data = _data(torch.float32, 20)
    _run(ours_m, Adam(ours_m.parameters(), lr=3e-3), data)
    _run(ref_m, torch.optim.Adam(ref_m.parameters(), lr=3e-3, fused=True), data)
    for p, q in zip(ours_m.parameters(), ref_m.parameters()):
        assert torch.equal(p, q)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_path_on_cuda_is_torchs_fused_adam():
    ours_m, ref_m = (m.cuda() for m in _pair(torch.float32))
    data = [(x.cuda(), y.cuda()) for x, y in _data(torch.float32, 20)]
    ours = Adam(ours_m.parameters(), lr=3e-3)
    _run(ours_m, ours, data)
    _run(ref_m, torch.optim.Adam(ref_m.parameters(), lr=3e-3, fused=True), data)
    assert ours.state[0]["step"].device.type == "cuda"
    for p, q in zip(ours_m.parameters(), ref_m.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("direction", ["torch-to-ours", "ours-to-torch"])
def test_state_dict_resumes_across_implementations(direction):
    """A checkpoint's optimiser state written by one Adam continues under the other as if
    uninterrupted (checkpoints written before this class existed still resume)."""
    dtype = torch.float64
    data = _data(dtype, 30)
    whole_m, _ = _pair(dtype)
    _run(whole_m, torch.optim.Adam(whole_m.parameters(), lr=1e-2, foreach=False), data)

    first_m, _ = _pair(dtype)
    make_first, make_second = ((lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=True)),
                               (lambda ps: Adam(ps, lr=1e-2)))
    if direction == "ours-to-torch":
        make_first, make_second = make_second, make_first
    first = make_first(first_m.parameters())
    _run(first_m, first, data[:15])
    saved = first.state_dict()
    second_m, _ = _pair(dtype)
    second_m.load_state_dict(first_m.state_dict())
    second = make_second(second_m.parameters())
    second.load_state_dict(saved)
    _run(second_m, second, data[15:])
    _assert_same(second_m, whole_m, *TOL[dtype])


def test_state_dict_has_torchs_layout():
    m, _ = _pair(torch.float32)
    opt = Adam(m.parameters(), lr=1e-3)
    _run(m, opt, _data(torch.float32, 2))
    sd = opt.state_dict()
    ref = torch.optim.Adam(_pair(torch.float32)[1].parameters(), lr=1e-3, fused=True)
    assert set(sd["param_groups"][0]) == set(ref.state_dict()["param_groups"][0])
    assert sd["param_groups"][0]["params"] == list(range(6))
    unused_at = [n for n, _ in m.named_parameters()].index("unused")
    assert sorted(sd["state"]) == [i for i in range(6) if i != unused_at]  # none for it
    assert float(sd["state"][0]["step"]) == 2.0
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}


def test_zero_grad_fills_with_zeros_or_drops():
    m, _ = _pair(torch.float32)
    opt = Adam(m.parameters())
    _run(m, opt, _data(torch.float32, 1))
    opt.zero_grad(set_to_none=False)
    assert torch.equal(m.a.weight.grad, torch.zeros_like(m.a.weight))
    opt.zero_grad()
    assert m.a.weight.grad is None


@pytest.mark.parametrize("kwargs, match", [
    ({"lr": -1.0}, "lr must be"),
    ({"lr": float("nan")}, "lr must be"),
    ({"betas": (1.0, 0.999)}, "betas must"),
    ({"eps": -1e-8}, "eps must"),
    ({"fused": True}, "fused must be None or False"),
])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Adam([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_empty_parameter_list_is_refused():
    with pytest.raises(ValueError, match="empty parameter list"):
        Adam([])


def test_a_fit_does_not_import_torchs_compiler():
    """torch.optim imports torch._dynamo on first use (a second of CPU on every fit); a fit with
    checkpoints, its transform and reading a checkpoint's optimiser state back must not."""
    code = textwrap.dedent("""
        import os, sys, tempfile, warnings
        import numpy as np
        import mvae
        from mvae.training.checkpoint import load_checkpoint
        from mvae.training.optim import Adam
        X = np.random.default_rng(0).poisson(5.0, size=(60, 12))
        with warnings.catch_warnings(), tempfile.TemporaryDirectory() as d:
            warnings.simplefilter("ignore")
            ck = os.path.join(d, "ck.pt")
            m = mvae.MultinomialVAE(n_latent=2, max_epochs=2, random_state=0, threads=1)
            m.fit(X, checkpoint=ck, checkpoint_every=1)
            m.transform(X)
            Adam(m.module_.parameters()).load_state_dict(load_checkpoint(ck)["optimiser"])
        print(sorted(k for k in sys.modules if k.startswith("torch._dynamo")))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
