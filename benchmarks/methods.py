"""The solvers under comparison, each as ``make(field, y0, t1, steps) -> solve`` on fixed steps.

``solve()`` integrates from 0 to ``t1`` in ``steps`` equal steps and returns ``z(t1)``, ready for
a backward pass. Ours are called through the public API (:func:`mali_func.odeint`); the others
through their own public entry points:

* torchdiffeq ``odeint`` / ``odeint_adjoint`` with classical RK4 (four field evaluations a step;
  the adjoint solves the augmented system backwards with the same fixed grid);
* ours also with ``method="rk4"`` / ``"tsit5"``: the reversible coupling of that tableau
  (default coupling), eight / fourteen field evaluations a step;
* ours with the plain (not reversible) RK4 / Tsit5 step, ``coupling=None``: four / seven field
  evaluations a step, differentiated by ``gradient="checkpoint"`` (default budget, or 64 states)
  or by backprop;
* TorchDiffEqPack ``odesolve_adjoint_sym12`` with ``fixedstep_sym12async``: the MALI paper's own
  package (ALF, constant memory).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

Solve = Callable[[], Tensor]
Maker = Callable[[nn.Module, Tensor, float, int], Solve]

LABELS = {
    "mali": "mali-func MALI",
    "backprop": "mali-func ALF, backprop",
    "tde_adjoint": "torchdiffeq odeint_adjoint, rk4",
    "tde_backprop": "torchdiffeq odeint, rk4, backprop",
    "tdep_mali": "TorchDiffEqPack MALI (sym12async)",
    "rk4_mali": "mali-func MALI, reversible RK4",
    "rk4_backprop": "mali-func reversible RK4, backprop",
    "tsit5_mali": "mali-func MALI, reversible Tsit5",
    "heun_mali": "mali-func MALI, reversible Heun",
    "rk4_ckpt": "mali-func RK4, checkpoint",
    "rk4_ckpt64": "mali-func RK4, checkpoint (64 states)",
    "rk4_plain_backprop": "mali-func RK4, backprop",
    "tsit5_ckpt": "mali-func Tsit5, checkpoint",
    "tsit5_plain_backprop": "mali-func Tsit5, backprop",
}
#: Line styles shared by every plot, so one method looks the same everywhere.
STYLES = {
    "mali": {"color": "C0", "marker": "o"},
    "backprop": {"color": "C0", "marker": "s", "linestyle": "--"},
    "tde_adjoint": {"color": "C1", "marker": "^"},
    "tde_backprop": {"color": "C1", "marker": "v", "linestyle": "--"},
    "tdep_mali": {"color": "C2", "marker": "D"},
    "rk4_mali": {"color": "C5", "marker": "o"},
    "rk4_backprop": {"color": "C5", "marker": "s", "linestyle": "--"},
    "tsit5_mali": {"color": "C6", "marker": "P"},
    "heun_mali": {"color": "C7", "marker": "X"},
    "rk4_ckpt": {"color": "C8", "marker": "h"},
    "rk4_ckpt64": {"color": "C8", "marker": "h", "linestyle": ":"},
    "rk4_plain_backprop": {"color": "C8", "marker": "s", "linestyle": "--"},
    "tsit5_ckpt": {"color": "C9", "marker": "*"},
    "tsit5_plain_backprop": {"color": "C9", "marker": "s", "linestyle": "--"},
}


def _ours(gradient: str, **extra: Any) -> Maker:
    def make(field: nn.Module, y0: Tensor, t1: float, steps: int) -> Solve:
        import mali_func

        t = torch.tensor([0.0, t1], dtype=y0.dtype)

        def solve() -> Tensor:
            ys = mali_func.odeint(field, y0, t, n_steps=steps, gradient=gradient, **extra)
            return ys[-1]

        return solve

    return make


def _torchdiffeq(adjoint: bool) -> Maker:
    def make(field: nn.Module, y0: Tensor, t1: float, steps: int) -> Solve:
        import torchdiffeq

        integrate = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
        t = torch.tensor([0.0, t1], dtype=y0.dtype)
        options = {"step_size": t1 / steps}

        def solve() -> Tensor:
            return integrate(field, y0, t, method="rk4", options=options)[-1]

        return solve

    return make


def _tdep_mali(field: nn.Module, y0: Tensor, t1: float, steps: int) -> Solve:
    from TorchDiffEqPack import odesolve_adjoint_sym12

    options = {
        "method": "fixedstep_sym12async",
        "h": t1 / steps,
        "t0": 0.0,
        "t1": t1,
        "rtol": 1e-3,
        "atol": 1e-3,
        "print_neval": False,
        "neval_max": 10**7,
    }

    def solve() -> Tensor:
        return odesolve_adjoint_sym12(field, y0, options=options)

    return solve


MAKERS: dict[str, Maker] = {
    "mali": _ours("mali"),
    "backprop": _ours("backprop"),
    "tde_adjoint": _torchdiffeq(adjoint=True),
    "tde_backprop": _torchdiffeq(adjoint=False),
    "tdep_mali": _tdep_mali,
    "rk4_mali": _ours("mali", method="rk4"),
    "rk4_backprop": _ours("backprop", method="rk4"),
    "tsit5_mali": _ours("mali", method="tsit5"),
    "heun_mali": _ours("mali", method="reversible_heun"),
    "rk4_ckpt": _ours("checkpoint", method="rk4", coupling=None),
    "rk4_ckpt64": _ours("checkpoint", method="rk4", coupling=None, checkpoints=64),
    "rk4_plain_backprop": _ours("backprop", method="rk4", coupling=None),
    "tsit5_ckpt": _ours("checkpoint", method="tsit5", coupling=None),
    "tsit5_plain_backprop": _ours("backprop", method="tsit5", coupling=None),
}
METHODS = tuple(MAKERS)


def make_solve(method: str, field: nn.Module, y0: Tensor, t1: float, steps: int) -> Solve:
    """The fixed-step solve of ``method`` from 0 to ``t1``; raises ImportError when missing."""
    return MAKERS[method](field, y0, t1, steps)
