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
from torch import Tensor

from ._checkpoint import Checkpointer, plan, reverse_checkpointed
from ._control import Controller, SolveStats, Tolerances, control
from ._drift import reconstruction_error, warn_if_drifted
from ._flat import take, unaliased
from ._grid import FlatGrid, Grid, RecordedGrid, Records, UniformGrid
from ._loops import PYTHON, Loops, PythonLoops, ScanLoops
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
    keep: Checkpointer | None = None,
    unroll: int = 1,
) -> tuple[State, State, Any]:
    """Run every step of ``grid``; return the solution at every ``t_i``, the final state and,
    with ``keep`` (one-segment grids), level 0 of a checkpointed gradient."""
    y0, outer = state[:n_out], _outer(loops, grid)
    stride = None if keep is None else keep.plan.stride(0)

    def segment(s: Any, carry: tuple[State, Any, Any]) -> tuple[State, Any, Any]:
        seg = grid.segment(s)

        def body(k: Any, inner: tuple[State, Any, Any]) -> tuple[State, Any, Any]:
            x, outs, rows = inner
            info = grid.at(seg, k)
            new = scheme.step(field, info.t, info.h, x, params)
            if info.active is not None:
                new = tuple(torch.where(info.active, a, b) for a, b in zip(new, x))
            if grid.step_outputs:
                outs = grid.record_step(outs, info, new[:n_out])
            if keep is not None and stride is not None:
                rows = keep.keep(rows, k, new, stride)
            return new, outs, rows

        x, outs, rows = carry
        # Outputs ride through the steps only when steps record them (a carry passed through a
        # while_loop unchanged is refused); ``None`` entries are not carried.
        inner = (x, outs if grid.step_outputs else None, rows)
        x, stepped, rows = loops.fori(grid.length(s), body, inner, unroll=unroll)
        outs = stepped if grid.step_outputs else outs
        return x, None if outs is None else grid.record_segment(outs, s, x[:n_out]), rows

    if isinstance(outer, ScanLoops) and not grid.step_outputs:
        # Export: the outputs at t_1..t_M are the outer scan's own outputs (no buffer carried).
        def collected(s: Any, x: State) -> tuple[State, State]:
            x = segment(s, (x, None, None))[0]
            return x, x[:n_out]

        final, ys = outer.fori_collect(grid.segments, collected, state)
        return tuple(torch.cat([y.unsqueeze(0), r]) for y, r in zip(y0, ys)), final, None
    outs0 = grid.new_outputs(y0, python=isinstance(outer, PythonLoops))
    rows0 = None if keep is None else keep.new_rows(state)
    final, outs, rows = outer.fori(grid.segments, segment, (state, outs0, rows0))
    return grid.finish(outs, y0, final[:n_out]), final, rows


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
    unroll: int = 1,
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

        x, a, acc, acc_t = loops.fori(grid.length(s), body, carry, reverse=True, unroll=unroll)
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
    checkpoint: bool = False  # gradient="checkpoint" (fixed grids need ``counts``)
    budget: int | None = None  # its ``checkpoints``; None: the default of ``plan``
    unroll: int = 1  # steps per iteration of a compiled loop (``odeint(unroll=)``)

    def checkpointer(self, grid: Grid, params: Params, n_steps: int) -> Checkpointer:
        return Checkpointer(
            self.loops, self.scheme, self.field, grid, params, plan(n_steps, self.budget)
        )

    def n_keep(self) -> int:
        """How many state components level 0 adds to a checkpointed fixed grid's outputs."""
        return self.n_state if self.checkpoint and self.tol is None else 0


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
        if spec.tol is None and spec.checkpoint:
            assert spec.counts is not None
            grid = FlatGrid(t, spec.counts)
            keep = spec.checkpointer(grid, params, grid.total)
            trajs, final, rows = forward(
                spec.loops, spec.scheme, spec.field, grid, state0, params, spec.n_out, keep
            )
            if isinstance(rows, list):
                rows = tuple(torch.stack(column) for column in zip(*rows))
            return (*trajs, *unaliased(final[spec.n_out :], tensors), *rows)
        if spec.tol is None:
            grid = UniformGrid(t, spec.counts if n is None else n)
            trajs, final, _ = forward(
                spec.loops, spec.scheme, spec.field, grid, state0, params, spec.n_out,
                unroll=spec.unroll,
            )  # fmt: skip
            return (*trajs, *unaliased(final[spec.n_out :], tensors))
        trajs, final, records, count, stats = control(
            spec.loops, spec.scheme, spec.field, t, state0, params, spec.n_out, spec.tol,
            spec.controller,
        )  # fmt: skip
        count_t = count if isinstance(count, Tensor) else torch.tensor(count, device=t.device)
        return (*trajs, *unaliased(final[spec.n_out :], tensors), *records, count_t, *stats)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        spec, t, n, probe, *tensors = inputs
        ctx.spec, ctx.has_probe, ctx.has_n = spec, probe is not None, n is not None
        ctx.n_tensors = len(tensors)
        if spec.tol is not None:
            ctx.mark_non_differentiable(*output[spec.n_state :])
            output = output[: len(output) - N_STATS]
        elif spec.n_keep():
            ctx.mark_non_differentiable(*output[spec.n_state :])
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
        n_extra = spec.n_keep() if spec.tol is None else N_RECORDS + 1
        n_p = len(saved) - ns - ns - n_extra
        state0, params = tuple(saved[:ns]), tuple(saved[ns : ns + n_p])
        trajs, aux = saved[ns + n_p : ns + n_p + n_out], saved[ns + n_p + n_out : ns + n_p + ns]
        extra = tuple(saved[ns + n_p + ns :])
        g_out = tuple(g.contiguous() for g in grads[:n_out])
        cot = (*(g[-1] for g in g_out), *grads[n_out:ns])
        time_grad = bool(ctx.needs_input_grad[1])
        grid: Grid
        if spec.tol is None and spec.checkpoint:
            assert spec.counts is not None
            grid = FlatGrid(t, spec.counts)
            ck = spec.checkpointer(grid, params, grid.total)
            with spec.replay():
                cot, acc, grad_t = reverse_checkpointed(ck, extra, cot, g_out, time_grad)
            return (None, grad_t, None, None, *cot, *acc)
        if spec.tol is None:
            grid = UniformGrid(t, spec.counts if n is None else n)
        else:
            records = Records(*extra[:-1])
            python = spec.loops is PYTHON
            count = records.start.shape[0] if python else extra[-1]
            grid = RecordedGrid(t, records, count)
            if spec.checkpoint:  # replay the accepted steps once to record level 0
                assert spec.tol is not None
                ck = spec.checkpointer(grid, params, count if python else spec.tol.max_steps)
                with spec.replay():
                    top = ck.record(state0, 0, count, ck.plan.stride(0))
                    cot, acc, grad_t = reverse_checkpointed(ck, top, cot, g_out, time_grad)
                return (None, grad_t, None, None, *cot, *acc)
        final = (*(y[-1] for y in trajs), *aux)
        with spec.replay():
            state, cot, acc, grad_t = reverse(
                spec.loops, spec.scheme, spec.field, grid, final, cot, g_out, params, time_grad,
                unroll=spec.unroll,
            )  # fmt: skip
        error = reconstruction_error(state, state0)
        warn_if_drifted(error, spec.reconstruction_tol)
        return (None, grad_t, None, error if ctx.has_probe else None, *cot, *acc)
