"""Terminal events: solve until ``event_fn(t, y)`` crosses zero, with exact event-time gradients.

``odeint(func, y0, t, event_fn=g)`` (torchdiffeq's convention) integrates from ``t[0]`` in the
direction of ``t[1]`` until ``g`` changes sign, and returns ``(event_t, solution)`` with
``solution`` the states at ``t[0]`` and at the event. :func:`odeint_event` is torchdiffeq's
wrapper with the same results.

The event time is the root of ``F(tau) = g(tau, y(tau))`` where ``y(tau)`` is the discrete solve
with the caller's method and gradient: a bracket ``[t_lo, t_hi]`` is found on solves with output
times (windows growing fourfold, each from the last one's end), and the event solve is the solve
from ``t[0]`` to ``t_lo`` followed by one from ``t_lo`` to ``tau``, whose ``F`` the Illinois
method refines to a few ulps of ``tau``. Its gradient comes from the implicit function theorem
(as in Chen, Amos & Nickel, "Learning neural event functions for ordinary differential
equations", ICLR 2021):

    d tau / d theta = -(dg/dy . dy/dtheta) / (dg/dt + dg/dy . f(tau, y)),

applied to the discrete solve, so MALI's (or checkpointing's) gradient of ``y(tau)`` carries over,
and the state at the event moves with the event time, ``dy_e = dy/dtheta + f dtau``. Events need
values of the solution on the host: eager code only (``torch.compile`` and export raise); under
:mod:`torch.func` transforms each sample is solved eagerly on its own
(:mod:`mali_func._events_per_sample`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ._events_per_sample import events_per_sample
from .backends._mode import tracing, under_transform

WINDOW_OUTPUTS = 32
"""Output times of each bracketing window, at least."""
SAMPLES_PER_STEP = 4
"""Output times per step of a window's solve: ``event_fn`` is read at least this often per step
(torchdiffeq reads it once, at each step's end), so a sign change and its return inside one
window is found wherever the solve resolves it."""
MAX_WINDOWS = 12
"""Windows, each four times as long as the last, before an event that never happens is reported
(from a first window of ``|t[1] - t[0]|``: about 5.6 million times that span in all)."""
MAX_REFINEMENTS = 60


def solve_until_event(
    solve: Callable[..., Any],
    func: Any,
    y0: Any,
    t: Tensor,
    event_fn: Any,
    kwargs: dict[str, Any],
    args: tuple[Tensor, ...] = (),
    *,
    adaptive: bool = True,
) -> tuple[Tensor, Any]:
    """``(event_t, solution)`` for ``solve(func, y0, times, **kwargs)`` stopped by ``event_fn``
    (``args``: what ``func`` receives after ``y``; ``adaptive``: whether the solve chooses its
    steps, so that a bracketing window is sampled per step). Under a :mod:`torch.func`
    transform each sample is solved on its own, eagerly (:mod:`mali_func._events_per_sample`)."""
    if under_transform() and not tracing():

        def eager(f: Any, y: Any, t_: Tensor, ev: Any, a: tuple[Tensor, ...]) -> Any:
            return solve_until_event(
                solve, f, y, t_, ev, {**kwargs, "args": a}, a, adaptive=adaptive
            )

        return events_per_sample(eager, func, y0, t, event_fn, args)
    _check(event_fn, t)
    tuple_state = isinstance(y0, (tuple, list))
    t0 = t[0]
    span = float((t[1] - t[0]).detach())
    if span == 0.0:
        raise ValueError("with event_fn, t[1] must differ from t[0]: it gives the direction")

    def last(ys: Any) -> Any:
        return tuple(y[-1] for y in ys) if tuple_state else ys[-1]

    def solve_from(y: Any, a: Tensor, b: float) -> Any:
        end = a.new_tensor(b)
        if bool(end == a.detach()):  # the bracket's own end (in the times' dtype): no step
            return y
        return last(solve(func, y, torch.stack([a, end]), **kwargs))

    def value(tau: float, y: Any) -> float:
        return _finite_value(event_fn, t0.new_tensor(tau), y)

    _check_depends(event_fn, t0, y0, tuple_state)
    with torch.no_grad():
        start = float(t0.detach())
        sign0 = math.copysign(1.0, value(start, _detached(y0)))
        lo, hi = _bracket(solve, func, y0, t0, span, event_fn, sign0, tuple_state, kwargs,
                          adaptive)  # fmt: skip
        # The event solve is the prefix to lo, then one solve from lo: refined on the second.
        y_lo = _detached(y0) if lo == start else solve_from(_detached(y0), t0.detach(), lo)
        t_lo = t0.new_tensor(lo)
        tau = _illinois(lambda s: sign0 * value(s, solve_from(y_lo, t_lo, s)), lo, hi)
    y_mid = y0 if lo == start else solve_from(y0, t0, lo)
    y_star = solve_from(y_mid, t0 if lo == start else t_lo, tau)
    field = (lambda s, y: func(s, y, *args)) if args else func
    return _rerouted(field, event_fn, t0.new_tensor(tau), y_star, y0, tuple_state)


def _check(event_fn: Any, t: Tensor) -> None:
    if not callable(event_fn):
        raise TypeError(f"event_fn must be callable as event_fn(t, y), got {type(event_fn)}")
    if tracing():
        raise NotImplementedError(
            "event_fn: events are found in eager code only (the event time is searched on the "
            "host); under torch.compile or export solve to a fixed end time, or call the event "
            "solve eagerly (torch.func transforms take each sample on its own)"
        )
    if t.ndim != 1 or t.shape[0] != 2:
        raise ValueError(
            "with event_fn, t must hold two times, t0 and a second giving the direction "
            f"(torchdiffeq's convention), got {tuple(t.shape)}"
        )


def _check_depends(event_fn: Any, t0: Tensor, y0: Any, tuple_state: bool) -> None:
    """An event function must read the state (one of the time alone marks a fixed time)."""
    parts = tuple(y0) if tuple_state else (y0,)
    with torch.enable_grad():
        leaves = tuple(p.detach().requires_grad_() for p in parts)
        g = _event_value(event_fn, t0.detach(), leaves if tuple_state else leaves[0])
        if not g.requires_grad or all(
            d is None for d in torch.autograd.grad(g, leaves, allow_unused=True)
        ):
            raise ValueError(
                "event_fn does not depend on the state y, so it marks a fixed time, not an "
                "event; put that time into t instead"
            )


def _detached(y: Any) -> Any:
    return tuple(x.detach() for x in y) if isinstance(y, (tuple, list)) else y.detach()


def _event_value(event_fn: Any, tau: Tensor, y: Any) -> Tensor:
    out = event_fn(tau, y)
    if not isinstance(out, Tensor) or out.numel() != 1:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"event_fn must return a scalar tensor (one event), got {shape}")
    return out.reshape(())


def _finite_value(event_fn: Any, tau: Tensor, y: Any) -> float:
    """``event_fn(tau, y)`` on the host; a NaN has no sign to search, so it is refused."""
    value = float(_event_value(event_fn, tau, y))
    if math.isnan(value):
        raise ValueError(f"event_fn returned NaN at t = {float(tau):.6g}: its sign is searched")
    return value


def _bracket(
    solve: Any, func: Any, y0: Any, t0: Tensor, span: float, event_fn: Any, sign0: float,
    tuple_state: bool, kwargs: dict[str, Any], adaptive: bool,
) -> tuple[float, float]:  # fmt: skip
    """The first pair of output times between which ``event_fn`` changes sign, on solves over
    windows growing fourfold, each from where the last one ended; an adaptive window solve has
    at least ``SAMPLES_PER_STEP`` output times per accepted step (a window whose solve takes more
    steps than its outputs resolve is solved again with more: interpolated outputs leave the
    steps as they were)."""
    start, length, y = float(t0.detach()), span, _detached(y0)

    def window(outputs: int) -> tuple[Tensor, Any, int]:
        """The window's output times, the states there and the solve's accepted steps."""
        times = start + torch.linspace(0.0, length, outputs + 1, dtype=torch.float64)
        times_t = times.to(dtype=t0.dtype, device=t0.device)
        ys, stats = solve(func, y, times_t, **kwargs, stats=True)
        return times_t, ys, int(stats.n_accepted)

    for _ in range(MAX_WINDOWS):
        times_t, ys, steps = window(WINDOW_OUTPUTS)
        if adaptive and steps * SAMPLES_PER_STEP > WINDOW_OUTPUTS:
            times_t, ys, _ = window(steps * SAMPLES_PER_STEP)
        for i in range(1, times_t.shape[0]):
            y = tuple(c[i] for c in ys) if tuple_state else ys[i]
            if sign0 * _finite_value(event_fn, times_t[i], y) <= 0:
                return float(times_t[i - 1]), float(times_t[i])
        start, length = float(times_t[-1]), length * 4
    raise RuntimeError(
        f"event_fn did not cross zero between t = {float(t0):g} and t = {start:g} (its sign at "
        f"t0 was {'+' if sign0 > 0 else '-'}): no event to stop at; check event_fn, or solve to "
        "a fixed end time"
    )


def _illinois(f: Callable[[float], float], lo: float, hi: float) -> float:
    """The root of ``f`` in ``[lo, hi]`` (``f(lo) > 0 >= f(hi)``), to a few ulps."""
    f_lo, f_hi = f(lo), f(hi)
    if f_hi == 0:
        return hi
    side = 0
    for _ in range(MAX_REFINEMENTS):
        mid = hi - f_hi * (hi - lo) / (f_hi - f_lo) if f_hi != f_lo else 0.5 * (lo + hi)
        if not (min(lo, hi) < mid < max(lo, hi)):
            mid = 0.5 * (lo + hi)
        f_mid = f(mid)
        if f_mid == 0:
            return mid
        if f_mid > 0:
            lo, f_lo = mid, f_mid
            f_hi = f_hi / 2 if side == -1 else f_hi
            side = -1
        else:
            hi, f_hi = mid, f_mid
            f_lo = f_lo / 2 if side == 1 else f_lo
            side = 1
        if abs(hi - lo) <= 4 * math.ulp(max(abs(lo), abs(hi))):
            break
    return hi  # the side past the event: g has crossed there


def _rerouted(
    func: Any, event_fn: Any, tau: Tensor, y_star: Any, y0: Any, tuple_state: bool
) -> tuple[Tensor, Any]:
    """The event time and state with the implicit function theorem's gradient."""
    parts = tuple(y_star) if tuple_state else (y_star,)
    with torch.enable_grad():
        t_leaf = tau.detach().requires_grad_()
        y_leaf = tuple(p.detach().requires_grad_() for p in parts)
        g = _event_value(event_fn, t_leaf, y_leaf if tuple_state else y_leaf[0])
        f = func(t_leaf, y_leaf if tuple_state else y_leaf[0])
        f = tuple(f) if tuple_state else (f,)
        dg = torch.autograd.grad(g, (t_leaf, *y_leaf), allow_unused=True)
    g_dot = (0.0 if dg[0] is None else dg[0]) + sum(
        (d * v.detach()).sum() for d, v in zip(dg[1:], f) if d is not None
    )
    if not isinstance(g_dot, Tensor) or not bool(g_dot != 0):
        raise ValueError(
            "event_fn: its value does not change along the solution at the event "
            "(d event_fn / dt = 0 there), so the event time has no gradient; an event function "
            "must depend on the state or the time"
        )
    g_live = _event_value(event_fn, tau, y_star)
    event_t = tau - (g_live - g_live.detach()) / g_dot.detach()
    moved = tuple(p + v.detach() * (event_t - tau) for p, v in zip(parts, f))
    first = tuple(y0) if tuple_state else (y0,)
    solution = tuple(torch.stack([a, b]) for a, b in zip(first, moved))
    return event_t, solution if tuple_state else solution[0]
