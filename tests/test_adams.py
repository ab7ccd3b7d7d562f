"""``odeint_adjoint(..., method="explicit_adams" | "implicit_adams" | "fixed_adams")``: the
coefficients, the order of convergence, outputs between grid points, gradients (float64) against
finite differences, vmap against a loop, and torchdiffeq's own trajectories where it is
installed."""

from __future__ import annotations

import math
from fractions import Fraction
from itertools import pairwise

import pytest
import torch
from helpers import F64, relative_error
from torch import Tensor

from mali_func import CallbackWarning, odeint_adjoint
from mali_func.interop._adams import coefficients

A = torch.tensor([[-0.3, 1.0], [-1.0, -0.2]], dtype=F64)
Y0 = torch.tensor([1.0, -0.5], dtype=F64)


def _linear(t: Tensor, y: Tensor) -> Tensor:
    return y @ A.T


def _exact(t: Tensor) -> Tensor:
    return torch.stack([torch.linalg.matrix_exp(A * s) @ Y0 for s in t])


@pytest.mark.parametrize(
    ("steps", "implicit", "want"),
    [
        (1, False, [1]),
        (2, False, [Fraction(3, 2), Fraction(-1, 2)]),
        (4, False, [Fraction(k, 24) for k in (55, -59, 37, -9)]),
        (2, True, [Fraction(1, 2), Fraction(1, 2)]),
        (4, True, [Fraction(k, 24) for k in (9, 19, -5, 1)]),
    ],
)
def test_coefficients_are_the_adams_bashforth_and_moulton_ones(steps, implicit, want) -> None:
    assert coefficients(steps, implicit) == pytest.approx([float(w) for w in want], abs=1e-15)


@pytest.mark.parametrize(
    ("method", "max_order", "order"),
    [("explicit_adams", 5, 4), ("implicit_adams", 4, 4), ("fixed_adams", 4, 4)],
)
def test_global_error_falls_at_the_methods_order(method: str, max_order: int, order: int) -> None:
    t = torch.tensor([0.0, 3.0], dtype=F64)
    sizes = [0.1, 0.05, 0.025]
    errors = []
    for h in sizes:
        options = {"step_size": h, "max_order": max_order}
        ys = odeint_adjoint(_linear, Y0, t, 1e-12, 1e-14, method, options)
        errors.append((ys[-1] - _exact(t)[-1]).abs().max().item())
    slopes = [math.log2(a / b) for a, b in pairwise(errors)]
    assert all(abs(s - order) < 0.4 for s in slopes), slopes


def test_outputs_between_grid_points_are_fourth_order_accurate() -> None:
    t = torch.tensor([0.0, 0.33, 1.01, 2.0], dtype=F64)  # off the grid of 0.05
    ys = odeint_adjoint(_linear, Y0, t, method="implicit_adams", options={"step_size": 0.05})
    assert ys.shape == (4, 2)
    assert torch.equal(ys[0], Y0)
    assert relative_error(ys, _exact(t)) < 1e-6


def test_grid_constructor_and_backward_time() -> None:
    t = torch.tensor([2.0, 1.0, 0.0], dtype=F64)
    grid = torch.linspace(2.0, 0.0, 81, dtype=F64)
    options = {"grid_constructor": lambda func, y0, t: grid}
    ys = odeint_adjoint(_linear, Y0, t, method="explicit_adams", options=options | {"max_order": 5})
    want = torch.stack([torch.linalg.matrix_exp(A * (s - 2.0)) @ Y0 for s in t])
    assert relative_error(ys, want) < 1e-6


def test_perturb_moves_every_evaluation_off_the_grid_points() -> None:
    seen: list[float] = []

    def field(t: Tensor, y: Tensor) -> Tensor:
        seen.append(float(t))
        return -y

    t = torch.tensor([0.0, 1.0], dtype=F64)
    grid = {0.0, 0.25, 0.5, 0.75, 1.0}
    options = {"step_size": 0.25, "perturb": True}
    odeint_adjoint(field, torch.ones(1, dtype=F64), t, method="fixed_adams", options=options)
    assert seen and not grid.intersection(seen)
    assert all(any(0 < abs(s - g) < 1e-15 for s in seen) for g in grid)
    seen.clear()
    options = {"step_size": 0.25}
    odeint_adjoint(field, torch.ones(1, dtype=F64), t, method="fixed_adams", options=options)
    assert grid.issubset(seen)


@pytest.mark.parametrize("method", ["explicit_adams", "implicit_adams"])
def test_gradcheck_through_the_state_args_and_an_output_time(method: str) -> None:
    # The grid is built from t[0], t[-1] and the step size (its point count jumps as they
    # move), so finite differences are taken in an output time between grid points.
    def field(t: Tensor, y: Tensor, m: Tensor) -> Tensor:
        return y @ m.T + torch.sin(t)

    ends = torch.tensor([0.0, 1.0], dtype=F64)

    def solve(y0: Tensor, m: Tensor, middle: Tensor) -> Tensor:
        t = torch.cat([ends[:1], middle, ends[1:]])
        options = {"step_size": 0.125, "max_order": 5}
        return odeint_adjoint(field, y0, t, 1e-12, 1e-14, method, options, args=(m,))

    inputs = (Y0.clone(), A.clone(), torch.tensor([0.37, 0.6], dtype=F64))
    assert torch.autograd.gradcheck(solve, tuple(x.requires_grad_() for x in inputs))


def test_tuple_state_and_a_one_element_t() -> None:
    def field(t: Tensor, y: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        return y[1], -y[0]

    t = torch.tensor([0.0, 1.0, 2.0], dtype=F64)
    state = (torch.ones(1, dtype=F64), torch.zeros(1, dtype=F64))
    xs, vs = odeint_adjoint(field, state, t, method="implicit_adams", options={"step_size": 0.02})
    torch.testing.assert_close(xs[:, 0], torch.cos(t), rtol=0, atol=1e-8)
    torch.testing.assert_close(vs[:, 0], -torch.sin(t), rtol=0, atol=1e-8)
    x1, v1 = odeint_adjoint(field, state, t[:1], method="explicit_adams")
    assert x1.shape == (1, 1) and torch.equal(x1[0], state[0]) and torch.equal(v1[0], state[1])


@pytest.mark.parametrize(("method", "tol"), [("explicit_adams", 1e-14), ("fixed_adams", 1e-5)])
def test_vmap_matches_a_loop_over_the_batch(method: str, tol: float) -> None:
    # Under vmap the corrector runs all max_iters iterations and keeps its order (its
    # convergence test would read batched values); eagerly it stops once converged, or drops an
    # order where it does not: the two agree to the method's accuracy, not to round-off.
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    batch = torch.randn(4, 2, dtype=F64)

    def solve(y0: Tensor) -> Tensor:
        return odeint_adjoint(_linear, y0, t, 1e-10, 1e-12, method, {"step_size": 0.1})

    looped = torch.stack([solve(y) for y in batch])
    torch.testing.assert_close(torch.func.vmap(solve)(batch), looped, rtol=tol, atol=tol)


def test_a_corrector_that_does_not_converge_warns() -> None:
    t = torch.tensor([0.0, 1.0], dtype=F64)
    options = {"step_size": 0.05, "max_iters": 1}
    with pytest.warns(RuntimeWarning, match="did not converge within max_iters"):
        odeint_adjoint(lambda t, y: -30 * y, Y0, t, 1e-10, 1e-12, "implicit_adams", options)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"options": {"step_size": 0.1, "grid_constructor": lambda f, y, t: t}}, "not both"),
        ({"options": {"step_size": -0.1}}, r"step_size'\] must be positive"),
        ({"options": {"max_order": 0}}, r"max_order'\] must be an int in \[1, 12\]"),
        ({"options": {"norm": abs}}, r"unknown options \['norm'\]"),
        ({"event_fn": lambda t, y: y.sum()}, r"event_fn with an Adams method needs .*step_size"),
        ({"options": {"interp": "quadratic"}}, r"interp'\] must be 'cubic' or 'linear'"),
        ({"options": {"step_size": 1e-300}}, r"makes more than 10,000,000 steps"),
        ({"options": {"step_size": float("inf")}}, r"step_size'\] must be positive and finite"),
        ({"options": {"step_size": 0.1, "max_iters": 0}}, r"max_iters'\] must be an int >= 1"),
        (
            {"options": {"grid_constructor": lambda f, y, t: torch.tensor([0.0, 0.7, 0.3, 1.0])}},
            r"strictly monotonic in t's direction",
        ),
        ({"t": torch.tensor([0.0, 1.0, 0.5])}, "t must be strictly increasing or strictly"),
        ({"y0": torch.tensor([1, 2])}, "y0 must have a floating-point dtype"),
        ({"y0": torch.tensor([math.nan, 1.0])}, "y0 must be finite"),
        ({"rtol": -1.0}, "rtol must be positive and finite"),
        ({"func": lambda t, y: y[:1]}, r"func must return a tensor of the shape and dtype of y0"),
        ({"n_steps": 3}, r"torchdiffeq's arguments only; \['n_steps'\]"),
    ],
)
def test_bad_input_is_named(kwargs: dict, match: str) -> None:
    call = {"func": _linear, "y0": Y0, "t": torch.tensor([0.0, 1.0], dtype=F64), **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        odeint_adjoint(call.pop("func"), call.pop("y0"), call.pop("t"), method="implicit_adams",
                       **call)  # fmt: skip


@pytest.mark.parametrize("method", ["explicit_adams", "implicit_adams"])
@pytest.mark.parametrize("max_order", [4, 8])
def test_trajectories_match_torchdiffeqs_to_round_off(method: str, max_order: int) -> None:
    torchdiffeq = pytest.importorskip("torchdiffeq")

    def field(t: Tensor, y: Tensor) -> Tensor:
        return torch.tanh(y @ A.T) + torch.cos(3 * t)

    t = torch.linspace(0.0, 2.0, 11, dtype=F64)  # on the grid: no interpolation
    options = {"step_size": 0.05, "max_order": max_order}
    ours = odeint_adjoint(field, Y0, t, 1e-7, 1e-9, method, options)
    theirs = torchdiffeq.odeint(field, Y0, t, rtol=1e-7, atol=1e-9, method=method, options=options)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-13)


def _event_time(k: Tensor, y0: Tensor, interp: str) -> tuple[Tensor, Tensor]:
    t = torch.tensor([0.0, 1.0], dtype=F64)
    options = {"step_size": 0.01, "interp": interp}
    return odeint_adjoint(
        lambda t, y: -k * y, y0, t, 1e-7, 1e-12, "implicit_adams", options,
        event_fn=lambda t, y: y.sum() - 0.5,
    )  # fmt: skip


@pytest.mark.parametrize("interp", ["cubic", "linear"])
def test_an_event_is_found_on_the_interpolant_with_its_implicit_gradient(interp: str) -> None:
    # y' = -k y from y0: y(t) = y0 exp(-k t) reaches 0.5 at t* = log(2 y0) / k.
    k = torch.tensor(0.8, dtype=F64, requires_grad=True)
    y0 = torch.tensor([1.5], dtype=F64, requires_grad=True)
    event_t, ys = _event_time(k, y0, interp)
    want, close = math.log(3.0) / 0.8, 1e-7 if interp == "cubic" else 1e-4
    assert ys.shape == (2, 1) and torch.equal(ys[0], y0)
    assert event_t.item() == pytest.approx(want, rel=close)
    assert ys[1].item() == pytest.approx(0.5, abs=close)
    g_k, g_y0 = torch.autograd.grad(event_t, (k, y0))
    # The chord's slope is second-order: so is the linear interpolant's event gradient.
    assert g_k.item() == pytest.approx(-want / 0.8, rel=1e-5 if interp == "cubic" else 5e-3)
    assert g_y0.item() == pytest.approx(1 / (0.8 * 1.5), rel=1e-5 if interp == "cubic" else 5e-3)
    # The exact gradient of the discrete event time: central differences of the same solve.
    eps = 1e-5
    with torch.no_grad():
        fd_k = (_event_time(k + eps, y0, interp)[0] - _event_time(k - eps, y0, interp)[0]) / (
            2 * eps
        )
    assert g_k.item() == pytest.approx(fd_k.item(), rel=1e-5)


def test_an_event_backwards_in_time_and_one_never_reached() -> None:
    y0 = torch.tensor([1.0], dtype=F64)
    t = torch.tensor([0.0, -1.0], dtype=F64)
    event_t, _ = odeint_adjoint(
        lambda t, y: y, y0, t, method="explicit_adams", options={"step_size": 0.01, "max_order": 5},
        event_fn=lambda t, y: y.sum() - 0.5,
    )  # fmt: skip
    assert event_t.item() == pytest.approx(math.log(0.5), rel=1e-5)
    with pytest.raises(RuntimeError, match="did not change sign within 20000 steps"):
        odeint_adjoint(
            lambda t, y: -y, y0, t.flip(0), method="explicit_adams",
            options={"step_size": 0.01, "max_order": 5},
            event_fn=lambda t, y: y.sum() + 1.0,
        )  # fmt: skip


def test_step_callbacks_run_once_per_grid_step_each_way() -> None:
    seen: dict[str, list[float]] = {"forward": [], "backward": []}

    class Field(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(-0.5, dtype=F64))

        def forward(self, t: Tensor, y: Tensor) -> Tensor:
            return self.w * y

        def callback_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
            seen["forward"].append(float(t0))

        def callback_step_adjoint(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
            seen["backward"].append(float(t0))

    t = torch.tensor([0.0, 1.0], dtype=F64)
    ys = odeint_adjoint(Field(), Y0, t, method="implicit_adams", options={"step_size": 0.125})
    grid = [0.125 * n for n in range(8)]
    assert seen["forward"] == pytest.approx(grid) and not seen["backward"]
    ys[-1].sum().backward()
    assert seen["backward"] == pytest.approx(grid[::-1])


def test_accept_and_reject_callbacks_warn_on_the_fixed_grid() -> None:
    class Field(torch.nn.Module):
        def forward(self, t: Tensor, y: Tensor) -> Tensor:
            return -y

        def callback_accept_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None: ...

    with pytest.warns(CallbackWarning, match="callback_accept_step: a fixed grid"):
        odeint_adjoint(Field(), Y0, torch.tensor([0.0, 1.0], dtype=F64), method="explicit_adams")


def test_an_event_in_float32_stops_bisecting_at_the_times_precision() -> None:
    # atol 1e-9 is below float32's spacing near t = 0.87: the bisection ends there, not never.
    y0 = torch.tensor([1.0])
    t = torch.tensor([0.0, 1.0])
    event_t, _ = odeint_adjoint(
        lambda t, y: -y, y0, t, 1e-7, 1e-9, "implicit_adams", {"step_size": 0.01},
        event_fn=lambda t, y: y.sum() - 0.42,
    )  # fmt: skip
    assert event_t.dtype == torch.float32
    assert event_t.item() == pytest.approx(-math.log(0.42), rel=1e-5)
