"""``coupling="auto"``: the coupling chosen per step from the step size and a contraction
estimate."""

from __future__ import annotations

import math
from contextlib import nullcontext

import pytest
import torch
from conftest import MLPField
from helpers import F64, assert_close_all, relative_error
from test_schemes import Contracting

from mali_func import (
    CoupledRK,
    CouplingWarning,
    DriftMonitor,
    ODEBlock,
    ReconstructionWarning,
    odeint,
)
from mali_func.schemes import TABLEAUS


@pytest.mark.parametrize("method", list(TABLEAUS))
def test_stability_function_matches_the_exponential_to_the_methods_order(method: str) -> None:
    tab = TABLEAUS[method]
    # dopri8's error is at round-off for w = 0.05: it is fitted further out.
    w = torch.tensor([0.05, 0.1] if tab.order < 6 else [0.2, 0.4], dtype=F64)
    err = (tab.stability(-w) - torch.exp(-w)).abs()
    slope = math.log(err[1] / err[0]) / math.log(2.0)
    assert slope == pytest.approx(tab.order + 1, abs=0.3)


def test_stability_function_of_rk4_is_its_taylor_polynomial() -> None:
    w = torch.tensor([-2.0, -0.5, 0.3 + 1.2j], dtype=torch.complex128)
    want = 1 + w + w**2 / 2 + w**3 / 6 + w**4 / 24
    torch.testing.assert_close(TABLEAUS["rk4"].stability(w), want, rtol=1e-14, atol=0)


def _rate(a: torch.Tensor) -> float:
    from mali_func.schemes._coupled import contraction_rate

    y0 = torch.randn(4, a.shape[0], dtype=F64)
    rate = contraction_rate(lambda t, y, p: (y[0] @ a.T,), torch.tensor(0.0, dtype=F64), (y0,), ())
    assert not rate.requires_grad
    return rate.item()


def test_contraction_estimate_finds_the_most_contracting_eigenvalue() -> None:
    torch.manual_seed(0)
    q = torch.linalg.qr(torch.randn(6, 6, dtype=F64))[0]
    contracting = q @ torch.diag(torch.tensor([-3.0, -1.0, -0.5, -0.2, -0.1, 0.0], dtype=F64)) @ q.T
    assert _rate(contracting) == pytest.approx(3.0, rel=0.05)
    rotation = torch.tensor([[0.0, 4.0], [-4.0, 0.0]], dtype=F64)
    assert _rate(rotation) < 1e-6  # oscillatory: no contraction, coupling 1
    spiral = torch.tensor([[-0.5, 4.0], [-4.0, -0.5]], dtype=F64)
    assert _rate(spiral) == pytest.approx(0.5, rel=0.05)


def test_automatic_coupling_keeps_the_reconstruction_on_a_long_oscillatory_solve() -> None:
    """A fixed coupling below 1 amplifies round-off by coupling^-N in the reverse pass."""
    rotation = torch.tensor([[0.0, 2.0], [-2.0, 0.0]], dtype=F64)
    y0 = torch.randn(3, 2, dtype=F64, requires_grad=True)
    errors = {}
    for coupling in ("auto", 0.9):
        monitor = DriftMonitor(dtype=F64)
        with pytest.warns(ReconstructionWarning) if coupling == 0.9 else nullcontext():
            ys = odeint(lambda t, y: y @ rotation.T, y0, [0.0, 10.0], n_steps=1000,
                        method="rk4", coupling=coupling, monitor=monitor)  # fmt: skip
            ys[-1].pow(2).sum().backward()
        errors[coupling] = monitor.error.item()
    assert errors["auto"] < 1e-12 and errors[0.9] > 1.0


@pytest.mark.parametrize("grid", ["fixed", "adaptive"])
def test_mali_equals_backprop_with_the_automatic_coupling(grid: str, field: MLPField) -> None:
    method = "rk4" if grid == "fixed" else "tsit5"
    options = {"n_steps": 20} if grid == "fixed" else {"rtol": 1e-6, "atol": 1e-8}
    y0 = torch.randn(4, 3, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.6, 1.5], dtype=F64, requires_grad=True)
    results = []
    for gradient in ("mali", "backprop"):
        ys = odeint(field, y0, t, method=method, coupling="auto", gradient=gradient, **options)
        loss = ys.pow(2).sum() + ys[1].sin().sum()
        results.append(torch.autograd.grad(loss, [y0, t, *field.parameters()]))
    assert_close_all(results[0], results[1], rtol=1e-10)


def test_automatic_coupling_is_accurate_where_a_coupling_near_one_is_not() -> None:
    """A contracting field on [0, 5] with 40 RK4 steps (h |lambda| about 0.3)."""
    torch.manual_seed(0)
    field = Contracting().double()
    y0 = torch.randn(8, 6, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 5.0], dtype=F64)

    def grads(**options: object) -> list[torch.Tensor]:
        y0.grad = None
        field.zero_grad()
        odeint(field, y0, t, method="rk4", **options)[-1].pow(2).sum().backward()
        return [y0.grad, *(p.grad for p in field.parameters())]  # the monitor needs backward()

    ref = torch.cat([g.flatten() for g in grads(n_steps=400, coupling=0.99, gradient="backprop")])
    monitor = DriftMonitor(dtype=F64)
    auto = torch.cat([g.flatten() for g in grads(n_steps=40, coupling="auto", monitor=monitor)])
    with pytest.warns(CouplingWarning, match="parasitic mode grew"):  # and the solve says so
        near_one = torch.cat([g.flatten() for g in grads(n_steps=40, coupling=0.999)])
    assert relative_error(auto, ref) < 1e-5
    assert relative_error(near_one, ref) > 100 * relative_error(auto, ref)
    assert monitor.error is not None and monitor.error.item() < 1e-9


def test_the_chosen_coupling_lies_in_its_range_and_does_not_need_a_gradient() -> None:
    scheme = CoupledRK(TABLEAUS["rk4"], coupling="auto")
    for rho, h in [(0.0, 0.1), (2.0, 0.1), (50.0, 0.5)]:
        h_ = torch.tensor(h, dtype=F64, requires_grad=True)
        lam = scheme._coupling(h_, torch.tensor(rho, dtype=F64), ())
        assert isinstance(lam, torch.Tensor) and 0.5 <= lam.item() <= 1.0
        assert not lam.requires_grad
    assert scheme._coupling(torch.tensor(0.1), torch.tensor(0.0), ()) == 1.0


def test_automatic_coupling_through_vmap_and_the_ode_block(field: MLPField) -> None:
    y0 = torch.randn(5, 3, dtype=F64)
    block = ODEBlock(field, n_steps=6, method="rk4", coupling="auto")

    def loss(x: torch.Tensor) -> torch.Tensor:
        return block(x.unsqueeze(0)).pow(2).sum()

    per_sample = torch.func.vmap(torch.func.grad(loss))(y0)
    looped = torch.stack([torch.func.grad(loss)(x) for x in y0])
    torch.testing.assert_close(per_sample, looped, rtol=1e-10, atol=1e-12)


def test_bad_coupling_is_refused() -> None:
    y0, t = torch.randn(2, 3, dtype=F64), [0.0, 1.0]
    with pytest.raises(ValueError, match=r"coupling must lie in \(0, 1\] or be 'auto'"):
        odeint(lambda t, y: -y, y0, t, n_steps=4, method="rk4", coupling=0.0)
    with pytest.raises(TypeError, match="coupling must be a real number"):
        odeint(lambda t, y: -y, y0, t, n_steps=4, method="rk4", coupling="automatic")
    with pytest.raises(ValueError, match="coupling applies to the Runge-Kutta methods"):
        odeint(lambda t, y: -y, y0, t, n_steps=4, method="alf", coupling="auto")
