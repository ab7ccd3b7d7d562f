"""The verified MALI gradient: a failed reconstruction falls back to the exact gradient, the
automatic coupling follows the field, and a forward solve taken over by its parasitic mode is
reported (the exact-gradient issue's cases, each failing before it was fixed)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from helpers import F64
from torch import Tensor, nn

from mali_func import (
    CouplingWarning,
    DriftMonitor,
    FallbackWarning,
    ODEBlock,
    ParasiticModeWarning,
    ReconstructionWarning,
    odeint,
)
from mali_func.schemes import TABLEAUS

A_MATRIX = [[-0.1, 2.0], [-2.0, -0.1]]


def cubic(t: Tensor, y: Tensor, a: Tensor) -> Tensor:
    """torchdiffeq's gradient test field ``dy/dt = y**3 @ A`` (rate about 24 at the start)."""
    return (y**3) @ a


def cubic_problem(dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    a = torch.tensor(A_MATRIX, dtype=dtype, requires_grad=True)
    y0 = torch.tensor([[2.0, 0.0]], dtype=dtype, requires_grad=True)
    t = torch.linspace(0, 25, 10, dtype=dtype, requires_grad=True)
    return y0, a, t


def cubic_grads(dtype: torch.dtype, **kw: object) -> tuple[Tensor, ...]:
    y0, a, t = cubic_problem(dtype)
    ys = odeint(cubic, y0, t, args=(a,), **kw)  # type: ignore[arg-type]
    return torch.autograd.grad(ys.pow(2).sum(), (y0, a, t))


def rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


@pytest.mark.parametrize("method", ["alf", *TABLEAUS])
def test_cubic_field_gives_backprops_gradient_for_every_method(method: str) -> None:
    """Default options, float64: within 1e-6 of backprop through the same steps (was NaN for
    dopri5 and tsit5 in float32, and for the adaptive couplings in float64), or a clear error
    (adaptive ALF exhausts its steps on this contracting field and says which methods to use)."""
    options: dict[str, object] = {"method": method}
    if not TABLEAUS.get(method, TABLEAUS["rk4"]).b_error and method != "alf":
        options["n_steps"] = 40  # no error estimate: a fixed grid (40 per output interval)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fallback or parasitic warnings are allowed here
        try:
            mali = cubic_grads(F64, **options)
        except RuntimeError as exc:
            assert method == "alf" and "use method='tsit5' or 'dopri5'" in str(exc)
            return
        backprop = cubic_grads(F64, gradient="backprop", **options)
    for m, b in zip(mali, backprop):
        assert torch.isfinite(m).all()
        assert rel(m, b) < 1e-6


@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
def test_cubic_field_in_float32_never_returns_nan(method: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mali = cubic_grads(torch.float32, method=method)
        backprop = cubic_grads(torch.float32, method=method, gradient="backprop")
    for m, b in zip(mali, backprop):
        assert torch.isfinite(m).all()
        assert rel(m, b) < 2e-3


@pytest.mark.parametrize("dtype", [F64])
@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
def test_the_coupling_follows_the_cubic_field_without_a_fallback(
    method: str, dtype: torch.dtype
) -> None:
    """rtol 1e-5, float64: the per-step coupling reconstructs within the default tolerance (the
    coupling measured at t[0] gave NaN). In float32 it still falls back (README)."""
    y0, a, t = cubic_problem(dtype)
    monitor = DriftMonitor(dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReconstructionWarning)
        ys, stats = odeint(cubic, y0, t, args=(a,), method=method, rtol=1e-5, atol=1e-8,
                           monitor=monitor, stats=True)  # fmt: skip
        ys.pow(2).sum().backward()
    assert monitor.error is not None
    assert float(monitor.error) < (1e-7 if dtype == F64 else 1e-3)
    assert not bool(stats.fallback)


def two_rates(t: Tensor, y: Tensor) -> Tensor:
    return y * torch.tensor([-1.0, -40.0], dtype=y.dtype)


def test_two_rate_field_reconstructs_where_the_physics_allows() -> None:
    """200 RK4 steps in float64 over T = 0.5: the coupling from the stages reconstructs (the
    t[0] coupling drifted by 3e-4 there, by 1e9 at T = 1). Over T = 2 the fast mode decays by
    e^-80: no reversible scheme rebuilds y0 from round-off, so the fallback answers."""
    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    monitor = DriftMonitor(dtype=F64)
    ys = odeint(two_rates, y0, torch.tensor([0.0, 0.5], dtype=F64), method="rk4",
                n_steps=200, monitor=monitor)  # fmt: skip
    ys[-1].sum().backward()
    assert monitor.error is not None and float(monitor.error) < 1e-7
    y1 = torch.ones(2, dtype=F64, requires_grad=True)
    with pytest.warns(FallbackWarning):
        ys, stats = odeint(two_rates, y1, torch.tensor([0.0, 2.0], dtype=F64), method="rk4",
                           n_steps=200, stats=True)  # fmt: skip
        ys[-1].sum().backward()
    assert bool(stats.fallback)
    y2 = torch.ones(2, dtype=F64, requires_grad=True)
    odeint(two_rates, y2, torch.tensor([0.0, 2.0], dtype=F64), method="rk4", n_steps=200,
           gradient="backprop")[-1].sum().backward()  # fmt: skip
    assert y1.grad is not None and y2.grad is not None
    torch.testing.assert_close(y1.grad, y2.grad, rtol=1e-12, atol=0)


def test_the_automatic_coupling_costs_no_extra_evaluation() -> None:
    """The same count as a fixed coupling (the estimate at t[0] cost 18 evaluations more)."""
    y0 = torch.randn(3, 2, dtype=F64)
    counts = [
        int(odeint(two_rates, y0, [0.0, 0.1], method="rk4", n_steps=10, stats=True,
                   coupling=c)[1].n_f_evals)
        for c in ("auto", 0.9)
    ]  # fmt: skip
    assert counts[0] == counts[1]


class Damped(nn.Module):
    """ALF with damping 0.45 amplifies round-off by 10 a step in reverse: MALI drifts."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3, dtype=F64)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return torch.tanh(self.lin(y))


def test_a_failed_reconstruction_falls_back_to_backprops_gradient() -> None:
    field, y0 = Damped(), torch.randn(4, 3, dtype=F64)
    grads = {}
    for gradient, fallback in (("mali", True), ("mali", False), ("backprop", True)):
        x = y0.clone().requires_grad_()
        field.zero_grad()
        ctx = pytest.warns(FallbackWarning, match=r"ALF\(eta=0.45\).*200 fixed steps")
        if not fallback:
            ctx = pytest.warns(ReconstructionWarning, match="drifted")
        with ctx if gradient == "mali" else warnings.catch_warnings():
            ys, stats = odeint(field, x, [0.0, 1.0], n_steps=200, eta=0.45, stats=True,
                               gradient=gradient, fallback=fallback)  # fmt: skip
            assert not bool(stats.fallback)  # set by the backward pass
            ys[-1].pow(2).sum().backward()
        assert bool(stats.fallback) == (gradient == "mali" and fallback)
        grads[(gradient, fallback)] = (x.grad, field.lin.weight.grad.clone())
    for verified, exact in zip(grads[("mali", True)], grads[("backprop", True)]):
        torch.testing.assert_close(verified, exact, rtol=1e-12, atol=1e-14)
    assert rel(grads[("mali", False)][0], grads[("backprop", True)][0]) > 1e-6


def test_an_adaptive_fallback_replays_the_accepted_steps() -> None:
    with pytest.warns(FallbackWarning, match=r"tsit5.*accepted steps"):
        mali = cubic_grads(torch.float32, method="tsit5", reconstruction_tol=1e-9)
    backprop = cubic_grads(torch.float32, method="tsit5", gradient="backprop")
    for m, b in zip(mali, backprop):
        torch.testing.assert_close(m, b, rtol=1e-5, atol=1e-5)


def test_a_healthy_solve_does_not_fall_back(field: nn.Module) -> None:
    y0 = torch.randn(4, 3, dtype=F64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ys, stats = odeint(field, y0, [0.0, 1.0], n_steps=20, stats=True)
        ys[-1].sum().backward()
    assert not bool(stats.fallback)


def test_vmap_falls_back_only_for_the_samples_that_fail() -> None:
    """Coupled RK4 with a fixed coupling 0.5: its reverse amplifies by ``R(h mu) / 0.5`` a step,
    so sample 0 (contracting at rate 14, ``R`` about 0.5) reconstructs and keeps its raw MALI
    gradient bit for bit, while sample 1 (a rotation: 2 a step) drifts and gets backprop's."""
    rates = torch.tensor([14.0, 0.0], dtype=F64)
    y0 = torch.tensor([[1.0, 0.5], [1.0, 0.5]], dtype=F64)

    def loss(y: Tensor, rate: Tensor, **kw: object) -> Tensor:
        f = lambda t, x, r: torch.stack([x[1], -x[0]]) - r * x + 0.3 * torch.sin(x) ** 2  # noqa: E731
        ys = odeint(f, y, [0.0, 2.0], n_steps=40, method="rk4", coupling=0.5, args=(rate,), **kw)  # type: ignore[arg-type]
        return ys[-1].pow(2).sum()

    with pytest.warns(FallbackWarning):
        verified = torch.func.vmap(torch.func.grad(loss))(y0, rates)
    with pytest.warns(ReconstructionWarning):
        raw = torch.func.vmap(torch.func.grad(lambda y, r: loss(y, r, fallback=False)))(y0, rates)
    exact = torch.stack([torch.func.grad(lambda y, r: loss(y, r, gradient="backprop"))(y, r)
                         for y, r in zip(y0, rates)])  # fmt: skip
    assert torch.equal(verified[0], raw[0])
    torch.testing.assert_close(verified, exact, rtol=1e-10, atol=1e-12)
    assert rel(raw[1], exact[1]) > 1e-7


def test_vmap_of_an_adaptive_solve_falls_back_per_sample() -> None:
    """Decay rates 1 and 40 scaled per sample: the slow sample reconstructs, the fast one cannot
    (e^40 amplification); vmap(grad) gives each backprop's gradient (its warning names no step
    count, which differs per sample)."""
    a = torch.tensor([[-1.0, 30.0], [0.0, -40.0]], dtype=F64)
    ks, y0 = torch.tensor([0.2, 2.0], dtype=F64), torch.ones(2, 2, dtype=F64)

    def loss(y: Tensor, k: Tensor, gradient: str = "mali") -> Tensor:
        ys = odeint(lambda t, x, k_: k_ * (x @ a.T), y, [0.0, 1.0], method="tsit5", rtol=1e-8,
                    atol=1e-10, args=(k,), gradient=gradient)  # fmt: skip
        return ys.pow(2).sum()

    with pytest.warns(FallbackWarning, match="over \\[0, 1\\], its steps"):
        verified = torch.func.vmap(torch.func.grad(loss))(y0, ks)
    exact = torch.stack([torch.func.grad(loss)(y, k, "backprop") for y, k in zip(y0, ks)])
    torch.testing.assert_close(verified, exact, rtol=1e-9, atol=1e-12)


def test_an_ode_block_falls_back_and_a_raw_block_does_not() -> None:
    x = torch.randn(5, 3, dtype=F64)
    outs = []
    for fallback in (True, False):
        torch.manual_seed(3)
        block = ODEBlock(Damped(), n_steps=200, eta=0.45, fallback=fallback)
        category = FallbackWarning if fallback else ReconstructionWarning
        with pytest.warns(category):
            block(x).pow(2).sum().backward()
        outs.append(next(block.parameters()).grad)
    torch.manual_seed(3)
    block = ODEBlock(Damped(), n_steps=200, eta=0.45, gradient="backprop")
    block(x).pow(2).sum().backward()
    exact = next(block.parameters()).grad
    assert exact is not None
    torch.testing.assert_close(outs[0], exact, rtol=1e-12, atol=1e-14)
    assert rel(outs[1], exact) > 1e-6  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="fallback must be a bool"):
        ODEBlock(Damped(), n_steps=4, fallback="yes")


# --- the parasitic mode of the forward solve ---------------------------------------------------


def test_alf_on_a_contracting_field_warns_and_reports_its_parasitic_mode() -> None:
    for n_steps in (100, 400):
        with pytest.warns(ParasiticModeWarning, match="tsit5"):
            ys, stats = odeint(lambda t, y: -5 * y, torch.ones(1), [0.0, 2.0], n_steps=n_steps,
                               stats=True)  # fmt: skip
        assert float(stats.parasitic) > 10
        assert abs(float(ys[-1]) - math.exp(-10)) > 1e-4  # the wrong answer it warns about


def test_alf_on_oscillatory_fields_stays_quiet() -> None:
    def oscillator(t: Tensor, y: Tensor) -> Tensor:
        return torch.stack([y[..., 1], -y[..., 0] - 0.1 * y[..., 1]], -1)

    class Field(nn.Module):  # the README's quickstart
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 2))

        def forward(self, t: Tensor, y: Tensor) -> Tensor:
            return self.net(y)

    torch.manual_seed(0)
    net = Field()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for n_steps in (20, 100, 1000):
            _, stats = odeint(oscillator, torch.tensor([1.0, 0.0]), [0.0, 10.0],
                              n_steps=n_steps, stats=True)  # fmt: skip
            assert float(stats.parasitic) < 0.1
        _, stats = odeint(net, torch.randn(128, 2), [0.0, 0.5, 1.0],
                          n_steps=20, stats=True)  # fmt: skip
    assert float(stats.parasitic) < 1e-3


def test_parasitic_mode_is_reported_per_sample_under_vmap() -> None:
    rates = torch.tensor([0.0, 5.0])

    def solve(rate: Tensor) -> Tensor:
        f = lambda t, y, r: torch.stack([y[1], -y[0]]) - r * y  # noqa: E731
        return odeint(f, torch.tensor([1.0, 0.0]), [0.0, 2.0], n_steps=100, args=(rate,),
                      stats=True)[1].parasitic  # fmt: skip

    with pytest.warns(ParasiticModeWarning):
        measured = torch.func.vmap(solve)(rates)
    assert float(measured[0]) < 0.1 < 10 < float(measured[1])


def test_coupling_warning_is_quiet_on_accurate_decay_to_zero() -> None:
    """The pair's disagreement has an absolute floor: y ~ 1e-17 at the end is not a failure."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", CouplingWarning)
        ys, stats = odeint(lambda t, y: -y, torch.ones(3, dtype=F64), [0.0, 40.0],
                           method="rk4", n_steps=400, stats=True)  # fmt: skip
    assert float(ys[-1].max()) < 1e-16
    assert float(stats.parasitic) < 1e-3
