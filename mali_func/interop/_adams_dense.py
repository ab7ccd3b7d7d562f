r"""The Adams methods' grid, outputs between its points, and terminal events.

The grid is uniform, of ``options["step_size"]`` from ``t[0]`` towards ``t[-1]`` (the last step
shorter, as torchdiffeq's), or ``options["grid_constructor"](func, y0, t)`` (strictly monotonic
from ``t[0]`` to ``t[-1]``), or ``t`` itself.

Between grid points :math:`t_k < t < t_{k+1}` (:math:`s = (t - t_k)/h`) the solution is the cubic
Hermite interpolant of the two grid values and their field values (torchdiffeq's
``interp="cubic"``, fourth-order as the steps),

.. math::

    y(t) \approx (2s^3 - 3s^2 + 1)\, y_k + (s^3 - 2s^2 + s)\, h f_k + (3s^2 - 2s^3)\, y_{k+1}
    + (s^3 - s^2)\, h f_{k+1},

or, with ``options["interp"] = "linear"``, the chord (torchdiffeq's default, second-order).

An event (``event_fn``) is the first sign change of :math:`g(t, y(t))` along the grid of
``step_size`` from ``t[0]`` (in ``t``'s direction): the step that changes the sign is bisected on
the interpolant to ``atol`` or the time's precision (as torchdiffeq's fixed-grid solvers do),
and the time gets the implicit-function gradient of :math:`G(t) = g(t, y(t)) = 0`,
:math:`\partial t^* / \partial \theta = -(\partial G / \partial \theta) / G'(t^*)`, by one
Newton step whose value is zero: the returned time is the bisection's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ._inputs import positive_option

State = tuple[Tensor, ...]
MAX_GRID = 10_000_000
"""The most steps a ``step_size`` may ask for (a mistyped one fails at once, not after hours)."""
MAX_EVENT_STEPS = 20_000
"""Grid steps an event search takes before it gives up (torchdiffeq's limit)."""


def uniform_grid(t: Tensor, options: Mapping[str, Any], func: Any, y0: Any) -> Tensor:
    """The uniform grid of ``step_size`` from ``t[0]`` to ``t[-1]`` (the last step shorter),
    ``grid_constructor(func, y0, t)``, or ``t`` itself."""
    if "step_size" in options and "grid_constructor" in options:
        raise ValueError("give options['step_size'] or options['grid_constructor'], not both")
    if "step_size" in options:
        size = positive_option(options, "step_size")
        span = float(t[-1].detach() - t[0].detach())
        if abs(span) / size > MAX_GRID:
            raise ValueError(
                f"options['step_size'] = {size:g} makes more than {MAX_GRID:,} steps over "
                f"[{float(t[0]):g}, {float(t[-1]):g}]"
            )
        n = max(int(-(-abs(span) // size)), 1)
        sign = 1.0 if span >= 0 else -1.0
        inner = t[0] + sign * size * torch.arange(n, dtype=t.dtype, device=t.device)
        return torch.cat([inner, t[-1:]])
    if "grid_constructor" in options:
        made = options["grid_constructor"](func, y0, t)
        grid = torch.as_tensor(made, dtype=t.dtype, device=t.device)
        steps = grid[1:] - grid[:-1] if grid.ndim == 1 else grid
        ends = grid.ndim == 1 and grid.numel() >= 2 and bool(grid[0] == t[0] and grid[-1] == t[-1])
        if not ends or not bool((steps * (t[-1] - t[0]) > 0).all()):
            raise ValueError(
                "options['grid_constructor'] must return a 1-D tensor of times from t[0] to "
                "t[-1], strictly monotonic in t's direction"
            )
        return grid
    return t


def interpolate(
    grid: Tensor, ys: list[State], fs: list[State], at: Tensor, cubic: bool = True
) -> State:
    """The solution at time ``at`` from the grid values (exact at grid points)."""
    forward = bool(grid[-1] >= grid[0])
    key = grid.detach() if forward else -grid.detach()
    where = key.new_tensor(float(at.detach()) if forward else -float(at.detach()))
    k = int(torch.searchsorted(key, where, right=True)) - 1
    k = min(max(k, 0), grid.numel() - 2)
    if bool(grid[k] == at):
        return ys[k]
    if bool(grid[k + 1] == at):
        return ys[k + 1]
    return segment(grid[k], grid[k + 1], ys[k], fs[k], ys[k + 1], fs[k + 1], at, cubic)


def segment(
    t0: Tensor, t1: Tensor, y0: State, f0: State, y1: State, f1: State, at: Tensor, cubic: bool
) -> State:
    """The interpolant of one step at ``at``."""
    h = t1 - t0
    s = (at - t0) / h
    if not cubic:
        return tuple(a + s * (b - a) for a, b in zip(y0, y1))
    h00, h10 = (1 + 2 * s) * (1 - s) ** 2, s * (1 - s) ** 2
    h01, h11 = s**2 * (3 - 2 * s), s**2 * (s - 1)
    return tuple(
        h00 * a + h10 * h * fa + h01 * b + h11 * h * fb for a, fa, b, fb in zip(y0, f0, y1, f1)
    )


def _slope(
    t0: Tensor, t1: Tensor, y0: State, f0: State, y1: State, f1: State, at: Tensor, cubic: bool
) -> State:
    """``d/dt`` of :func:`segment` at ``at`` (out of the gradient)."""
    with torch.no_grad():
        h = t1 - t0
        s = (at - t0) / h
        if not cubic:
            return tuple((b - a) / h for a, b in zip(y0, y1))
        d00, d10 = 6 * s * (s - 1) / h, (3 * s - 1) * (s - 1)
        d01, d11 = -6 * s * (s - 1) / h, s * (3 * s - 2)
        return tuple(
            d00 * a + d10 * fa + d01 * b + d11 * fb for a, fa, b, fb in zip(y0, f0, y1, f1)
        )


def _sign(value: Tensor) -> Tensor:
    return torch.sign(value.detach())


def until_event(
    step: Callable[[Tensor, Tensor, State], tuple[State, State]],
    field: Callable[[Tensor, State], State],
    event: Callable[[Tensor, State], Tensor],
    t0: Tensor,
    h: Tensor,
    y0: State,
    tol: float,
    cubic: bool,
) -> tuple[Tensor, State]:
    """``(event_t, y(event_t))``: ``step(t, t + h, y) -> (y_next, f(t, y))`` along the grid until
    ``event`` changes sign, then the bisection and its implicit-function gradient (module docs)."""
    sign0, tk, yk = _sign(event(t0, y0)), t0, y0
    for _ in range(MAX_EVENT_STEPS):
        t1 = tk + h
        y1, fk = step(tk, t1, yk)
        if _sign(event(t1, y1)) != sign0:
            break
        tk, yk = t1, y1
    else:
        raise RuntimeError(
            f"event_fn did not change sign within {MAX_EVENT_STEPS} steps of "
            f"step_size={float(h.abs()):g} from t0={float(t0):g}"
        )
    f1 = field(t1, y1)
    ends = (tk, t1, yk, fk, y1, f1)
    with torch.no_grad():
        lo, hi = tk.detach(), t1.detach()
        # Halvings to reach tol, as torchdiffeq counts them; fewer where the time's precision
        # ends first (float32 cannot split an interval of one ulp).
        for _ in range(max(math.ceil(math.log2(float(h.abs()) / tol)), 0) if tol > 0 else 64):
            mid = (lo + hi) / 2
            if bool(mid == lo) or bool(mid == hi):
                break
            same = _sign(event(mid, segment(*ends, mid, cubic))) == sign0
            lo, hi = (mid, hi) if bool(same) else (lo, mid)
        tb = (lo + hi) / 2
    return _newton(event, ends, tb, cubic)


def _newton(
    event: Callable[[Tensor, State], Tensor], ends: tuple, tb: Tensor, cubic: bool
) -> tuple[Tensor, State]:
    """``tb`` with the implicit-function gradient of ``G(t) = event(t, y(t))``, and ``y`` there."""
    with torch.enable_grad():
        at = tb.clone().requires_grad_()
        point = tuple(x.detach().requires_grad_() for x in segment(*ends, tb, cubic))
        g = event(at, point).reshape(())
        parts = torch.autograd.grad(g, (at, *point), allow_unused=True)
    slope = _slope(*ends, tb, cubic)
    rate = torch.zeros_like(tb) if parts[0] is None else parts[0]
    for d, v in zip(parts[1:], slope):
        if d is not None:
            rate = rate + (d * v).sum()
    if not bool(rate != 0):
        raise ValueError("event_fn does not depend on the state y at the event (zero slope)")
    value = event(tb, segment(*ends, tb, cubic)).reshape(())
    event_t = tb - (value - value.detach()) / rate
    return event_t, segment(*ends, event_t, cubic)


__all__ = ["MAX_EVENT_STEPS", "MAX_GRID", "interpolate", "segment", "uniform_grid", "until_event"]
