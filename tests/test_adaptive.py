"""Adaptive steps: accuracy, MALI == backprop through the accepted steps, vmap, failures, stats."""

from __future__ import annotations

import pytest
import torch
from conftest import MLPField
from torch import Tensor, nn

from mali_func import odeint, odeint_adjoint

F64 = torch.float64


def van_der_pol(t, y):
    x, v = y[..., 0], y[..., 1]
    return torch.stack([v, 0.5 * (1 - x**2) * v - x], -1)


def duffing(t, y):
    """Undamped, with a frequency that grows with the amplitude."""
    x, v = y[..., 0], y[..., 1]
    return torch.stack([v, -x - x**3], -1)


def reference(y0: torch.Tensor, t1: float) -> torch.Tensor:
    return odeint(van_der_pol, y0, [0.0, t1], n_steps=20000)[-1]


def test_error_shrinks_with_the_tolerance() -> None:
    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    exact = reference(y0, 3.0)
    errors = []
    for tol in (1e-3, 1e-5, 1e-7):
        ys = odeint(van_der_pol, y0, [0.0, 3.0], rtol=tol, atol=tol)
        errors.append(((ys[-1] - exact).norm() / exact.norm()).item())
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-4


def test_steps_land_on_every_output_time() -> None:
    a = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=F64)
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    t = torch.tensor([0.0, 0.1, 0.7, 2.0, 2.05], dtype=F64)
    ys, stats = odeint(lambda t, y: a @ y, y0, t, rtol=1e-8, atol=1e-8, stats=True)
    for i, s in enumerate(t):
        exact = torch.linalg.matrix_exp(a * s) @ y0
        torch.testing.assert_close(ys[i], exact, rtol=1e-5, atol=1e-5)
    assert stats.n_accepted.item() >= len(t) - 1


@pytest.mark.parametrize("times", [[0.0, 0.5, 1.5], [1.5, 0.2]])
def test_mali_equals_backprop_through_the_accepted_steps(field: MLPField, times) -> None:
    y0 = torch.randn(4, 3, dtype=F64, requires_grad=True)
    t = torch.tensor(times, dtype=F64, requires_grad=True)
    results = []
    for gradient in ("mali", "backprop"):
        ys = odeint(field, y0, t, rtol=1e-6, atol=1e-6, gradient=gradient)
        loss = ys.pow(2).sum() + ys[1].sin().sum()
        results.append((ys.detach(), torch.autograd.grad(loss, [y0, t, *field.parameters()])))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-12)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_stats_add_up(field: MLPField) -> None:
    y0 = torch.randn(4, 3, dtype=F64)
    _, stats = odeint(field, y0, [0.0, 2.0], rtol=1e-7, atol=1e-9, first_step=1.0, stats=True)
    assert stats.n_rejected.item() >= 1  # a first step of 1.0 is far too large here
    trials = stats.n_accepted + stats.n_rejected
    assert stats.n_f_evals.item() == trials.item() + 1  # + v0 (no first-step estimate)
    assert not stats.failed.item()


class Counting(nn.Module):
    """A field that counts its evaluations."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3).double()
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return torch.tanh(self.lin(y)) - y


@pytest.mark.parametrize(
    "options",
    [
        {"n_steps": 5},
        {"method": "reversible_heun", "n_steps": 5},
        {"method": "rk4", "n_steps": 5},
        {"method": "rk4", "coupling": 0.9, "n_steps": 5},
        {"method": "rk4", "coupling": None, "n_steps": 5, "gradient": "checkpoint"},
        {"rtol": 1e-6, "atol": 1e-8},
        {"rtol": 1e-6, "atol": 1e-8, "first_step": 0.05},
        {"method": "tsit5", "rtol": 1e-6, "atol": 1e-8},
        {"method": "bosh3", "coupling": 0.9, "rtol": 1e-6, "atol": 1e-8},
        {"method": "dopri5", "coupling": None, "rtol": 1e-6, "gradient": "checkpoint"},
        {"method": "heun", "coupling": 0.8, "n_steps": 3, "gradient": "backprop"},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_n_f_evals_counts_every_evaluation_of_the_forward_solve(options: dict) -> None:
    """Exactly, but for the trials an eager adaptive solve runs past its end before it reads
    its stop flag: fewer than an eighth of its trials (none in short solves)."""
    y0 = torch.randn(4, 3, dtype=F64)
    for grad in (False, True):  # with a gradient: the same count, before the backward
        field = Counting()
        with torch.set_grad_enabled(grad):
            y = y0.detach().requires_grad_(grad)
            _, stats = odeint(field, y, [0.0, 0.5, 2.0], stats=True, **options)
        trials = (stats.n_accepted + stats.n_rejected).item()
        past = field.calls - stats.n_f_evals.item()
        assert 0 <= past <= field.calls / 8
        if "n_steps" in options or trials < 16:
            assert past == 0


def test_vmap_gives_each_sample_its_own_steps() -> None:
    scales = torch.tensor([1e-3, 1.0, 3.0], dtype=F64)
    y0 = torch.stack([torch.tensor([1.0, 0.0], dtype=F64) * s for s in scales])

    def solve(y):
        return odeint(duffing, y, [0.0, 1.0, 2.0], rtol=1e-5, atol=1e-9, stats=True)

    ys, stats = torch.func.vmap(solve)(y0)
    for i in range(3):
        single, single_stats = solve(y0[i])
        torch.testing.assert_close(ys[i], single, rtol=1e-10, atol=1e-12)
        assert stats.n_accepted[i].item() == single_stats.n_accepted.item()
    assert len(set(stats.n_accepted.tolist())) > 1


def test_vmap_grad_equals_a_loop() -> None:
    field = MLPField()
    params = {k: v.detach() for k, v in field.named_parameters()}
    xs = torch.randn(3, 3, dtype=F64) * torch.tensor([[0.1], [1.0], [5.0]], dtype=F64)

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.field = field

        def forward(self, x):
            return odeint(self.field, x, [0.0, 1.0], rtol=1e-6, atol=1e-8)[-1].pow(2).sum()

    model = Wrapped()
    mparams = {f"field.{k}": v for k, v in params.items()}

    def mloss(p, x):
        return torch.func.functional_call(model, p, (x,))

    batched = torch.func.vmap(torch.func.grad(mloss), in_dims=(None, 0))(mparams, xs)
    for i in range(3):
        single = torch.func.grad(mloss)(mparams, xs[i])
        for k in mparams:
            torch.testing.assert_close(batched[k][i], single[k], rtol=1e-9, atol=1e-12)


def test_exceeding_max_steps_raises_with_the_time_reached() -> None:
    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    with pytest.raises(RuntimeError, match=r"failed at t = [0-9.e-]+ of \[0, 10\]: max_steps=20"):
        odeint(van_der_pol, y0, [0.0, 10.0], rtol=1e-8, atol=1e-8, max_steps=20)


def test_a_field_that_turns_nan_is_named_as_the_cause() -> None:
    """Its NaN error estimates would otherwise read as the controller's or the step size's
    fault: the message says func is not finite where the solve stopped."""
    y0 = torch.tensor([1.0], dtype=F64)
    nan = r"func returned a non-finite value \(NaN or inf\) there"
    with pytest.raises(RuntimeError, match=rf"failed at t = 1\.0[0-9]* of \[0, 2\]: {nan}"):
        odeint(lambda t, y: y * torch.sqrt(1 - t), y0, [0.0, 2.0])  # NaN beyond t = 1
    with pytest.raises(RuntimeError, match=rf"failed at t = 0 of \[0, 1\]: {nan}, so no step"):
        odeint(lambda t, y: y * float("nan"), y0, [0.0, 1.0], method="tsit5")


def test_step_size_underflow_raises() -> None:
    y0 = torch.tensor([1.0], dtype=F64)
    with pytest.raises(
        RuntimeError, match=r"failed at t = 1 of \[0, 2\]: the step size underflowed"
    ):  # finite everywhere, a jump to 1e200 at t = 1: the steps shrink toward it
        jump = torch.tensor(1e200, dtype=F64)
        odeint(lambda t, y: torch.where(t > 1, jump, 0.0) * y, y0, [0.0, 2.0], method="tsit5")


def test_failure_under_vmap_gives_nan_and_a_flag() -> None:
    y0 = torch.tensor([[0.1], [1.0]], dtype=F64)

    def solve(y):
        return odeint(lambda t, y: y * torch.sqrt(y - t), y, [0.0, 0.5], stats=True)

    ys, stats = torch.func.vmap(solve)(y0)  # the first sample's field turns NaN near t = 0.1
    assert stats.failed.tolist() == [True, False]
    assert torch.isnan(ys[0, -1]).all() and torch.isfinite(ys[1]).all()


def test_backprop_tuple_state_with_different_shapes() -> None:
    def f(t, state):
        z, _ = state
        return -z, -(z**2).sum(-1)

    z0 = torch.randn(3, 2, dtype=F64, requires_grad=True)
    l0 = torch.zeros(3, dtype=F64)
    out = {}
    for gradient in ("mali", "backprop"):
        zs, ls = odeint(f, (z0, l0), [0.0, 1.0], rtol=1e-6, atol=1e-8, gradient=gradient)
        assert zs.shape == (2, 3, 2) and ls.shape == (2, 3)
        out[gradient] = torch.autograd.grad(zs[-1].sum() + ls[-1].sum(), z0)[0]
    torch.testing.assert_close(out["mali"], out["backprop"], rtol=1e-8, atol=1e-10)


def square(t, y):
    return y**2


@pytest.mark.parametrize("method", [None, "tsit5"])
@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["forward", "backward"])
def test_a_solution_that_blows_up_fails(method: str | None, sign: float) -> None:
    """``y' = y^2, y(0) = 1`` has no solution past ``t = 1`` (issue 14, item 5): the solve must
    fail, not return a large number, with the default method (whose own numerical pole lies at
    1.00065 at rtol 1e-3) as with tsit5; in time-reversed form too."""
    y0 = torch.ones(1, dtype=F64)
    f = square if sign > 0 else (lambda t, y: -(y**2))
    end = r"-1\.0005" if sign < 0 else r"1\.0005"
    with pytest.raises(
        RuntimeError,
        match=rf"failed at t = -?0\.99[0-9]* of \[0, {end}\]: the solution blows up near "
        r"t = -?(1|1\.000[0-9]*|0\.9999[0-9]*), closer than rtol=0\.001",
    ):
        odeint(f, y0, [0.0, sign * 1.0005], method=method)

    def solve(y):  # y(0) = 0.5 blows up at t = 2: that sample must be unaffected
        return odeint(f, y, [0.0, sign * 0.5, sign * 1.0005], method=method, stats=True)

    ys, stats = torch.func.vmap(solve)(torch.tensor([[1.0], [0.5]], dtype=F64))
    assert stats.failed.tolist() == [True, False]
    assert ys[0, -1].isnan().all()
    torch.testing.assert_close(ys[1, -1], torch.tensor([1 / 0.9995], dtype=F64), rtol=1e-3, atol=0)


@pytest.mark.usefixtures("fresh_dynamo")
def test_a_solution_that_blows_up_fails_under_compile() -> None:
    def solve(y):
        return odeint(square, y, torch.tensor([0.0, 1.0005], dtype=F64), stats=True)

    ys, stats = torch.compile(solve, backend="aot_eager", fullgraph=True)(torch.ones(1, dtype=F64))
    assert stats.failed.item() and ys.isnan().all()


@pytest.mark.parametrize(
    ("f", "exact", "t1", "method"),
    [
        (lambda t, y: 8 * y, lambda t: torch.exp(8 * t), 3.0, None),  # e^24: large, no pole
        (lambda t, y: t**2 * y, lambda t: torch.exp(t**3 / 3), 4.0, None),  # accelerating
        (square, lambda t: 1 / (1 - t), 0.99, None),  # condition number 100 < 1 / rtol
        (square, lambda t: 1 / (1 - t), 0.99, "tsit5"),
        (lambda t, y: y**3, lambda t: (1 - 2 * t) ** -0.5, 0.495, "dopri5"),
    ],
)
def test_growth_that_the_tolerance_resolves_is_not_a_blow_up(f, exact, t1, method) -> None:
    y0 = torch.ones(1, dtype=F64)
    ys, stats = odeint(f, y0, [0.0, t1], method=method, stats=True)
    assert not stats.failed
    want = exact(torch.tensor(t1, dtype=F64))
    assert ((ys[-1] - want).abs() / want).item() < 0.1  # ALF at 0.99: 6% (its pole: 1.00065)


def test_a_projectile_stepped_in_two_long_steps_is_not_a_blow_up() -> None:
    """dopri5 steps a quadratic exactly, so its steps grow tenfold: two secants of log ||y||
    over a 0.8 and a 3.1 step extrapolated a "pole" inside the second step (torchdiffeq's
    bouncing ball, second bounce, once output times stopped shortening the steps)."""

    def fall(t: Tensor, s: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return s[1], torch.full_like(s[1], -9.8), torch.zeros_like(s[2])

    s0 = tuple(torch.tensor([x], dtype=F64) for x in (6.3874344, 1.2874343, -1.6094379))
    t = torch.linspace(2.41421356, 6.41421356, 33, dtype=F64)
    out, stats = odeint_adjoint(fall, s0, t, rtol=1e-8, atol=1e-8, stats=True)  # dopri5
    assert not stats.failed and int(stats.n_accepted) <= 4
    exact = 6.3874344 + 1.2874343 * 4.0 - 4.9 * 16.0
    assert abs(float(out[0][-1]) - exact) < 1e-6


def test_alf_failures_suggest_a_runge_kutta_method() -> None:
    """ALF is unstable where the field contracts (the spiral of torchdiffeq's demo fails at
    t = 3.5 with max_steps exceeded): its failures say what to use instead."""
    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    with pytest.raises(RuntimeError, match=r"max_steps=20.*ALF is stable only .*method='tsit5'"):
        odeint(van_der_pol, y0, [0.0, 10.0], max_steps=20)
    with pytest.raises(RuntimeError, match=r"max_steps=20 trial steps were not enough$"):
        odeint(van_der_pol, y0, [0.0, 10.0], max_steps=20, method="tsit5")
