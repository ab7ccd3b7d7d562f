"""What torchdiffeq users rely on beyond its signature: one-time solves, its method names, fixed
methods stepping along ``t``, step callbacks, ``adjoint_params`` over a closure, no step cap,
the ``min_step``/``max_step``/``norm``/``jump_t``/``step_t``/``grid_constructor`` options and a
discontinuous field in float32 (torchdiffeq's own tests check these; they are restated here so
the suite needs none of its files).
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import F64
from torch import Tensor, nn

from mali_func import CallbackWarning, odeint, odeint_adjoint
from mali_func.schemes import TABLEAUS


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2, dtype=F64)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return torch.tanh(self.lin(y))


class Jump:
    """torchdiffeq's discontinuous test field: decay before t = 0.5, quadratic growth after."""

    def __init__(self) -> None:
        self.nfe = 0

    def __call__(self, t: Tensor, x: Tensor) -> Tensor:
        self.nfe += 1
        return -0.5 * x if t < 0.5 else x**2


def _decay(t: Tensor, y: Tensor) -> Tensor:
    return -y


def test_a_single_time_returns_y0_stacked_with_its_gradient() -> None:
    y0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    for solve in (odeint, odeint_adjoint):
        ys = solve(_decay, y0, torch.tensor([0.3], dtype=F64))
        assert ys.shape == (1, 2) and torch.equal(ys[0], y0.detach())
        (grad,) = torch.autograd.grad(ys.sum(), y0)
        assert torch.equal(grad, torch.ones_like(y0))
    pair = odeint(lambda t, y: (-y[0], y[1]), (y0, y0 * 2), [0.0])
    assert isinstance(pair, tuple) and pair[1].shape == (1, 2)


@pytest.mark.parametrize(("name", "order"), [("heun2", 2), ("rk4_alt", 4), ("fehlberg2", 2)])
def test_torchdiffeqs_extra_tableaus_converge_at_their_order(name: str, order: int) -> None:
    y0, t = torch.tensor([1.0], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    errors = [
        float(
            (odeint(_decay, y0, t, method=name, coupling=None, n_steps=n)[-1] - math.exp(-1)).abs()
        )
        for n in (20, 40)
    ]
    assert math.log2(errors[0] / errors[1]) == pytest.approx(order, abs=0.15)


def test_heun2_is_heun_and_fehlberg2_adapts() -> None:
    y0, t = torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([0.0, 2.0], dtype=F64)
    a = odeint(_decay, y0, t, method="heun2", n_steps=7)
    b = odeint(_decay, y0, t, method="heun", n_steps=7)
    assert torch.equal(a, b)
    assert TABLEAUS["fehlberg2"].b_error is not None
    ys = odeint_adjoint(_decay, y0, t, method="fehlberg2", rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(ys[-1], y0 * math.exp(-2), rtol=1e-5, atol=0)


@pytest.mark.parametrize(
    "name", ["explicit_adams", "implicit_adams", "fixed_adams", "scipy_solver"]
)
def test_odeint_refuses_methods_without_a_reversible_form_and_names_odeint_adjoint(name) -> None:
    with pytest.raises(ValueError, match=rf"'{name}' \(torchdiffeq\).*odeint_adjoint runs it"):
        odeint(_decay, torch.ones(2, dtype=F64), [0.0, 1.0], method=name)


def test_dopri8_is_an_adaptive_tableau_with_its_fifth_order_estimate() -> None:
    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    t = torch.tensor([0.0, 2.0], dtype=F64)
    assert TABLEAUS["dopri8"].order == 8 and TABLEAUS["dopri8"].b_error is not None
    ys, stats = odeint_adjoint(_decay, y0, t, method="dopri8", rtol=1e-10, atol=1e-12, stats=True)
    torch.testing.assert_close(ys[-1], y0 * math.exp(-2), rtol=1e-9, atol=0)
    loose = odeint_adjoint(_decay, y0, t, method="dopri8", rtol=1e-6, atol=1e-8, stats=True)[1]
    assert loose.n_accepted < stats.n_accepted


@pytest.mark.parametrize("solve", [odeint, odeint_adjoint])
def test_a_fixed_method_without_a_step_size_steps_from_each_time_to_the_next(solve) -> None:
    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    t = torch.tensor([0.0, 0.3, 1.0, 1.2], dtype=F64)
    got = solve(_decay, y0, t, method="rk4")
    want = solve(_decay, y0, t, method="rk4", n_steps=1)
    assert torch.equal(got, want)
    # torchdiffeq ignores tolerances for fixed methods; the drop-in does too.
    if solve is odeint_adjoint:
        assert torch.equal(odeint_adjoint(_decay, y0, t, 1e-3, 1e-3, "rk4"), want)


def test_the_drop_in_has_no_step_cap_and_odeint_keeps_its_own() -> None:
    # About 11,000 steps at this tolerance: more than odeint's default cap (10,000).
    y0, t = torch.ones(1, dtype=F64), [0.0, 1.0]
    ys, stats = odeint_adjoint(_decay, y0, t, 0.0, 3e-9, "adaptive_heun", stats=True)
    assert int(stats.n_accepted) > 10_000 and not bool(stats.failed)
    torch.testing.assert_close(ys[-1], torch.tensor([math.exp(-1)], dtype=F64), rtol=1e-7, atol=0)
    with pytest.raises(RuntimeError, match="max_steps=10000 trial steps were not enough"):
        odeint(_decay, y0, t, rtol=0.0, atol=3e-9, method="adaptive_heun", coupling=None)


def _counting(field: nn.Module, names: tuple[str, ...]) -> dict[str, int]:
    counts = dict.fromkeys(names, 0)
    for name in names:

        def hook(t0: Tensor, y0: Tensor, dt: Tensor, name: str = name) -> None:
            assert y0.shape == (2,) and t0.ndim == 0
            counts[name] += 1

        setattr(field, name, hook)
    return counts


FORWARD = ("callback_step", "callback_accept_step", "callback_reject_step")
BACKWARD = tuple(n + "_adjoint" for n in FORWARD)


@pytest.mark.parametrize("gradient", ["mali", "checkpoint"])
def test_step_callbacks_run_once_per_step_each_way_on_a_fixed_grid(gradient: str) -> None:
    field = Net()
    counts = _counting(field, FORWARD + BACKWARD)
    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    ys = odeint_adjoint(field, y0, torch.tensor([0.0, 1.0], dtype=F64), method="rk4",
                        options={"step_size": 0.1}, gradient=gradient)  # fmt: skip
    assert counts["callback_step"] == 10 and counts["callback_step_adjoint"] == 0
    ys.sum().backward()
    assert counts["callback_step_adjoint"] == 10 == counts["callback_accept_step_adjoint"]


@pytest.mark.parametrize("gradient", ["mali", "checkpoint"])
def test_adaptive_callbacks_see_every_trial_and_its_decision(gradient: str) -> None:
    field = Net()
    counts = _counting(field, FORWARD + BACKWARD)
    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    ys, stats = odeint_adjoint(field, y0, torch.tensor([0.0, 3.0], dtype=F64), method="dopri5",
                               gradient=gradient, stats=True)  # fmt: skip
    assert counts["callback_accept_step"] == int(stats.n_accepted) > 0
    assert counts["callback_reject_step"] == int(stats.n_rejected)
    assert counts["callback_step"] == int(stats.n_accepted + stats.n_rejected)
    ys.sum().backward()
    assert counts["callback_step_adjoint"] == int(stats.n_accepted)


def test_accept_and_reject_callbacks_on_a_fixed_grid_warn() -> None:
    field = Net()
    _counting(field, FORWARD)
    with pytest.warns(CallbackWarning, match="callback_accept_step, callback_reject_step: a fix"):
        odeint_adjoint(field, torch.ones(2, dtype=F64), [0.0, 1.0], method="rk4")


def test_callbacks_under_a_transform_warn_that_they_do_not_run() -> None:
    field = Net()
    counts = _counting(field, FORWARD)
    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    with pytest.warns(CallbackWarning, match="not called under a torch.func transform"):
        torch.func.grad(lambda y: odeint(field, y, [0.0, 1.0], n_steps=3)[-1].sum())(y0)
    assert counts["callback_step"] == 0


@pytest.mark.parametrize("gradient", ["mali", "checkpoint"])
def test_adjoint_params_of_a_closure_get_backprops_gradient(gradient: str) -> None:
    net = Net()

    def closure(t: Tensor, y: Tensor) -> Tensor:
        return net(t, y)

    y0 = torch.tensor([[0.5, -1.0], [1.5, 0.2]], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    inputs = (y0, *net.parameters())
    ys = odeint_adjoint(closure, y0, t, adjoint_params=tuple(net.parameters()), gradient=gradient)
    got = torch.autograd.grad(ys.square().sum(), inputs)
    same = {"coupling": "auto"} if gradient == "mali" else {}  # the same steps, by backprop
    ref = odeint_adjoint(net, y0, t, gradient="backprop", **same)
    want = torch.autograd.grad(ref.square().sum(), inputs)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_adjoint_params_that_leave_out_a_capture_or_meet_a_transform_are_refused() -> None:
    net, other = Net(), Net()

    def closure(t: Tensor, y: Tensor) -> Tensor:
        return net(t, y) + other(t, y)

    y0 = torch.tensor([0.5, -1.0], dtype=F64, requires_grad=True)
    with pytest.raises(TypeError, match="captured: 'net', 'other'"):
        odeint_adjoint(closure, y0, [0.0, 1.0], adjoint_params=tuple(net.parameters()))
    listed = (*net.parameters(), *other.parameters())
    with pytest.raises(NotImplementedError, match=r"adjoint_params: .* eager code only"):
        torch.func.grad(
            lambda y: odeint_adjoint(closure, y, [0.0, 1.0], adjoint_params=listed)[-1].sum()
        )(y0.detach())


def test_min_step_bounds_the_steps_and_their_cost() -> None:
    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    t = torch.tensor([0.0, 10.0], dtype=F64)
    _, free = odeint_adjoint(_decay, y0, t, method="dopri5", stats=True)
    _, bounded = odeint_adjoint(_decay, y0, t, method="dopri5", options={"min_step": 2.0},
                                stats=True)  # fmt: skip
    assert int(bounded.n_accepted) <= 6 < int(free.n_accepted)


def test_max_step_caps_every_step() -> None:
    field = Net()
    sizes: list[float] = []
    field.callback_accept_step = lambda t0, y0, dt: sizes.append(float(dt))
    odeint_adjoint(field, torch.ones(2, dtype=F64), [0.0, 5.0], method="tsit5", rtol=1e-3,
                   atol=1e-3, options={"max_step": 0.25})  # fmt: skip
    assert len(sizes) >= 20 and max(sizes) <= 0.25 + 1e-12


def test_a_norm_is_called_on_the_state_as_torchdiffeq_calls_it() -> None:
    seen: list[object] = []

    def norm(x: object) -> Tensor:
        seen.append(x)
        return x.abs().max() if isinstance(x, Tensor) else x[0].abs().max()

    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    odeint_adjoint(_decay, y0, [0.0, 1.0], options={"norm": norm})
    assert seen and all(isinstance(x, Tensor) and x.shape == (2,) for x in seen)
    seen.clear()
    odeint_adjoint(lambda t, y: (-y[0], -y[1]), (y0, y0[:1]), [0.0, 1.0], options={"norm": norm})
    assert seen and all(isinstance(x, tuple) and len(x) == 2 for x in seen)


def test_a_norm_that_returns_more_than_a_scalar_is_named() -> None:
    with pytest.raises(TypeError, match=r"norm must return a scalar tensor \(0-dim\), got \(2,\)"):
        odeint_adjoint(_decay, torch.ones(2, dtype=F64), [0.0, 1.0], options={"norm": torch.abs})


def test_a_norm_that_ignores_a_component_lets_it_drift() -> None:
    def fast(t: Tensor, y: Tensor) -> Tensor:
        return torch.stack([-y[0], 50 * torch.cos(50 * t) * torch.ones_like(y[1])])

    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    _, full = odeint_adjoint(fast, y0, [0.0, 1.0], stats=True)
    _, first = odeint_adjoint(fast, y0, [0.0, 1.0], options={"norm": lambda x: x[0].abs()},
                              stats=True)  # fmt: skip
    assert int(first.n_accepted) * 3 < int(full.n_accepted)


@pytest.mark.parametrize("method", ["adaptive_heun", "bosh3", "dopri5", "tsit5"])
def test_jump_t_ends_a_step_at_the_discontinuity_for_fewer_evaluations(method: str) -> None:
    x0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    plain, better = Jump(), Jump()
    a = odeint_adjoint(plain, x0, t, atol=1e-6, method=method)
    b = odeint_adjoint(better, x0, t, rtol=1e-6, atol=1e-6, method=method,
                       options={"jump_t": torch.tensor([0.5])})  # fmt: skip
    assert better.nfe < plain.nfe and b.shape == (2, 2)
    exact = x0.detach() * math.exp(-0.25)
    exact = exact / (1 - 0.5 * exact)  # x' = x^2 from t = 0.5 to 1
    torch.testing.assert_close(b[-1].detach(), exact, rtol=1e-4, atol=0)
    torch.testing.assert_close(a[-1].detach(), exact, rtol=1e-4, atol=0)
    plain.nfe = better.nfe = 0
    a.sum().backward()
    b.sum().backward()
    assert better.nfe < plain.nfe


def test_step_t_makes_a_step_start_exactly_there() -> None:
    field = Net()
    starts: list[float] = []
    field.callback_accept_step = lambda t0, y0, dt: starts.append(float(t0))
    odeint_adjoint(field, torch.ones(2, dtype=F64), [0.0, 2.0], options={"step_t": [0.7, 1.3]})
    assert 0.7 in starts and 1.3 in starts


@pytest.mark.parametrize("solve", [odeint, odeint_adjoint])
def test_a_grid_constructor_sets_the_fixed_grid(solve) -> None:
    x0 = torch.tensor(1.0, dtype=F64, requires_grad=True)
    grid = torch.linspace(0, 1, 11, dtype=F64)
    plain = {"coupling": None, "gradient": "checkpoint"} if solve is odeint else {}
    xs = solve(lambda t, x: x, x0, torch.tensor([0.0, 1.0], dtype=F64), method="euler",
               options={"grid_constructor": lambda f, y0, t: grid}, **plain)  # fmt: skip
    assert float(xs[1]) == pytest.approx(1.1**10, rel=1e-12)
    xs[1].backward()
    assert float(x0.grad) == pytest.approx(1.1**10, rel=1e-12)


def test_a_discontinuous_field_in_float32_finishes_as_in_float64() -> None:
    t = torch.tensor([0.0, 1.0])
    single = odeint_adjoint(Jump(), torch.tensor([1.0, 2.0]), t, atol=1e-6, method="adaptive_heun")
    double = odeint_adjoint(Jump(), torch.tensor([1.0, 2.0], dtype=F64), t.double(), atol=1e-6,
                            method="adaptive_heun")  # fmt: skip
    torch.testing.assert_close(single[-1].double(), double[-1], rtol=1e-5, atol=0)


@pytest.mark.parametrize("gradient", ["checkpoint", "mali"])
def test_perturb_keeps_every_evaluation_off_the_grid_times(gradient: str) -> None:
    times: list[float] = []

    def field(t: Tensor, x: Tensor) -> Tensor:
        times.append(float(t))
        return -x

    x0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    xs = odeint_adjoint(field, x0, [0.0, 1.0], method="rk4", gradient=gradient,
                        options={"step_size": 0.5, "perturb": True})  # fmt: skip
    xs.sum().backward()
    assert times and not {0.0, 0.5, 1.0} & set(times)


def test_perturb_evaluates_a_jump_on_the_side_of_the_step() -> None:
    def switch(t: Tensor, y: Tensor) -> Tensor:
        return torch.ones_like(y) if t < 0.5 else torch.zeros_like(y)

    y0 = torch.zeros(1, dtype=F64)
    plain = odeint_adjoint(switch, y0, [0.0, 1.0], method="rk4", options={"step_size": 0.5})
    exact = odeint_adjoint(switch, y0, [0.0, 1.0], method="rk4",
                           options={"step_size": 0.5, "perturb": True})  # fmt: skip
    assert float(exact[-1]) == pytest.approx(0.5, rel=1e-14)
    # The last stage saw t = 0.5 (rk4 is torchdiffeq's, the 3/8 rule: 0.5 (1 + 3 + 3) / 8).
    assert float(plain[-1]) == pytest.approx(7 / 16, rel=1e-14)


def test_perturb_is_refused_for_schemes_without_stage_times() -> None:
    with pytest.raises(ValueError, match=r"options\['perturb'\] applies to the Runge-Kutta"):
        odeint(_decay, torch.ones(2), [0.0, 1.0], method="alf",
               options={"step_size": 0.5, "perturb": True})  # fmt: skip
