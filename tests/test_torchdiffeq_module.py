"""``mali_func.torchdiffeq``: torchdiffeq's three names with torchdiffeq's defaults."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import F64

import mali_func
from mali_func import torchdiffeq as drop_in


def test_the_module_is_the_drop_in_with_torchdiffeqs_defaults() -> None:
    assert drop_in.odeint is mali_func.odeint_adjoint is drop_in.odeint_adjoint
    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    ys, stats = drop_in.odeint(lambda t, y: -y, y0, [0.0, 1.0], stats=True)
    torch.testing.assert_close(ys[-1], y0 * math.exp(-1), rtol=1e-7, atol=0)
    assert int(stats.n_accepted) > 5  # dopri5 at 1e-7, not ALF at 1e-3


def test_its_odeint_event_solves_with_those_defaults() -> None:
    def fall(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return torch.stack([s[1], torch.full_like(s[1], -9.8)])

    start = torch.tensor([1.0, 0.0], dtype=F64)
    t, ys = drop_in.odeint_event(fall, start, 0.0, event_fn=lambda t, s: s[0])
    assert abs(float(t) - math.sqrt(2 / 9.8)) < 1e-9
    assert ys.shape == (2, 2)


def test_its_fixed_grid_methods_step_as_torchdiffeqs() -> None:
    """torchdiffeq's "rk4" is Kutta's 3/8 rule: the drop-in's too (mali_func.odeint's is the
    classic tableau), so one step per interval of t gives torchdiffeq's trajectory."""
    torchdiffeq = pytest.importorskip("torchdiffeq")

    def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.stack([y[1], -y[0] * (1 + 0.5 * torch.sin(t))])

    y0, t = torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.0, 0.7, 1.5, 3.0], dtype=F64)
    for method in ("rk4", "euler", "midpoint", "heun3"):
        want = torchdiffeq.odeint(field, y0, t, method=method)
        torch.testing.assert_close(drop_in.odeint(field, y0, t, method=method), want,
                                   rtol=1e-13, atol=1e-13)  # fmt: skip
    classic = mali_func.odeint(field, y0, t, method="rk4", coupling=None, gradient="backprop")
    assert (classic - torchdiffeq.odeint(field, y0, t, method="rk4")).abs().max() > 1e-3
