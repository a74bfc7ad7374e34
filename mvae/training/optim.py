r"""Adam for the training loop, without the compiler that ``torch.optim`` imports.

Every ``torch.optim.Optimizer`` imports ``torch._dynamo`` (the graph compiler behind
``torch.compile``) the first time it is used: ``add_param_group``, ``zero_grad``, ``state_dict``
and ``load_state_dict`` are wrapped by ``torch._disable_dynamo``, and ``step`` by
``_use_grad_for_differentiable``, each of which imports it on its first call. No constructor
flag (``foreach``, ``fused``, ``capturable``, ``differentiable``) avoids it, and a fit that never
compiles anything paid that import on every run (benchmarks/results/fixed_costs/README.md).

:class:`Adam` takes the same steps as ``torch.optim.Adam`` with its defaults (no weight decay,
no AMSGrad): for each parameter :math:`\theta` with gradient :math:`g` at step :math:`t`,

.. math::

    m_t = \beta_1 m_{t-1} + (1 - \beta_1) g, \qquad
    v_t = \beta_2 v_{t-1} + (1 - \beta_2) g^2, \\
    \theta_t = \theta_{t-1} - \frac{\gamma}{1 - \beta_1^t}\,
        \frac{m_t}{\sqrt{v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

(Kingma & Ba 2015, in the form torch computes it). On CPU and CUDA the update is torch's own
fused kernel, the one ``torch.optim.Adam(fused=True)`` calls: one pass per tensor instead of
five, which matters at large D where the optimiser is a visible share of a step. Elsewhere it is
the same update written with in-place tensor operations, as ``torch.optim.Adam(foreach=False)``
computes it. :meth:`Adam.state_dict` has ``torch.optim.Adam``'s layout, so a checkpoint written
by either resumes with the other.

References
----------
Kingma DP, Ba J (2015) Adam: a method for stochastic optimization. ICLR.
"""

from __future__ import annotations

import math

import torch

__all__ = ["Adam"]

#: Devices whose parameters are updated by torch's fused Adam kernel.
FUSED_DEVICES = ("cpu", "cuda")


class Adam:
    """Adam over a fixed list of parameters (see the module docstring for the update).

    Parameters
    ----------
    params : iterable of torch.Tensor
        The parameters, in a fixed order (the order of :meth:`state_dict`'s indices).
        Parameters without a gradient at a step are left alone at that step.
    lr : float
        Learning rate :math:`\\gamma`.
    betas : (float, float)
        :math:`(\\beta_1, \\beta_2)`, each in [0, 1).
    eps : float
        :math:`\\epsilon`, added to the denominator.
    fused : bool or None
        Use torch's fused kernel: ``None`` where the parameters' device has one (CPU, CUDA),
        ``False`` never (the in-place tensor operations everywhere).

    Attributes
    ----------
    state : dict of int to dict
        Per parameter position: ``"step"`` (a float32 scalar tensor), ``"exp_avg"`` (:math:`m`)
        and ``"exp_avg_sq"`` (:math:`v`), created at the parameter's first step.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 *, fused: bool | None = None):
        self.params = list(params)
        if not self.params:
            raise ValueError("Adam got an empty parameter list")
        if not all(isinstance(p, torch.Tensor) for p in self.params):
            raise TypeError("Adam takes an iterable of tensors (e.g. module.parameters())")
        beta1, beta2 = (float(b) for b in betas)
        if not (math.isfinite(lr) and lr >= 0):
            raise ValueError(f"lr must be a finite number >= 0; got {lr!r}")
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"betas must each be in [0, 1); got {tuple(betas)!r}")
        if not (math.isfinite(eps) and eps >= 0):
            raise ValueError(f"eps must be a finite number >= 0; got {eps!r}")
        if fused not in (None, False):
            raise ValueError(f"fused must be None or False; got {fused!r}")
        self.lr, self.betas, self.eps = float(lr), (beta1, beta2), float(eps)
        self.fused = fused
        self.state: dict[int, dict[str, torch.Tensor]] = {}

    def _uses_fused(self, p: torch.Tensor) -> bool:
        return (self.fused is None and p.device.type in FUSED_DEVICES
                and p.is_floating_point())

    def _new_state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        # the fused kernel reads the step count from a float32 tensor on the parameter's device;
        # the tensor-operation path keeps it on the CPU, as torch does, to read it without a sync
        step_device = p.device if self._uses_fused(p) else torch.device("cpu")
        return {"step": torch.zeros((), dtype=torch.float32, device=step_device),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every parameter's gradient (drop it, or fill it with zeros)."""
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_()
                p.grad.requires_grad_(False)
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of every parameter that has a gradient."""
        fused: dict[tuple, list[list[torch.Tensor]]] = {}  # (device, dtype) -> tensor lists
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue
            if g.is_sparse:
                raise RuntimeError("Adam does not take sparse gradients")
            state = self.state.get(i)
            if state is None:
                state = self.state[i] = self._new_state(p)
            if self._uses_fused(p):
                lists = fused.setdefault((p.device, p.dtype), [[], [], [], [], []])
                for lst, t in zip(lists, (p, g, state["exp_avg"], state["exp_avg_sq"],
                                          state["step"])):
                    lst.append(t)
            else:
                self._single_step(p, g, state)
        beta1, beta2 = self.betas
        for params, grads, exp_avgs, exp_avg_sqs, steps in fused.values():
            torch._foreach_add_(steps, 1)
            # torch's fused Adam kernel, as torch.optim.Adam(fused=True) calls it
            torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=self.lr,
                               beta1=beta1, beta2=beta2, weight_decay=0.0, eps=self.eps,
                               amsgrad=False, maximize=False)

    def _single_step(self, p, g, state) -> None:
        """The update with in-place tensor operations, in torch's order of operations."""
        beta1, beta2 = self.betas
        state["step"] += 1
        t = float(state["step"])
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.lerp_(g, 1 - beta1)  # m_t
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)  # v_t
        step_size = self.lr / (1 - beta1**t)
        denom = (v.sqrt() / math.sqrt(1 - beta2**t)).add_(self.eps)
        p.addcdiv_(m, denom, value=-step_size)

    def state_dict(self) -> dict:
        """The optimiser's state in ``torch.optim.Adam``'s layout: ``{"state": {position:
        {"step", "exp_avg", "exp_avg_sq"}}, "param_groups": [settings and positions]}``. The
        tensors are the live ones (``torch.save`` copies them), as in torch."""
        group = {"lr": self.lr, "betas": self.betas, "eps": self.eps, "weight_decay": 0.0,
                 "amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
                 "differentiable": False, "fused": self.fused is None,
                 "decoupled_weight_decay": False, "params": list(range(len(self.params)))}
        return {"state": {i: dict(s) for i, s in self.state.items()}, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Continue from :meth:`state_dict` (of this class or of ``torch.optim.Adam`` with one
        parameter group, no AMSGrad and no weight decay) for the same parameters in the same
        order. The settings (lr, betas, eps) are taken from it, as torch does."""
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError(f"the optimiser state is for {sum(len(g['params']) for g in groups)} "
                             f"parameters in {len(groups)} groups, not {len(self.params)} in one")
        group = groups[0]
        if group.get("amsgrad") or group.get("weight_decay") or group.get("maximize"):
            raise ValueError("the optimiser state uses AMSGrad, weight decay or maximize, which "
                             "this Adam does not")
        position = {int(pid): k for k, pid in enumerate(group["params"])}
        state = {}
        for pid, saved in state_dict["state"].items():
            k = position[int(pid)]
            p = self.params[k]
            fresh = self._new_state(p)
            step = saved["step"]
            fresh["step"].fill_(float(step))
            for name in ("exp_avg", "exp_avg_sq"):
                if saved[name].shape != p.shape:
                    raise ValueError(f"the optimiser state of parameter {k} has shape "
                                     f"{tuple(saved[name].shape)}, not {tuple(p.shape)}")
                fresh[name].copy_(saved[name])
            state[k] = fresh
        beta1, beta2 = (float(b) for b in group["betas"])
        self.lr, self.betas, self.eps = float(group["lr"]), (beta1, beta2), float(group["eps"])
        self.state = state
