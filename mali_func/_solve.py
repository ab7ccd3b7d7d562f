"""The solve, written once: the forward pass, the reverse (MALI) pass, and their autograd.Function.

Given a reversible scheme ``Phi`` (:class:`mali_func.schemes.ReversibleScheme`) and a time grid
(:mod:`mali_func._grid`), :func:`forward` applies ``Phi`` at every step and records the solution at
every output time; it stores nothing per step. :func:`reverse` starts from the final state, rebuilds
each previous state with the scheme's inverse and pulls the cotangent back through the step at the
rebuilt point (MALI: Zhuang, Dvornek, Tatikonda & Duncan, "MALI: A memory efficient and reverse
accurate integrator for Neural ODEs", ICLR 2021). Output cotangents enter at their times, step-time
cotangents are chained to ``t`` by the grid. The result is the exact gradient of the discrete
forward computation up to the round-off of the reconstruction, which is measured against the kept
initial state (:mod:`mali_func._drift`). Adaptive solves run the controller
(:mod:`mali_func._control`) forward, and :func:`reverse` over its recorded steps.

Both passes are written against the loop primitives of :mod:`mali_func._loops`, so the same code
runs eagerly, inside ``torch.compile`` (``while_loop``) and under export (``scan``).

:class:`Solve` is written for :mod:`torch.func`: ``forward`` takes no ctx, ``setup_context`` saves
only inputs and outputs, ``generate_vmap_rule`` lets ``vmap`` batch it, and the backward
differentiates with :func:`torch.func.vjp` under transforms, so ``vmap(grad(...))`` and
``jacrev`` see through the solve.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from ._control import Controller, SolveStats, Tolerances, control
from ._drift import reconstruction_error, warn_if_drifted
from ._grid import Grid, RecordedGrid, Records, UniformGrid
from ._loops import PYTHON, Loops, PythonLoops, ScanLoops, take
from ._mode import tracing, under_transform
from .schemes import Field, Params, ReversibleScheme, State

N_RECORDS = len(Records._fields)
N_STATS = len(SolveStats._fields)


def _outer(loops: Loops, grid: Grid) -> Loops:
    """The segments are walked in Python when there is one, or their lengths differ."""
    return PYTHON if grid.static_segments else loops


def forward(
    loops: Loops,
    scheme: ReversibleScheme,
    field: Field,
    grid: Grid,
    state: State,
    params: Params,
    n_out: int,
) -> tuple[State, State]:
    """Run every step of ``grid``; return the solution at every ``t_i`` and the final state."""
    y0, outer = state[:n_out], _outer(loops, grid)

    def segment(s: Any, carry: tuple[State, Any]) -> tuple[State, Any]:
        seg = grid.segment(s)

        def body(k: Any, inner: Any) -> Any:
            x, outs = inner if grid.step_outputs else (inner, None)
            info = grid.at(seg, k)
            new = scheme.step(field, info.t, info.h, x, params)
            if info.active is not None:
                new = tuple(torch.where(info.active, a, b) for a, b in zip(new, x))
            if not grid.step_outputs:
                return new
            return new, grid.record_step(outs, info, new[:n_out])

        x, outs = carry
        inner = loops.fori(grid.length(s), body, carry if grid.step_outputs else x)
        x, outs = inner if grid.step_outputs else (inner, outs)
        return x, None if outs is None else grid.record_segment(outs, s, x[:n_out])

    if isinstance(outer, ScanLoops) and not grid.step_outputs:
        # Export: the outputs at t_1..t_M are the outer scan's own outputs (no buffer carried).
        def collected(s: Any, x: State) -> tuple[State, State]:
            x = segment(s, (x, None))[0]
            return x, x[:n_out]

        final, ys = outer.fori_collect(grid.segments, collected, state)
        return tuple(torch.cat([y.unsqueeze(0), r]) for y, r in zip(y0, ys)), final
    outs0 = grid.new_outputs(y0, python=isinstance(outer, PythonLoops))
    final, outs = outer.fori(grid.segments, segment, (state, outs0))
    return grid.finish(outs, y0, final[:n_out]), final


def reverse(
    loops: Loops,
    scheme: ReversibleScheme,
    field: Field,
    grid: Grid,
    final: State,
    cot: State,
    g_out: State,
    params: Params,
    time_grad: bool,
) -> tuple[State, State, tuple[Tensor | None, ...], Tensor | None]:
    """Walk ``grid`` backwards from ``final`` with cotangent ``cot``.

    ``g_out`` are the cotangents of the recorded outputs (``cot`` already holds the last row's).
    Returns the rebuilt initial state, its cotangent, the cotangents of ``params`` and of ``t``.
    """
    vjp = loops.vjp((grid.t, *final, *cot, *params))
    n_out = len(g_out)

    def segment(s: Any, carry: tuple[Any, ...]) -> tuple[Any, ...]:
        seg = grid.segment(s)

        def body(k: Any, c: tuple[Any, ...]) -> tuple[Any, ...]:
            x, a, acc, acc_t = c
            info = grid.at(seg, k)
            a = grid.inject(a, info, g_out)
            prev, a_prev, a_t, a_h, a_p = scheme.reverse(
                field, info.t, info.h, x, a, params, time_grad=time_grad, vjp=vjp
            )
            if info.active is not None:
                ok = info.active
                prev = tuple(torch.where(ok, p, q) for p, q in zip(prev, x))
                a_prev = tuple(torch.where(ok, p, q) for p, q in zip(a_prev, a))
                a_p = tuple(None if g is None else torch.where(ok, g, 0) for g in a_p)
            acc = tuple(loops.add(s_, d) for s_, d in zip(acc, a_p))
            if acc_t is not None and a_t is not None and a_h is not None:
                acc_t = grid.add_time_grad(acc_t, info, a_t, a_h)
            return prev, a_prev, acc, acc_t

        x, a, acc, acc_t = loops.fori(grid.length(s), body, carry, reverse=True)
        # The output at the segment's start time: t_s (uniform), t_0 (recorded).
        a = (*(c + take(g, s) for c, g in zip(a, g_out)), *a[n_out:])
        return x, a, acc, acc_t

    acc_t0 = torch.zeros_like(grid.t) if time_grad else None
    carry = (final, cot, loops.accumulators(params), acc_t0)
    state, cot, acc, acc_t = _outer(loops, grid).fori(grid.segments, segment, carry, reverse=True)
    return state, cot, acc, acc_t


@dataclass(frozen=True, eq=False)
class Spec:
    """Everything about a solve that is not a tensor."""

    loops: Loops
    scheme: ReversibleScheme
    field: Field
    n_state: int
    n_out: int
    counts: tuple[int, ...] | None  # fixed grid walked with Python ints; None: ``n`` or adaptive
    tol: Tolerances | None  # adaptive solves only
    controller: Controller | None
    reconstruction_tol: float | None
    replay: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext


class Solve(torch.autograd.Function):
    """``apply(spec, t, n, probe, *state0, *params)``.

    Returns ``(*trajectories, *aux_final)`` on a fixed grid (``counts``, or ``n`` steps per
    interval as a 0-dim tensor) and ``(*trajectories, *aux_final, *records, count, *stats)``
    adaptively (records and stats are not differentiable). ``probe`` is a
    :class:`~mali_func.DriftMonitor` leaf (or ``None``) whose gradient is the relative
    reconstruction error of the backward pass.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(  # type: ignore[override]
        spec: Spec, t: Tensor, n: Tensor | None, probe: Tensor | None, *tensors: Tensor
    ) -> tuple[Tensor, ...]:
        state0, params = tensors[: spec.n_state], tensors[spec.n_state :]
        if spec.tol is None:
            grid = UniformGrid(t, spec.counts if n is None else n)
            trajs, final = forward(
                spec.loops, spec.scheme, spec.field, grid, state0, params, spec.n_out
            )
            return (*trajs, *final[spec.n_out :])
        trajs, final, records, count, stats = control(
            spec.loops, spec.scheme, spec.field, t, state0, params, spec.n_out, spec.tol,
            spec.controller,
        )  # fmt: skip
        count_t = count if isinstance(count, Tensor) else torch.tensor(count, device=t.device)
        return (*trajs, *final[spec.n_out :], *records, count_t, *stats)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        spec, t, n, probe, *tensors = inputs
        ctx.spec, ctx.has_probe, ctx.has_n = spec, probe is not None, n is not None
        ctx.n_tensors = len(tensors)
        if spec.tol is not None:
            ctx.mark_non_differentiable(*output[spec.n_state :])
            output = output[: len(output) - N_STATS]
        ctx.save_for_backward(t, *((n,) if n is not None else ()), *tensors, *output)
        # Forward mode recomputes the solve from its inputs (and recorded steps): no trajectory.
        records = () if spec.tol is None else output[spec.n_state :]
        ctx.save_for_forward(t, *((n,) if n is not None else ()), *tensors, *records)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        spec: Spec = ctx.spec
        t, *saved = ctx.saved_tensors
        n = saved.pop(0) if ctx.has_n else None
        ns, n_out = spec.n_state, spec.n_out
        n_p = len(saved) - ns - ns - (0 if spec.tol is None else N_RECORDS + 1)
        state0, params = tuple(saved[:ns]), tuple(saved[ns : ns + n_p])
        trajs, aux = saved[ns + n_p : ns + n_p + n_out], saved[ns + n_p + n_out : ns + n_p + ns]
        grid: Grid
        if spec.tol is None:
            grid = UniformGrid(t, spec.counts if n is None else n)
        else:
            records = Records(*saved[ns + n_p + ns : -1])
            python = spec.loops is PYTHON
            grid = RecordedGrid(t, records, records.start.shape[0] if python else saved[-1])
        g_out = tuple(g.contiguous() for g in grads[:n_out])
        final = (*(y[-1] for y in trajs), *aux)
        cot = (*(g[-1] for g in g_out), *grads[n_out:ns])
        time_grad = bool(ctx.needs_input_grad[1])
        with spec.replay():
            state, cot, acc, grad_t = reverse(
                spec.loops, spec.scheme, spec.field, grid, final, cot, g_out, params, time_grad
            )
        error = reconstruction_error(state, state0)
        warn_if_drifted(error, spec.reconstruction_tol)
        return (None, grad_t, None, error if ctx.has_probe else None, *cot, *acc)


class ForwardModeSolve(Solve):
    """:class:`Solve` with a forward-mode rule, for eager code and :mod:`torch.func` transforms
    (dynamo refuses an ``autograd.Function`` with a custom ``jvp`` in torch 2.13, so compiled
    solves use :class:`Solve`)."""

    @staticmethod
    def jvp(ctx: Any, *tangents: Any) -> tuple[Tensor | None, ...]:
        """Forward mode: the solve re-run under :func:`torch.func.jvp`, tangents carried along
        every step (memory constant in the steps, like the reverse pass)."""
        spec: Spec = ctx.spec
        t, *saved = ctx.saved_tensors  # what save_for_forward kept
        n = saved.pop(0) if ctx.has_n else None
        tensors, records = saved[: ctx.n_tensors], saved[ctx.n_tensors :]
        _, t_dot, _, _, *dots = tangents
        count = None
        if spec.tol is not None:
            count = records[-1] if spec.loops is not PYTHON else records[0].shape[0]

        def run(t_: Tensor, *tensors_: Tensor) -> tuple[Tensor, ...]:
            grid_: Grid
            if count is None:
                grid_ = UniformGrid(t_, spec.counts if n is None else n)
            else:
                grid_ = RecordedGrid(t_, Records(*records[:-1]), count)
            state0, params = tensors_[: spec.n_state], tensors_[spec.n_state :]
            trajs, final = forward(
                spec.loops, spec.scheme, spec.field, grid_, state0, params, spec.n_out
            )
            return (*trajs, *final[spec.n_out :])

        primals = (t, *tensors)
        dots_ = tuple(
            torch.zeros_like(x) if d is None else d for x, d in zip(primals, (t_dot, *dots))
        )
        if under_transform():
            _, out_dots = torch.func.jvp(run, primals, dots_)
        else:  # torch.autograd.forward_ad, whose dual level does not nest.
            # Re-run on fresh duals of the given tangents, with forward AD on (it is off while a
            # jvp rule runs); some saved inputs may still carry their tangents: strip them.
            with fwAD._set_fwd_grad_enabled(True):
                plain = (fwAD.unpack_dual(x).primal for x in primals)
                out = run(*(fwAD.make_dual(x, d) for x, d in zip(plain, dots_)))
                out_dots = tuple(
                    torch.zeros_like(y) if d is None else d
                    for y, d in ((y, fwAD.unpack_dual(y).tangent) for y in out)
                )
        if spec.tol is None:
            return tuple(out_dots)
        return (*out_dots, *(None for _ in range(N_RECORDS + 1 + N_STATS)))


def solve(spec: Spec, t: Tensor, n: Tensor | None, probe: Tensor | None, state0: State,
          params: Params) -> tuple[State, SolveStats | None]:  # fmt: skip
    """Differentiate with MALI; returns the trajectories and (adaptive) the stats.

    The backward starts from the saved trajectories, so the caller gets copies: an in-place layer
    after the solve (``ReLU(inplace=True)``) cannot change what the backward reads.
    """
    function = Solve if tracing() else ForwardModeSolve
    out = function.apply(spec, t, n, probe, *state0, *params)
    trajs = tuple(x.clone() for x in out[: spec.n_out])
    if spec.tol is None:
        return trajs, None
    return trajs, SolveStats(*out[len(out) - N_STATS :])
