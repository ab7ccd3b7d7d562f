"""Choosing how one solve runs: its loop backend, its grid, and whose gradient path.

Given the checked inputs of :func:`mali_func.odeint`, :func:`dispatch` picks

* the loop backend from the execution mode (:mod:`mali_func.backends._mode`,
  :mod:`mali_func.backends._loops`): Python loops eagerly and under :mod:`torch.func` transforms
  (also traced ones, where torch 2.13 has no ``while_loop``:
  :mod:`mali_func.backends._traced_transforms`), ``while_loop`` under ``torch.compile``, ``scan``
  under export;
* the path: forward only (export, or compiled without a gradient), or the gradient strategy's own
  (:mod:`mali_func.gradients._strategies`): MALI's reverse pass (Zhuang et al., ICLR 2021),
  checkpointed recomputation, or plain autograd through the steps. The strategy also says how a
  compiled fixed grid is laid out (a tensor count, static counts, unrolled steps).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .backends import _mode
from .backends._export_guard import guard
from .backends._loops import Loops, loops_for
from .backends._traced_transforms import check_traced_transform, vmap_traced_functions
from .field._field import BoundField
from .gradients._drift import Fallback
from .gradients._passes import forward
from .gradients._problem import Problem
from .gradients._strategies import Gradient
from .schemes import ReversibleScheme, State
from .stepping._control import control
from .stepping._controllers import Tolerances
from .stepping._dense import interpolate
from .stepping._grid import FlatGrid, UniformGrid
from .stepping._stats import SolveStats


def dispatch(
    mode: _mode.Mode,
    scheme: ReversibleScheme,
    bound: BoundField,
    t: Tensor,
    start: State,
    n_out: int,
    steps: tuple[int, ...] | None,
    tol: Tolerances | None,
    gradient: Gradient,
    unroll: int = 1,
    fallback: Fallback | None = None,
    hooks: Any = None,
) -> tuple[State, SolveStats | None, State]:
    """Pick the loop backend and the path of one solve (``hooks``: the field's step callbacks,
    eager only); return the trajectories, the stats of an
    adaptive solve and the final extended state (for the solve's checks)."""
    field, params = bound.field, bound.params
    loops = python = loops_for(_mode.Mode.EAGER)
    if mode is not _mode.Mode.COMPILE or not _mode.under_transform():
        loops = loops_for(mode)
    elif _mode.under_vmap():  # no while_loop inside a traced transform: steps are unrolled
        vmap_traced_functions()
    wants_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (t, *start, *params))
    n: Tensor | None = None
    if mode is _mode.Mode.COMPILE:
        transform = _mode.under_transform()
        if transform:  # torch 2.13 (mali_func.backends._traced_transforms)
            check_traced_transform(adaptive=tol is not None, gradient=gradient.name)
        if wants_grad:
            most = sum(steps) if steps is not None else tol.max_steps if tol is not None else 0
            gradient.check_compiled(transform=transform, most=most, adaptive=steps is None)
        if steps is not None and loops is not python:
            layout = gradient.compiled_layout(steps)
            if layout == "unrolled":
                loops = python
            elif layout == "count":
                # A tensor count: compile time does not grow with it, and a new n_steps compiles
                # once (comparing, not hashing, the counts keeps n_steps symbolic).
                n = torch.scalar_tensor(steps[0], dtype=torch.int64, device=t.device)
    if mode is _mode.Mode.EXPORT or (mode is _mode.Mode.COMPILE and not wants_grad):
        return _forward_only(mode, loops, scheme, bound, t, start, n_out, steps, n, tol, unroll)
    problem = Problem(
        loops=loops, scheme=scheme, field=field, t=t, start=start, params=params, n_out=n_out,
        counts=steps if n is None else None, n=n, tol=tol, unroll=unroll,
        replay=bound.replaying, probe=gradient.probe(start[0]), fallback=fallback, hooks=hooks,
    )  # fmt: skip
    return gradient.solve(problem)


def _forward_only(
    mode: _mode.Mode,
    loops: Loops,
    scheme: ReversibleScheme,
    bound: BoundField,
    t: Tensor,
    start: State,
    n_out: int,
    steps: tuple[int, ...] | None,
    n: Tensor | None,
    tol: Tolerances | None,
    unroll: int,
) -> tuple[State, SolveStats | None, State]:
    """No gradient machinery: export, or a compiled solve without a gradient (dynamo also fails
    to bind the Function then)."""
    field, params = bound.field, bound.params
    if tol is not None:
        trajs, final, _, _, stats, rows = control(
            loops, scheme, field, t, start, params, n_out, tol
        )
        if rows is not None:
            trajs = interpolate(scheme, field, params, t, trajs, rows)
        if mode is _mode.Mode.EXPORT:  # while_loop's autograd is wrong: no gradient at all
            trajs = tuple(guard(x) for x in trajs)
        return trajs, stats, final
    assert steps is not None
    grid: UniformGrid | FlatGrid = UniformGrid(t, steps if n is None else n)
    if mode is _mode.Mode.EXPORT and len(steps) > 1:
        # One scan over all steps, not one per interval: nested scans trip torch 2.13's scan
        # autograd (a program called with grad on) and AOTInductor's scan lowering.
        grid = FlatGrid(t, tuple(steps))
    trajs, final, _ = forward(loops, scheme, field, grid, start, params, n_out, unroll=unroll)
    return trajs, None, final
