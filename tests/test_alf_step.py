"""The ALF step itself: one step by hand, exact inversion, and second-order convergence."""

from __future__ import annotations

import math

import pytest
import torch

from mali_func import ALF, odeint

F64 = torch.float64


def linear_field(a: torch.Tensor):
    def field(t, y, params):
        return (y[0] @ a.T,)

    return field


def test_one_step_matches_hand_computation() -> None:
    eta, h, t = 0.75, 0.2, 0.5
    z = torch.tensor([1.0, -2.0], dtype=F64)
    v = torch.tensor([0.5, 0.25], dtype=F64)

    def field(s, y, params):
        return (torch.sin(s) * y[0] ** 2,)

    out = ALF(eta).step(field, torch.tensor(t, dtype=F64), torch.tensor(h, dtype=F64), (z, v), ())
    s = t + h / 2
    k = [z[i].item() + h / 2 * v[i].item() for i in range(2)]
    u = [math.sin(s) * ki**2 for ki in k]
    v1 = [v[i].item() + 2 * eta * (u[i] - v[i].item()) for i in range(2)]
    z1 = [k[i] + h / 2 * v1[i] for i in range(2)]
    torch.testing.assert_close(out[0], torch.tensor(z1, dtype=F64), rtol=0, atol=1e-15)
    torch.testing.assert_close(out[1], torch.tensor(v1, dtype=F64), rtol=0, atol=1e-15)


@pytest.mark.parametrize("eta", [1.0, 0.9, 0.7, 0.3])
def test_inverse_undoes_step(eta: float) -> None:
    a = torch.randn(4, 4, dtype=F64)
    field = linear_field(a)
    scheme = ALF(eta)
    t, h = torch.tensor(0.3, dtype=F64), torch.tensor(0.05, dtype=F64)
    state = (torch.randn(6, 4, dtype=F64), torch.randn(6, 4, dtype=F64))
    back = scheme.inverse(field, t, h, scheme.step(field, t, h, state, ()), ())
    for x, y in zip(back, state):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-12)


def test_fused_reverse_rebuilds_the_same_state_as_inverse() -> None:
    a = torch.randn(3, 3, dtype=F64)
    field = linear_field(a)
    scheme = ALF(0.8)
    t, h = torch.tensor(0.1, dtype=F64), torch.tensor(0.1, dtype=F64)
    state = (torch.randn(3, dtype=F64), torch.randn(3, dtype=F64))
    nxt = scheme.step(field, t, h, state, ())
    cot = (torch.randn(3, dtype=F64), torch.randn(3, dtype=F64))
    prev, *_ = scheme.reverse(field, t, h, nxt, cot, (), time_grad=False)
    for x, y in zip(prev, scheme.inverse(field, t, h, nxt, ())):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-15)


@pytest.mark.parametrize(("eta", "order"), [(1.0, 2), (0.8, 1), (0.95, 1)])
def test_converges_with_the_documented_order(eta: float, order: int) -> None:
    """Undamped ALF is second order; damping makes the velocity lag and drops it to first."""
    torch.manual_seed(1)
    a = torch.randn(4, 4, dtype=F64)
    a = 0.5 * (a - a.T) - 0.2 * torch.eye(4, dtype=F64)  # oscillating, slightly damped
    y0 = torch.randn(4, dtype=F64)
    exact = torch.linalg.matrix_exp(a * 1.0) @ y0

    def f(t, y):
        return a @ y

    steps = [40, 80, 160, 320]
    errors = [
        (odeint(f, y0, [0.0, 1.0], n_steps=n, eta=eta)[-1] - exact).norm().item() for n in steps
    ]
    hs = torch.tensor([1.0 / n for n in steps], dtype=F64).log()
    es = torch.tensor(errors, dtype=F64).log()
    slope = ((hs - hs.mean()) * (es - es.mean())).sum() / ((hs - hs.mean()) ** 2).sum()
    assert abs(slope.item() - order) < 0.15, (slope.item(), errors)
    assert ALF(eta).order == order
