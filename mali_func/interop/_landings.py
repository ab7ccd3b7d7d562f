"""Times a solve steps to without returning them: torchdiffeq's ``jump_t``, ``step_t`` and
``grid_constructor``.

Adaptive steps here land on every output time (:mod:`mali_func.stepping._control`), and a fixed
grid takes equal steps between output times. So torchdiffeq's extra times become output times of
a wider solve whose rows for the requested times are returned: ``jump_t`` and ``step_t`` (steps
end exactly there, so no step straddles a discontinuity of the field) for adaptive solves, and the
points of ``grid_constructor(func, y0, t)`` for a fixed grid of one step between consecutive
points. A jump time ``t_j`` becomes the pair ``t_j - ulp``, ``t_j + ulp``: the step that ends
before the jump evaluates the field on its left only, the one after it on its right only (as
torchdiffeq's perturbed evaluations do), and the two-ulp step between them costs one step's
evaluations and an error of two ulps times the jump. The extra times are constants: the gradient
reaches ``t`` through the requested times only. They need the values of ``t``: eager code only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..backends._mode import is_concrete
from ..stepping._steps import Adaptive, Fixed
from ._shorthands import replaced

KEYS = ("jump_t", "step_t", "grid_constructor")
"""The ``options`` keys handled here."""


def widened(
    func: Any, y0: Any, t: Tensor, options: Mapping[str, Any] | None
) -> tuple[Tensor, Tensor, dict[str, Any]] | None:
    """``(wider times, rows of t in them, options without these keys)``; ``None`` without any."""
    if not isinstance(options, Mapping) or not any(k in options for k in KEYS):
        return None
    if "grid_constructor" in options and ("jump_t" in options or "step_t" in options):
        raise ValueError(
            "options['grid_constructor'] makes a fixed grid; jump_t and step_t are options of "
            "adaptive steps: give one or the other"
        )
    if not is_concrete(t):
        given = [k for k in KEYS if k in options]
        raise ValueError(
            f"options {given} need the values of t, which are not available under "
            "torch.compile, export or a torch.func transform: give them in eager code, or put "
            "the times into t"
        )
    extra = []
    if "jump_t" in options:  # both sides of each jump, so no stage is evaluated on it
        extra.append(_sides(_times(options["jump_t"], "jump_t", t), t))
    if "step_t" in options:
        extra.append(_times(options["step_t"], "step_t", t))
    if "grid_constructor" in options:
        extra.append(_grid(options["grid_constructor"], func, y0, t))
    rest = {k: v for k, v in options.items() if k not in KEYS}
    times, rows = _merge(t, torch.cat(extra))
    return times, rows, rest


def _times(value: Any, key: str, t: Tensor) -> Tensor:
    try:
        times = torch.as_tensor(value, dtype=t.dtype, device=t.device).detach().reshape(-1)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"options[{key!r}] must be a 1-D tensor or sequence of times") from err
    if not bool(torch.isfinite(times).all()):
        raise ValueError(f"options[{key!r}] must be finite, got {times.tolist()}")
    return times


def _sides(jumps: Tensor, t: Tensor) -> Tensor:
    """The neighbours of each jump time one ulp before and after it in the direction of ``t``
    (the later one left out where the jump is itself a time of ``t``, whose output it is)."""
    before = torch.nextafter(jumps, t[0].detach().expand_as(jumps))
    after = torch.nextafter(jumps, t[-1].detach().expand_as(jumps))
    return torch.cat([before, after[~torch.isin(jumps, t.detach())]])


def _grid(constructor: Any, func: Any, y0: Any, t: Tensor) -> Tensor:
    """torchdiffeq's ``grid_constructor(func, y0, t)``: a grid from ``t[0]`` to ``t[-1]``."""
    if not callable(constructor):
        raise TypeError("options['grid_constructor'] must be callable as (func, y0, t) -> grid")
    grid = _times(constructor(func, y0, t), "grid_constructor", t)
    sign = 1.0 if bool(t[-1] > t[0]) else -1.0
    steps = (grid[1:] - grid[:-1]) * sign
    if grid.numel() < 2 or not bool((steps > 0).all()):
        raise ValueError(
            "options['grid_constructor'] must return at least 2 times, strictly monotonic in the "
            "direction of t"
        )
    if bool(grid[0] != t[0]) or bool(grid[-1] != t[-1]):
        raise ValueError(
            f"options['grid_constructor'] must return a grid from t[0] = {float(t[0]):g} to "
            f"t[-1] = {float(t[-1]):g}, got [{float(grid[0]):g}, {float(grid[-1]):g}]"
        )
    return grid


def _merge(t: Tensor, extra: Tensor) -> tuple[Tensor, Tensor]:
    """``t`` and the ``extra`` times strictly inside its span and not already in it, in the
    direction of ``t`` (the rows of ``t`` differentiable), and the rows where ``t`` went."""
    sign = 1.0 if bool(t[-1] > t[0]) else -1.0
    inside = extra[(extra * sign > t[0] * sign) & (extra * sign < t[-1] * sign)]
    inside = inside[~torch.isin(inside, t.detach())].unique()
    key = torch.cat([t.detach(), inside]) * sign
    order = torch.argsort(key)
    times = torch.cat([t, inside])[order]
    rows = torch.argsort(order)[: t.shape[0]]
    return times, rows


def on_grid_steps(steps: Any, on_grid: bool, fixed_method: bool = False) -> Any:
    """The steps of a wider solve: one per interval of ``grid_constructor``'s grid; adaptive
    steps landing on every time (``jump_t`` and ``step_t`` are landings, not outputs; a fixed
    ``method`` without steps steps along the times already)."""
    if not on_grid:
        if isinstance(steps, Adaptive) or (steps is None and not fixed_method):
            return replaced(steps or Adaptive(), interpolate=False)
        return steps
    if steps is not None and not (isinstance(steps, Fixed) and steps.n in (None, 1)):
        raise ValueError(
            "options['grid_constructor'] sets the steps (one between consecutive grid points); "
            "drop n_steps/step_size/steps="
        )
    return Fixed(n=1, unroll=steps.unroll if isinstance(steps, Fixed) else 1)


def rows_of(out: Any, rows: Tensor, tuple_state: bool, stats: bool) -> Any:
    """The rows of the requested times from a wider solve's result."""
    ys, solve_stats = out if stats else (out, None)
    picked = tuple(y[rows] for y in ys) if tuple_state else ys[rows]
    return (picked, solve_stats) if stats else picked
