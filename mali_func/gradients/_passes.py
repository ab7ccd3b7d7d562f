"""The forward and reverse passes of a solve, written once against the loop primitives.

Given a reversible scheme ``Phi`` (:class:`mali_func.schemes.ReversibleScheme`) and a time grid
(:mod:`mali_func.stepping._grid`), :func:`forward` applies ``Phi`` at every step and records the
solution at every output time; it stores nothing per step. :func:`reverse` starts from the final
state, rebuilds each previous state with the scheme's inverse and pulls the cotangent back through
the step at the rebuilt point (MALI: Zhuang, Dvornek, Tatikonda & Duncan, "MALI: A memory efficient
and
reverse accurate integrator for Neural ODEs", ICLR 2021):

    x_{k} = Phi_{h_k}^{-1}(x_{k+1}),   a_k = (dPhi_{h_k}/dx)^T a_{k+1},
    a_theta += (dPhi_{h_k}/dtheta)^T a_{k+1},

with the cotangent of each output added where the forward pass recorded it and the cotangents of
each step's ``(t_k, h_k)`` chained to ``t`` by the grid. Grids walked in segments (one interval
each) run an outer loop over the segments and an inner one over their steps; both are the
backend's ``fori`` (:mod:`mali_func.backends._loops`), so the same code runs eagerly, inside
``torch.compile`` (``while_loop``) and under export (``scan``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..backends._loops import PYTHON, Loops, PythonLoops
from ..schemes import Field, Params, ReversibleScheme, State
from ..stepping._grid import Grid
from ._checkpoint import Checkpointer


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
    hooks: Any = None,
) -> tuple[State, State, Any]:
    """Run every step of ``grid``; return the solution at every ``t_i``, the final state and,
    with ``keep`` (one-segment grids), level 0 of a checkpointed gradient. ``hooks``: the field's
    step callbacks (:mod:`mali_func.field._callbacks`; eager Python loops only)."""
    y0, outer = state[:n_out], _outer(loops, grid)
    stride = None if keep is None else keep.plan.stride(0)

    def segment(s: Any, carry: tuple[State, Any, Any]) -> tuple[State, Any, Any]:
        seg = grid.segment(s)

        def body(k: Any, inner: tuple[State, Any, Any]) -> tuple[State, Any, Any]:
            x, outs, rows = inner
            info = grid.at(seg, k)
            if hooks is not None:
                hooks.trial(info.t, x[:n_out], info.h)
            new = scheme.step(field, info.t, info.h, x, params)
            if info.active is not None:
                new = tuple(torch.where(info.active, a, b) for a, b in zip(new, x))
            if grid.step_outputs:  # a grid reads the components it records
                outs = grid.record_step(outs, info, new)
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

    outs0 = grid.new_outputs(state if grid.full_state else y0, isinstance(outer, PythonLoops))
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
    hooks: Any = None,
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
            if hooks is not None:  # the step rebuilt: its start state is known
                hooks.backward_step(info.t, prev[:n_out], info.h)
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
        a = grid.at_start(a, s, g_out)
        return x, a, acc, acc_t

    acc_t0 = torch.zeros_like(grid.t) if time_grad else None
    carry = (final, cot, loops.accumulators(params), acc_t0)
    state, cot, acc, acc_t = _outer(loops, grid).fori(grid.segments, segment, carry, reverse=True)
    return state, cot, acc, acc_t
