"""Terminal events: event times and states against the exact ones, their gradients against the
analytic ones and finite differences (float64), MALI against backprop, and the bad inputs."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from helpers import F64
from torch import Tensor, nn

from mali_func import odeint, odeint_adjoint, odeint_event

G = 9.8
TIGHT = {
    "method": "dopri5",
    "rtol": 1e-10,
    "atol": 1e-12,
    "coupling": None,
    "gradient": "checkpoint",
}


def fall(t: Tensor, s: Tensor) -> Tensor:
    return torch.stack([s[1], torch.full_like(s[1], -G)])


def floor(t: Tensor, s: Tensor) -> Tensor:
    return s[0]


def _drop(height: Tensor) -> Tensor:
    return torch.stack([height, torch.zeros_like(height)])


@pytest.mark.parametrize("interface", [odeint, odeint_adjoint])
def test_a_dropped_ball_hits_the_floor_at_the_exact_time_and_speed(interface) -> None:
    h = torch.tensor(2.0, dtype=F64, requires_grad=True)
    options = TIGHT if interface is odeint else {}
    t, solution = odeint_event(fall, _drop(h), 0.0, event_fn=floor, odeint_interface=interface,
                               **options)  # fmt: skip
    assert solution.shape == (2, 2)
    assert float(t) == pytest.approx(math.sqrt(2 * 2.0 / G), rel=1e-9)
    assert float(solution[-1, 1]) == pytest.approx(-math.sqrt(2 * G * 2.0), rel=1e-9)
    assert abs(float(solution[-1, 0])) < 1e-9
    # d t / d h = 1 / sqrt(2 g h), and the speed at impact moves with the time: d v / d h = -g dt/dh
    dt_dh, dv_dh = (torch.autograd.grad(x, h, retain_graph=True)[0] for x in (t, solution[-1, 1]))
    assert float(dt_dh) == pytest.approx(1 / math.sqrt(2 * G * 2.0), rel=1e-8)
    assert float(dv_dh) == pytest.approx(-G / math.sqrt(2 * G * 2.0), rel=1e-8)


def test_torchdiffeqs_event_fn_in_odeint_returns_the_time_and_two_states() -> None:
    y0 = _drop(torch.tensor(1.0, dtype=F64))
    t, ys = odeint_adjoint(fall, y0, torch.tensor([0.0, 1.0], dtype=F64),
                           event_fn=lambda t, s: s[0] - 0.5)  # fmt: skip
    assert ys.shape == (2, 2) and torch.equal(ys[0], y0)
    assert float(t) == pytest.approx(math.sqrt(2 * 0.5 / G), rel=1e-7)


def _bounces(height: Tensor, restitution: Tensor, n: int = 3) -> Tensor:
    t, state, times = torch.zeros((), dtype=F64), _drop(height), []
    for _ in range(n):
        t, solution = odeint_event(fall, state, t, event_fn=floor, **TIGHT)
        times.append(t)
        state = torch.stack([torch.zeros_like(solution[-1, 0]), -restitution * solution[-1, 1]])
    return torch.stack(times)


def test_bounce_times_and_their_gradients_equal_finite_differences() -> None:
    h = torch.tensor(1.5, dtype=F64, requires_grad=True)
    e = torch.tensor(0.8, dtype=F64, requires_grad=True)
    times = _bounces(h, e)
    first = math.sqrt(2 * 1.5 / G)
    exact = [first, first * (1 + 2 * 0.8), first * (1 + 2 * 0.8 + 2 * 0.64)]
    torch.testing.assert_close(times, torch.tensor(exact, dtype=F64), rtol=1e-9, atol=0)
    grads = torch.autograd.grad(times[-1], (h, e))
    eps = 1e-6
    with torch.no_grad():
        fd_h = (_bounces(h + eps, e)[-1] - _bounces(h - eps, e)[-1]) / (2 * eps)
        fd_e = (_bounces(h, e + eps)[-1] - _bounces(h, e - eps)[-1]) / (2 * eps)
    assert float(grads[0]) == pytest.approx(float(fd_h), rel=1e-6)
    assert float(grads[1]) == pytest.approx(float(fd_e), rel=1e-6)


class Field(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2, dtype=F64)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return torch.tanh(self.lin(y)) + torch.tensor([1.0, 0.0], dtype=F64)


@pytest.mark.parametrize("gradient", ["mali", "checkpoint"])
def test_an_event_time_differentiated_with_mali_equals_backprop(gradient: str) -> None:
    field = Field()
    y0 = torch.tensor([0.2, -0.3], dtype=F64, requires_grad=True)
    inputs = (y0, *field.parameters())
    results = []
    for how in (gradient, "backprop"):
        t, ys = odeint_event(field, y0, 0.0, event_fn=lambda t, y: y[0] - 1.5, method="tsit5",
                             rtol=1e-8, atol=1e-10, gradient=how)  # fmt: skip
        results.append(torch.autograd.grad(t + ys[-1].square().sum(), inputs))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_an_event_that_never_happens_is_reported_not_hung_on() -> None:
    with pytest.raises(RuntimeError, match="event_fn did not cross zero between t = 0"):
        odeint_event(lambda t, y: torch.ones_like(y), torch.ones(1, dtype=F64), 0.0,
                     event_fn=lambda t, y: y.sum(), method="dopri5")  # fmt: skip


@pytest.mark.parametrize("level", [0.999, 0.99])
def test_the_first_of_two_close_crossings_is_found(level: float) -> None:
    """x = sin(20 t) passes ``level`` twice within 0.005-0.013 near its first peak: between two
    of a window's 32 output times, but not between the samples taken per solver step."""
    w = 20.0

    def oscillator(t: Tensor, s: Tensor) -> Tensor:
        return torch.stack([s[1], -w * w * s[0]])

    event_t, _ = odeint_event(oscillator, torch.tensor([0.0, w], dtype=F64), 0.0,
                              event_fn=lambda t, s: s[0] - level, method="dopri5",
                              rtol=1e-9, atol=1e-11)  # fmt: skip
    assert abs(float(event_t) - math.asin(level) / w) < 1e-8


def test_event_mode_takes_exactly_two_times() -> None:
    with pytest.raises(ValueError, match="with event_fn, t must hold two times"):
        odeint(fall, _drop(torch.tensor(1.0, dtype=F64)), torch.tensor([0.0, 1.0, 2.0]),
               event_fn=floor)  # fmt: skip


@pytest.mark.parametrize(
    ("event_fn", "match"),
    [
        (lambda t, y: y, "event_fn must return a scalar tensor"),
        (lambda t, y: t - 0.3, "event_fn does not depend on the state y"),
        (3, "event_fn must be callable"),
        (lambda t, y: y[0] * float("nan"), "event_fn returned NaN at t = 0"),
    ],
)
def test_bad_event_functions_are_named(event_fn, match: str) -> None:
    with pytest.raises((TypeError, ValueError), match=match):
        odeint_event(fall, _drop(torch.tensor(1.0, dtype=F64)), 0.0, event_fn=event_fn)


class Gravity(nn.Module):
    """``fall`` with a learnable gravity."""

    def __init__(self) -> None:
        super().__init__()
        self.g = nn.Parameter(torch.tensor(G, dtype=F64))

    def forward(self, t: Tensor, s: Tensor) -> Tensor:
        return torch.stack([s[1], -self.g * torch.ones_like(s[1])])


class Drop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.field = Gravity()

    def forward(self, h: Tensor) -> Tensor:
        return odeint_event(self.field, _drop(h), 0.0, event_fn=floor, **TIGHT)[0]


@pytest.mark.parametrize("gradient", ["checkpoint", "mali"])
def test_vmap_gives_each_sample_its_own_event_time_and_gradient(gradient: str) -> None:
    options = {**TIGHT, "gradient": gradient}
    if gradient == "mali":
        options["coupling"] = "auto"

    def event_time(h: Tensor) -> Tensor:
        return odeint_event(fall, _drop(h), 0.0, event_fn=floor, **options)[0]

    heights = torch.tensor([0.5, 1.0, 3.0], dtype=F64)
    exact = torch.sqrt(2 * heights / G)
    batched = torch.func.vmap(event_time)(heights)
    torch.testing.assert_close(batched, exact, rtol=1e-8, atol=0)
    torch.testing.assert_close(batched, torch.stack([event_time(h) for h in heights]))
    per_sample = torch.func.vmap(torch.func.grad(event_time))(heights)
    torch.testing.assert_close(per_sample, 1 / torch.sqrt(2 * G * heights), rtol=1e-7, atol=0)


def test_per_sample_gradients_reach_the_field_s_parameters() -> None:
    """``functional_call`` with the parameters, ``vmap(grad)`` over the heights: d t_e / d g per
    sample, ``-sqrt(2 h / g^3) / 2``."""
    drop = Drop()
    params = {k: v.detach() for k, v in drop.named_parameters()}

    def event_time(p: dict[str, Tensor], h: Tensor) -> Tensor:
        return torch.func.functional_call(drop, p, (h,))

    heights = torch.tensor([0.5, 2.0], dtype=F64)
    grads = torch.func.vmap(torch.func.grad(event_time), in_dims=(None, 0))(params, heights)
    want = -0.5 * torch.sqrt(2 * heights / G**3)
    torch.testing.assert_close(grads["field.g"], want, rtol=1e-7, atol=0)


def test_a_sample_whose_event_never_happens_fails_clearly_under_vmap() -> None:
    def event_time(h: Tensor) -> Tensor:
        return odeint_event(fall, _drop(h), 0.0, event_fn=lambda t, s: s[0] ** 2 + 1,
                            **TIGHT)[0]  # fmt: skip

    with pytest.raises(RuntimeError, match="event_fn did not cross zero"):
        torch.func.vmap(event_time)(torch.tensor([1.0, 2.0], dtype=F64))


def test_events_under_torch_compile_are_refused_with_what_to_do() -> None:
    def solve(h: Tensor) -> Tensor:
        return odeint_event(fall, _drop(h), 0.0, event_fn=floor)[0]

    with pytest.raises(Exception, match="eager code only"):
        torch.compile(solve, fullgraph=True, backend="eager")(torch.tensor(1.0, dtype=F64))


@pytest.mark.slow
def test_the_bouncing_ball_example_learns_the_restitution() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import bouncing_ball

    result = bouncing_ball.main(["--steps", "30"])
    assert result["restitution"] == pytest.approx(0.8, abs=1e-4)
    assert result["height"] == pytest.approx(1.5, abs=1e-4)
