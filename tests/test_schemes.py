"""Reversible Runge-Kutta couplings: order, exact inverse, MALI equals backprop, stability."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import MLPField
from helpers import F64, assert_close_all

from mali_func import ButcherTableau, CoupledRK, DriftMonitor, ODEBlock, odeint
from mali_func.schemes import TABLEAUS

RK_METHODS = list(TABLEAUS)
EMBEDDED = [name for name, tab in TABLEAUS.items() if tab.b_error is not None]


def linear(a: torch.Tensor):
    def f(t, y):
        return y @ a.T

    return f


A = torch.tensor([[-0.5, 2.0], [-2.0, -0.5]], dtype=F64)


@pytest.mark.parametrize("method", RK_METHODS)
def test_solution_error_converges_at_the_methods_order(method: str) -> None:
    y0 = torch.tensor([[1.0, 0.5]], dtype=F64)
    t = torch.tensor([0.0, 2.0], dtype=F64)
    exact = y0 @ torch.linalg.matrix_exp(2.0 * A).T
    # dopri8 reaches round-off by 40 steps here: its fit uses fewer.
    steps = [20, 40, 80, 160] if TABLEAUS[method].order < 6 else [5, 7, 10, 14]
    errors = []
    for n in steps:
        # coupling 0.5 damps the parasitic mode (lambda / R(h mu) per step) within a few steps,
        # so the fit sees the asymptotic order; near 1 it decays over more steps than these.
        ys = odeint(linear(A), y0, t, n_steps=n, method=method, coupling=0.5)
        errors.append((ys[-1] - exact).abs().max().item())
    x = torch.tensor([math.log(n) for n in steps], dtype=F64)
    y = torch.tensor([math.log(e) for e in errors], dtype=F64)
    slope = -(((x - x.mean()) * (y - y.mean())).sum() / (x - x.mean()).square().sum()).item()
    assert abs(slope - TABLEAUS[method].order) < 0.3, (errors, slope)


@pytest.mark.parametrize("method", RK_METHODS)
def test_inverse_undoes_the_step(method: str, field: MLPField) -> None:
    scheme = CoupledRK(TABLEAUS[method], coupling=0.8)

    def pure(t, y, params):
        return (field(t, y[0]),)

    y = torch.randn(5, 3, dtype=F64)
    state = (y, y + 0.01 * torch.randn(5, 3, dtype=F64))
    t, h = torch.tensor(0.3, dtype=F64), torch.tensor(0.05, dtype=F64)
    back = scheme.inverse(pure, t, h, scheme.step(pure, t, h, state, ()), ())
    assert_close_all(back, state, rtol=1e-13)


@pytest.mark.parametrize("method", RK_METHODS)
@pytest.mark.parametrize("grid", ["fixed", "adaptive"])
def test_mali_equals_backprop_through_the_same_steps(
    method: str, grid: str, field: MLPField
) -> None:
    if grid == "adaptive" and method not in EMBEDDED:
        pytest.skip("no error estimate: refused (test_bad_input)")
    options = {"n_steps": 25} if grid == "fixed" else {"rtol": 1e-6, "atol": 1e-8}
    y0 = torch.randn(4, 3, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.6, 1.5], dtype=F64, requires_grad=True)
    results = []
    for gradient in ("mali", "backprop"):
        ys = odeint(field, y0, t, method=method, gradient=gradient, **options)
        loss = ys.pow(2).sum() + ys[1].sin().sum()
        results.append(torch.autograd.grad(loss, [y0, t, *field.parameters()]))
    assert_close_all(results[0], results[1], rtol=1e-10)


class Contracting(torch.nn.Module):
    """``f(t, y) = MLP(t, y) - 2 y``: eigenvalues on the negative real side."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = MLPField(dim=6, hidden=32)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.mlp(t, y) - 2.0 * y


def test_reconstruction_holds_on_a_contracting_problem() -> None:
    torch.manual_seed(0)
    contracting = Contracting()

    y0 = torch.randn(16, 6, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 5.0], dtype=F64)
    monitor = DriftMonitor(dtype=F64)
    # 1 - coupling near h * (contraction rate) = 0.01 * 2: stable forward and reverse (section 5).
    ys = odeint(contracting, y0, t, n_steps=500, method="rk4", coupling=0.98, monitor=monitor)
    ys[-1].pow(2).sum().backward()
    assert monitor.error is not None and monitor.error.item() < 1e-9


def spectral_radii(method: str, coupling: float, w: float) -> tuple[float, float]:
    """Spectral radius of the coupled step on ``y' = mu y`` (h = 1, mu = w), and of its inverse."""
    scheme = CoupledRK(TABLEAUS[method], coupling)

    def pure(t, y, params):
        return (w * y[0],)

    t, h = torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64)
    cols = [scheme.step(pure, t, h, (e[:1], e[1:]), ()) for e in torch.eye(2, dtype=F64)]
    step = torch.stack([torch.cat(c) for c in cols], dim=1)
    eig = torch.linalg.eigvals(step).abs()
    return eig.max().item(), (1 / eig).max().item()


@pytest.mark.parametrize(
    ("coupling", "w", "forward", "reverse"),
    [(0.999, -0.1, 1.104, 1.105), (0.9, -0.1, 0.995, 1.105), (0.8, -0.2, 0.977, 1.221)],
)
def test_linear_stability_of_the_coupled_rk4(coupling, w, forward, reverse) -> None:
    got_forward, got_reverse = spectral_radii("rk4", coupling, w)
    assert got_forward == pytest.approx(forward, abs=2e-3)
    assert got_reverse == pytest.approx(reverse, abs=2e-3)


def test_ode_block_takes_the_method_options() -> None:
    torch.manual_seed(0)
    block = ODEBlock(MLPField(), n_steps=8, method="dopri5", coupling=0.95)
    x = torch.randn(3, 3, dtype=F64)
    want = odeint(block.field, x, [0.0, 1.0], n_steps=8, method="dopri5", coupling=0.95)[-1]
    torch.testing.assert_close(block(x), want, rtol=0, atol=0)


def test_bad_input() -> None:
    y0, t = torch.randn(2, 3, dtype=F64), [0.0, 1.0]
    f = linear(torch.eye(3, dtype=F64))
    with pytest.raises(ValueError, match=r"method must be one of .*'rk4'"):
        odeint(f, y0, t, n_steps=4, method="rk45")
    with pytest.raises(ValueError, match="coupling must lie in"):
        odeint(f, y0, t, n_steps=4, method="rk4", coupling=1.5)
    with pytest.raises(ValueError, match="eta"):
        odeint(f, y0, t, n_steps=4, method="rk4", eta=0.9)
    with pytest.raises(ValueError, match=r"n_steps.*bosh3"):
        odeint(f, y0, t, method="heun")  # "rk4" steps along t, as torchdiffeq
    with pytest.raises(ValueError, match="either method or scheme"):
        odeint(f, y0, t, n_steps=4, method="rk4", scheme=CoupledRK(TABLEAUS["rk4"]))
    with pytest.raises(ValueError, match="sums to"):
        ButcherTableau("bad", ((), (0.4,)), (0.5, 0.5), (0.0, 0.5), order=2)
    with pytest.raises(ValueError, match="weights b sum"):
        ButcherTableau("bad", ((), (0.5,)), (0.5, 0.6), (0.0, 0.5), order=2)


def test_backward_evaluates_each_stage_once_per_half_step(field: MLPField) -> None:
    y0 = torch.randn(4, 3, dtype=F64, requires_grad=True)
    ys = odeint(field, y0, [0.0, 1.0], n_steps=10, method="rk4")
    field.calls = 0
    ys[-1].sum().backward()
    assert field.calls == 10 * 2 * 4  # 10 steps, two base steps of four stages, each under a VJP


# fehlberg2 (torchdiffeq's, kept for its users) steps across this pole as torchdiffeq's does: its
# error estimate's constant is 1/512 (docs/guide/methods.md).
@pytest.mark.parametrize("method", [m for m in EMBEDDED if m != "fehlberg2"])
def test_adaptive_steps_do_not_jump_over_a_singularity(method: str) -> None:
    """``y' = y^2, y(0) = 1`` has no solution past ``t = 1``: the solve must fail, not return a
    number (both base steps' error estimates count, so a step across the pole is rejected)."""
    y0 = torch.ones(1, dtype=F64)
    with pytest.raises(RuntimeError, match="adaptive solve failed"):
        odeint(lambda t, y: y**2, y0, [0.0, 1.0005], method=method)
    batched = torch.func.vmap(
        lambda y: odeint(lambda t, x: x**2, y, [0.0, 1.0005], method=method, stats=True)
    )
    ys, stats = batched(torch.ones(2, 1, dtype=F64))
    assert stats.failed.all() and ys[:, -1].isnan().all()


def test_adaptive_alf_fails_past_its_own_blow_up_time() -> None:
    """ALF's first-order estimate places the pole of ``y' = y^2`` within its tolerance of
    ``t = 1`` (at 1.00065 with rtol 1e-3): the blow-up detection names it and fails the solve
    before it, and at rtol 1e-6 the solve fails before reaching 1."""
    y0 = torch.ones(1, dtype=F64)
    with pytest.raises(RuntimeError, match=r"failed at t = 0\.99.*blows up near t = 1\.000"):
        odeint(lambda t, y: y**2, y0, [0.0, 1.01])
    with pytest.raises(RuntimeError, match=r"adaptive solve failed at t = 0\.99"):
        odeint(lambda t, y: y**2, y0, [0.0, 1.0005], rtol=1e-6)
