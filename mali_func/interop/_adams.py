r"""torchdiffeq's fixed-grid Adams methods: ``"explicit_adams"``, ``"implicit_adams"``
(``"fixed_adams"`` is its name for the implicit one).

A ``k``-step Adams method integrates the polynomial through the last ``k`` field values over one
step of a uniform grid :math:`t_n = t_0 + n h`:

.. math::

    y_{n+1} = y_n + h \sum_{j=0}^{k-1} \beta_j f_{n-j} \quad \text{(Adams-Bashforth)}, \qquad
    \beta_j = \int_0^1 \ell_j(u)\, du,

with :math:`\ell_j` the Lagrange basis on the nodes :math:`0, -1, \dots, -(k-1)` (in steps);
Adams-Moulton's corrector takes the nodes :math:`1, 0, \dots, -(k-1)`, that is
:math:`f(t_{n+1}, y_{n+1})` too, and is solved by fixed-point iteration from the
Adams-Bashforth predictor (at most ``max_iters`` times, until the change is within ``rtol``/
``atol``). The coefficients are computed here in exact rational arithmetic. As torchdiffeq's
methods, the order grows with the history: the first steps are Kutta's 3/8-rule fourth-order
Runge-Kutta steps until three field values are known, then Adams of as many steps as known values,
up to ``max_order - 1`` (default 12). Outputs between grid points are the cubic Hermite
interpolant of the two neighbouring grid values and their field values (torchdiffeq's
``interp="cubic"``; fourth-order, like the steps, where its default linear interpolation is
second-order; ``options["interp"] = "linear"`` asks for that), and an ``event_fn`` is found on
that interpolant (:mod:`._adams_dense`). ``callback_step`` runs before every step and
``callback_step_adjoint`` once per step in the backward pass.

A multistep method has no one-step inverse, so MALI cannot rebuild its trajectory: the solve is
plain torch code differentiated by autograd (the exact gradient of the discrete solve, memory
linear in the steps, as torchdiffeq's ``odeint``; its ``odeint_adjoint`` solves the adjoint ODE
with the same method instead). It runs under :mod:`torch.func` transforms (the corrector then
takes all ``max_iters`` iterations and keeps its order); events and callbacks are eager only.
"""

from __future__ import annotations

import functools
import warnings
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import torch
from torch import Tensor

from .._events import _event_value
from ..backends._mode import is_concrete, tracing, under_transform
from ..field._callbacks import callbacks_of
from ._adams_dense import interpolate, uniform_grid, until_event
from ._inputs import checked_field, settings_of, stacked_y0, torchdiffeq_inputs

METHODS = {"explicit_adams": False, "implicit_adams": True, "fixed_adams": True}
"""torchdiffeq's Adams method names, and whether each is implicit."""
OPTIONS = ("step_size", "grid_constructor", "perturb", "max_order", "max_iters", "interp")
MAX_ORDER, MAX_ITERS = 12, 4

State = tuple[Tensor, ...]


@functools.cache
def coefficients(steps: int, implicit: bool) -> tuple[float, ...]:
    """``beta_j`` of the ``steps``-step Adams-Bashforth (or, ``implicit``, Adams-Moulton: node
    ``1`` first) formula, from the exact integrals of the Lagrange basis over ``[0, 1]``."""
    nodes = [Fraction(1 - j if implicit else -j) for j in range(steps)]
    betas = []
    for j, node in enumerate(nodes):
        poly, denominator = [Fraction(1)], Fraction(1)  # coefficients of u^0, u^1, ...
        for m, other in enumerate(nodes):
            if m != j:
                shifted = [Fraction(0), *poly]
                poly = [
                    s - other * (poly[i] if i < len(poly) else 0) for i, s in enumerate(shifted)
                ]
                denominator *= node - other
        betas.append(sum(c / (i + 1) for i, c in enumerate(poly)) / denominator)
    return tuple(float(b) for b in betas)


def _axpy(y: State, h: Tensor, terms: Sequence[tuple[float, State]]) -> State:
    """``y + h * sum(w * f for w, f in terms)``, per component."""
    out = []
    for i, yi in enumerate(y):
        total = sum(w * f[i] for w, f in terms)
        out.append(yi + h * total)
    return tuple(out)


class _Marked(torch.autograd.Function):
    """The identity, calling ``hook()`` in the backward pass (a step's adjoint callbacks)."""

    @staticmethod
    def forward(ctx: Any, hook: Callable[[], None], *xs: Tensor) -> Any:
        ctx.hook = hook
        return tuple(x.view_as(x) for x in xs)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> Any:
        ctx.hook()
        return (None, *grads)


class _Stepper:
    """The field at (possibly perturbed) times, the 3/8-rule start-up step, the corrector."""

    def __init__(
        self,
        func: Callable[..., Any],
        state: State,
        tuple_state: bool,
        args: tuple[Tensor, ...],
        perturb: bool,
        tols: tuple[float, float],
    ) -> None:
        self.field, self.tuple_state = checked_field(func, state, tuple_state, args), tuple_state
        self.perturb, self.tols, self.warned = perturb, tols, False
        self.exact_iters = tracing() or under_transform()
        self.callbacks = callbacks_of(func, tuple_state, adaptive=False)

    def marked(self, y1: State, t0: Tensor, y0: State, h: Tensor) -> State:
        """``y1``, calling ``callback_step_adjoint(t0, y0, h)`` when its gradient arrives."""
        if self.callbacks is None or not any(x.requires_grad for x in y1):
            return y1
        start = tuple(x.detach() for x in y0)
        return _Marked.apply(lambda: self.callbacks.backward_step(t0.detach(), start, h), *y1)

    def f(self, t: Tensor, y: State, toward: Tensor | None = None) -> State:
        if self.perturb and toward is not None:
            t = t + (torch.nextafter(t.detach(), toward.detach()) - t.detach())
        return self.field(t, y)

    def rk38(self, t: Tensor, h: Tensor, y: State, f0: State) -> State:
        t1 = t + h
        k2 = self.f(t + h / 3, _axpy(y, h, [(1 / 3, f0)]))
        k3 = self.f(t + 2 * h / 3, _axpy(y, h, [(-1 / 3, f0), (1.0, k2)]))
        k4 = self.f(t1, _axpy(y, h, [(1.0, f0), (-1.0, k2), (1.0, k3)]), toward=t)
        return _axpy(y, h, [(1 / 8, f0), (3 / 8, k2), (3 / 8, k3), (1 / 8, k4)])

    def correct(
        self, t1: Tensor, t0: Tensor, h: Tensor, y: State, dy: State, history: deque[State]
    ) -> tuple[State, bool]:
        """Adams-Moulton's increment from the predictor's ``dy``, and whether it converged."""
        betas = coefficients(len(history) + 1, True)
        known = _axpy(tuple(torch.zeros_like(x) for x in y), h, list(zip(betas[1:], history)))
        for _ in range(self.iterations):
            f1 = self.f(t1, tuple(a + b for a, b in zip(y, dy)), toward=t0)
            nxt = tuple(k + h * betas[0] * f for k, f in zip(known, f1))
            done = self._converged(dy, nxt)
            dy = nxt
            if done:
                return dy, True
        if not self.exact_iters and not self.warned:
            self.warned = True
            warnings.warn(
                "implicit_adams: the corrector's fixed-point iteration did not converge within "
                "max_iters; the solution may be inaccurate (smaller step_size)",
                RuntimeWarning,
                stacklevel=4,
            )
        return dy, self.exact_iters

    iterations = MAX_ITERS

    def _converged(self, a: State, b: State) -> bool:
        if self.exact_iters:
            return False
        rtol, atol = self.tols
        ratio = max(
            float(((x - y).abs() / (atol + rtol * torch.maximum(x.abs(), y.abs()))).max().detach())
            for x, y in zip(a, b)
        )
        return ratio < 1.0


def advance(
    stepper: _Stepper, t0: Tensor, t1: Tensor, y: State, history: deque[State], implicit: bool,
    max_order: int,
) -> tuple[State, State]:  # fmt: skip
    """One step from ``(t0, y)`` to ``t1`` and the field at ``(t0, y)``; ``history`` (newest
    first) gains that field value and, where the corrector does not converge, loses its oldest."""
    h = t1 - t0
    if stepper.callbacks is not None:
        stepper.callbacks.trial(t0, y, h)
    f0 = stepper.f(t0, y, toward=t1)
    history.appendleft(f0)
    order = min(len(history), max_order - 1)
    if order < 3:
        return stepper.marked(stepper.rk38(t0, h, y, f0), t0, y, h), f0
    past = list(history)[:order]
    zero = tuple(torch.zeros_like(x) for x in y)
    dy = _axpy(zero, h, list(zip(coefficients(order, False), past)))
    if implicit:
        dy, converged = stepper.correct(t1, t0, h, y, dy, deque(past))
        if not converged:  # as torchdiffeq: one order less from the next step on
            history.pop()
    return stepper.marked(tuple(a + b for a, b in zip(y, dy)), t0, y, h), f0


def _walk(
    stepper: _Stepper, grid: Tensor, y0: State, implicit: bool, max_order: int
) -> tuple[list[State], list[State]]:
    """The states at the grid's points and the field there (one call per step, plus the last)."""
    ys, fs, history = [y0], [], new_history(max_order)
    for n in range(grid.numel() - 1):
        y1, f0 = advance(stepper, grid[n], grid[n + 1], ys[-1], history, implicit, max_order)
        ys.append(y1)
        fs.append(f0)
    fs.append(stepper.f(grid[-1], ys[-1], toward=grid[-2] if grid.numel() > 1 else None))
    return ys, fs


def new_history(max_order: int) -> deque[State]:
    return deque(maxlen=max(max_order - 1, 1))


def adams_odeint(
    func: Callable[..., Any],
    y0: Any,
    t: Any,
    rtol: float,
    atol: float,
    options: Mapping[str, Any] | None,
    *,
    method: str,
    args: Sequence[Tensor] = (),
    **rest: Any,
) -> Any:
    """``odeint_adjoint(..., method="explicit_adams" | "implicit_adams" | "fixed_adams")``: see
    the module docstring."""
    for unused in (
        "adjoint_rtol",
        "adjoint_atol",
        "adjoint_method",
        "adjoint_options",
        "adjoint_params",
    ):
        rest.pop(unused, None)  # autograd differentiates every tensor the solve reads
    event_fn = rest.pop("event_fn", None)
    settings = settings_of(method, options, OPTIONS, rest)
    if settings.get("interp", "cubic") not in ("cubic", "linear"):
        raise ValueError(
            f"options['interp'] must be 'cubic' or 'linear', got {settings['interp']!r}"
        )
    max_order = settings.get("max_order", MAX_ORDER)
    if not isinstance(max_order, int) or not 1 <= max_order <= MAX_ORDER:
        raise ValueError(
            f"options['max_order'] must be an int in [1, {MAX_ORDER}], got {max_order!r}"
        )
    iterations = settings.get("max_iters", MAX_ITERS)
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
        raise ValueError(f"options['max_iters'] must be an int >= 1, got {iterations!r}")
    if not isinstance(settings.get("perturb", False), bool):
        raise TypeError(f"options['perturb'] must be a bool, got {settings['perturb']!r}")
    state, tuple_state, t = torchdiffeq_inputs(func, y0, t, rtol, atol)
    if t.numel() == 1:
        return stacked_y0(state, tuple_state)
    if not is_concrete(t):
        raise ValueError(
            f"method={method!r} builds its grid from the values of t: give t as a "
            "plain tensor (not batched by vmap, not traced)"
        )
    stepper = _Stepper(
        func, state, tuple_state, tuple(args), settings.get("perturb", False), (rtol, atol)
    )
    stepper.iterations = iterations
    cubic = settings.get("interp", "cubic") == "cubic"
    if event_fn is not None:
        return _event(stepper, event_fn, t, state, settings, (METHODS[method], max_order, atol))
    grid = uniform_grid(t, settings, func, y0)
    ys, fs = _walk(stepper, grid, state, METHODS[method], max_order)
    rows = ys if grid is t else [interpolate(grid, ys, fs, at, cubic) for at in t]
    out = tuple(torch.stack([r[i] for r in rows]) for i in range(len(state)))
    return out if tuple_state else out[0]


def _event(
    stepper: _Stepper,
    event_fn: Callable[..., Any],
    t: Tensor,
    y0: State,
    settings: Mapping[str, Any],
    config: tuple[bool, int, float],
) -> tuple[Tensor, Any]:
    """``(event_t, solution)`` of a terminal event on the grid of ``step_size`` from ``t[0]``
    in ``t``'s direction (``solution``: ``y0`` and the state at the event, stacked)."""
    implicit, max_order, atol = config
    if "step_size" not in settings:
        raise ValueError("event_fn with an Adams method needs options['step_size'] (its grid)")
    if tracing() or under_transform():
        raise ValueError("event_fn with an Adams method runs in eager code only")
    history = new_history(max_order)
    h = float(settings["step_size"]) * torch.sign(t[-1] - t[0]).detach()
    wrap = stepper.tuple_state

    def event(at: Tensor, y: State) -> Tensor:
        return _event_value(event_fn, at, y if wrap else y[0])

    def step(t0: Tensor, t1: Tensor, y: State) -> tuple[State, State]:
        return advance(stepper, t0, t1, y, history, implicit, max_order)

    cubic = settings.get("interp", "cubic") == "cubic"
    event_t, y_event = until_event(step, stepper.f, event, t[0], h, y0, atol, cubic)
    out = tuple(torch.stack([a, b]) for a, b in zip(y0, y_event))
    return event_t, out if wrap else out[0]
