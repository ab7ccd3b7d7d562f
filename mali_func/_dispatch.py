"""Choosing how one solve runs: its loop backend and its gradient path.

Given the checked inputs of :func:`mali_func.odeint`, :func:`dispatch` picks

* the loop backend from the execution mode (:mod:`mali_func.backends._mode`,
  :mod:`mali_func.backends._loops`): Python loops eagerly and under :mod:`torch.func` transforms
  (also traced ones, where torch 2.13 has no ``while_loop``:
  :mod:`mali_func.backends._traced_transforms`), ``while_loop`` under ``torch.compile``, ``scan``
  under export;
* the gradient path: forward only (export, or compiled without a gradient), plain autograd
  through the steps (``gradient="backprop"``; adaptive steps are chosen without a graph and then
  replayed with one), or the :class:`mali_func.gradients._solve.Solve` function, whose backward is
  MALI's reverse pass (Zhuang et al., ICLR 2021) or checkpointed recomputation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backends import _mode
from .backends._export_guard import guard
from .backends._loops import loops_for
from .backends._traced_transforms import check_traced_transform, vmap_traced_functions
from .field._field import BoundField
from .gradients._checkpoint import check_traced_plan
from .gradients._drift import Fallback
from .gradients._forward_mode import solve
from .gradients._passes import forward
from .gradients._solve import Spec
from .schemes import ReversibleScheme, State
from .stepping._control import SolveStats, control
from .stepping._controllers import Tolerances
from .stepping._grid import FlatGrid, RecordedGrid, Records, UniformGrid


def dispatch(
    mode: _mode.Mode,
    scheme: ReversibleScheme,
    bound: BoundField,
    t: Tensor,
    start: State,
    n_out: int,
    steps: tuple[int, ...] | None,
    tol: Tolerances | None,
    gradient: str,
    reconstruction_tol: float | None,
    probe: Tensor | None,
    checkpoints: int | None = None,
    unroll: int = 1,
    fallback: Fallback | None = None,
) -> tuple[State, SolveStats | None, State]:
    """Pick the loop backend and the gradient path of one solve; return the trajectories, the
    stats of an adaptive solve and the final extended state (for the solve's checks)."""
    field, params = bound.field, bound.params
    loops = loops_for(mode)
    wants_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (t, *start, *params))
    python = loops_for(_mode.Mode.EAGER)
    n: Tensor | None = None
    if mode is _mode.Mode.COMPILE and _mode.under_transform():
        # torch 2.13: no while_loop inside a traced transform; the steps are unrolled
        # (mali_func.backends._traced_transforms).
        check_traced_transform(adaptive=tol is not None, gradient=gradient)
        loops = python
        if _mode.under_vmap():
            vmap_traced_functions()
    if mode is _mode.Mode.COMPILE and gradient == "checkpoint" and wants_grad:
        most = sum(steps) if steps is not None else tol.max_steps if tol is not None else 0
        check_traced_plan(most, checkpoints, adaptive=steps is None)
    if mode is _mode.Mode.COMPILE and steps is not None and loops is not python:
        if gradient == "checkpoint":
            pass  # static counts: level sizes are shapes (a new n_steps compiles again)
        elif gradient == "backprop" or any(s != steps[0] for s in steps):
            # The plain loop, unrolled: exact, but compile time grows with the steps. (while_loop's
            # own autograd in torch 2.13 is wrong when one carry feeds another, e.g. (z, logp).)
            loops = python
        else:
            # A tensor count: compile time does not grow with it, and a new n_steps compiles once
            # (comparing, not hashing, the counts above keeps n_steps symbolic).
            n = torch.scalar_tensor(steps[0], dtype=torch.int64, device=t.device)
    if mode is _mode.Mode.EXPORT or (mode is _mode.Mode.COMPILE and not wants_grad):
        # Forward only: no gradient machinery (dynamo also fails to bind the Function then).
        if tol is not None:
            trajs, final, _, _, stats = control(loops, scheme, field, t, start, params, n_out, tol)
            if mode is _mode.Mode.EXPORT:  # while_loop's autograd is wrong: no gradient at all
                trajs = tuple(guard(x) for x in trajs)
            return trajs, stats, final
        grid: UniformGrid | FlatGrid = UniformGrid(t, steps if n is None else n)
        if mode is _mode.Mode.EXPORT and len(steps) > 1:
            # One scan over all steps, not one per interval: nested scans trip torch 2.13's scan
            # autograd (a program called with grad on) and AOTInductor's scan lowering.
            grid = FlatGrid(t, tuple(steps))
        trajs, final, _ = forward(loops, scheme, field, grid, start, params, n_out, unroll=unroll)
        return trajs, None, final
    if gradient == "backprop" and loops is python:
        if tol is None:
            assert steps is not None
            trajs, final, _ = forward(
                python, scheme, field, UniformGrid(t, steps), start, params, n_out
            )
            return trajs, None, final
        with torch.no_grad():
            _, _, records, count, stats = control(
                python, scheme, field, t, start, params, n_out, tol
            )
        # Step sizes are constants of the gradient (no_grad does not stop forward-mode AD).
        records = Records(*(r.detach() for r in records))
        grid = RecordedGrid(t, records, count)
        trajs, final, _ = forward(python, scheme, field, grid, start, params, n_out)
        return tuple(torch.where(stats.failed, float("nan"), y) for y in trajs), stats, final
    # MALI, checkpointing; compiled adaptive backprop too (the same accepted steps, README).
    spec = Spec(
        loops=loops,
        scheme=scheme,
        field=field,
        n_state=len(start),
        n_out=n_out,
        counts=steps if n is None else None,
        tol=tol,
        reconstruction_tol=reconstruction_tol,
        replay=bound.replaying,
        checkpoint=gradient == "checkpoint",
        budget=checkpoints,
        unroll=unroll,
        fallback=fallback,
    )
    return solve(spec, t, n, probe, start, params)
