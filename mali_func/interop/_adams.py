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
second-order).

A multistep method has no one-step inverse, so MALI cannot rebuild its trajectory: the solve is
plain torch code differentiated by autograd (the exact gradient of the discrete solve, memory
linear in the steps, as torchdiffeq's ``odeint``; its ``odeint_adjoint`` solves the adjoint ODE
with the same method instead). It runs under :mod:`torch.func` transforms (the corrector then
takes all ``max_iters`` iterations); events are refused.
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

from ..backends._mode import is_concrete, tracing, under_transform

METHODS = {"explicit_adams": False, "implicit_adams": True, "fixed_adams": True}
"""torchdiffeq's Adams method names, and whether each is implicit."""
OPTIONS = ("step_size", "grid_constructor", "perturb", "max_order", "max_iters")
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


class _Stepper:
    """The field at (possibly perturbed) times, the 3/8-rule start-up step, the corrector."""

    def __init__(
        self,
        func: Callable[..., Any],
        tuple_state: bool,
        args: tuple[Tensor, ...],
        perturb: bool,
        tols: tuple[float, float],
    ) -> None:
        self.func, self.tuple_state, self.args = func, tuple_state, args
        self.perturb, self.tols, self.warned = perturb, tols, False
        self.exact_iters = tracing() or under_transform()

    def f(self, t: Tensor, y: State, toward: Tensor | None = None) -> State:
        if self.perturb and toward is not None:
            t = t + (torch.nextafter(t.detach(), toward.detach()) - t.detach())
        out = self.func(t, y if self.tuple_state else y[0], *self.args)
        return tuple(out) if self.tuple_state else (out,)

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


def _walk(
    stepper: _Stepper, grid: Tensor, y0: State, implicit: bool, max_order: int
) -> tuple[list[State], list[State]]:
    """The states at the grid's points and the field there (one call per step, plus the last)."""
    ys, fs, history = [y0], [], deque(maxlen=max(max_order - 1, 1))
    for n in range(grid.numel() - 1):
        t0, t1 = grid[n], grid[n + 1]
        h, y = t1 - t0, ys[-1]
        f0 = stepper.f(t0, y, toward=t1)
        fs.append(f0)
        history.appendleft(f0)
        order = min(len(history), max_order - 1)
        if order < 3:
            ys.append(stepper.rk38(t0, h, y, f0))
            continue
        past = list(history)[:order]
        zero = tuple(torch.zeros_like(x) for x in y)
        dy = _axpy(zero, h, list(zip(coefficients(order, False), past)))
        if implicit:
            dy, converged = stepper.correct(t1, t0, h, y, dy, deque(past))
            if not converged:  # as torchdiffeq: one order less from the next step on
                history.pop()
        ys.append(tuple(a + b for a, b in zip(y, dy)))
    fs.append(stepper.f(grid[-1], ys[-1], toward=grid[-2] if grid.numel() > 1 else None))
    return ys, fs


def _hermite(grid: Tensor, ys: list[State], fs: list[State], at: Tensor) -> State:
    """The cubic Hermite interpolant of the grid values at time ``at`` (exact at grid points)."""
    forward = bool(grid[-1] >= grid[0])
    key = grid.detach() if forward else -grid.detach()
    where = key.new_tensor(float(at.detach()) if forward else -float(at.detach()))
    k = int(torch.searchsorted(key, where, right=True)) - 1
    k = min(max(k, 0), grid.numel() - 2)
    if bool(grid[k] == at):
        return ys[k]
    if bool(grid[k + 1] == at):
        return ys[k + 1]
    h = grid[k + 1] - grid[k]
    s = (at - grid[k]) / h
    h00, h10 = (1 + 2 * s) * (1 - s) ** 2, s * (1 - s) ** 2
    h01, h11 = s**2 * (3 - 2 * s), s**2 * (s - 1)
    return tuple(
        h00 * a + h10 * h * fa + h01 * b + h11 * h * fb
        for a, fa, b, fb in zip(ys[k], fs[k], ys[k + 1], fs[k + 1])
    )


def _grid(t: Tensor, options: Mapping[str, Any], func: Any, y0: Any) -> Tensor:
    """The uniform grid of ``step_size`` from ``t[0]`` to ``t[-1]`` (the last step shorter),
    ``grid_constructor(func, y0, t)``, or ``t`` itself."""
    if "step_size" in options and "grid_constructor" in options:
        raise ValueError("give options['step_size'] or options['grid_constructor'], not both")
    if "step_size" in options:
        size = float(options["step_size"])
        if not size > 0:
            raise ValueError(f"options['step_size'] must be positive, got {size}")
        span = float(t[-1].detach() - t[0].detach())
        n = max(int(-(-abs(span) // size)), 1)
        sign = 1.0 if span >= 0 else -1.0
        inner = t[0] + sign * size * torch.arange(n, dtype=t.dtype, device=t.device)
        return torch.cat([inner, t[-1:]])
    if "grid_constructor" in options:
        made = options["grid_constructor"](func, y0, t)
        grid = torch.as_tensor(made, dtype=t.dtype, device=t.device)
        if grid.ndim != 1 or grid.numel() < 2 or not bool(grid[0] == t[0] and grid[-1] == t[-1]):
            raise ValueError(
                "options['grid_constructor'] must return a 1-D tensor of times from t[0] to t[-1]"
            )
        return grid
    return t


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
    if "event_fn" in rest:
        raise ValueError(
            f"event_fn with method={method!r} is not supported; use method='rk4' "
            "with the same step_size"
        )
    if rest:
        raise ValueError(
            f"method={method!r} takes torchdiffeq's arguments only; {sorted(rest)} "
            "apply to the library's own methods"
        )
    settings = dict(options or {})
    unknown = [k for k in settings if k not in OPTIONS]
    if unknown:
        raise ValueError(f"unknown options {unknown} for method={method!r}; valid: {list(OPTIONS)}")
    max_order = settings.get("max_order", MAX_ORDER)
    if not isinstance(max_order, int) or not 1 <= max_order <= MAX_ORDER:
        raise ValueError(
            f"options['max_order'] must be an int in [1, {MAX_ORDER}], got {max_order!r}"
        )
    tuple_state = isinstance(y0, tuple)
    state = tuple(y0) if tuple_state else (y0,)
    t = torch.as_tensor(t).to(state[0].dtype)
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"t must be a non-empty 1-D tensor of times, got shape {tuple(t.shape)}")
    if t.numel() == 1:
        ys = tuple(y.unsqueeze(0) for y in state)
        return ys if tuple_state else ys[0]
    if not is_concrete(t):
        raise ValueError(
            f"method={method!r} builds its grid from the values of t: give t as a "
            "plain tensor (not batched by vmap, not traced)"
        )
    stepper = _Stepper(
        func, tuple_state, tuple(args), bool(settings.get("perturb", False)), (rtol, atol)
    )
    stepper.iterations = int(settings.get("max_iters", MAX_ITERS))
    grid = _grid(t, settings, func, y0)
    ys, fs = _walk(stepper, grid, state, METHODS[method], max_order)
    rows = ys if grid is t else [_hermite(grid, ys, fs, at) for at in t]
    out = tuple(torch.stack([r[i] for r in rows]) for i in range(len(state)))
    return out if tuple_state else out[0]
