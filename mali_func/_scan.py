"""Forward-only integration written with ``torch._higher_order_ops.scan``, for export.

:func:`mali_func._engine.integrate` runs the steps in a Python ``for`` loop, which a tracer
unrolls: the exported graph then grows with the number of steps. :func:`integrate_scan` computes
the same thing with the ``scan`` higher-order operator, which ``torch.export`` keeps as one node,
and ``torch.onnx.export(dynamo=True)`` lowers to one ONNX ``Scan`` whose body is a single step. The
size of the graph then does not depend on the number of steps.

The arithmetic is that of the eager engine, step for step: ``h = (t[i+1] - t[i]) / n`` and
``t_k = t[i] + k h`` with the step index ``k`` carried as an integer, so the two agree to
round-off (bit for bit in practice). When every interval has the same number of steps and there
are several intervals, the per-interval loops are nested inside one outer ``scan`` over the
intervals, so the graph does not grow with ``len(t)`` either.

It is a forward computation only: no MALI gradient machinery. ``scan`` has to trace its body, so in
eager mode each call compiles it (``torch.compile`` with the eager backend, which refuses fields
with Python side effects such as call counters); use :func:`~mali_func._engine.integrate` for
eager work and this one under export, where the body is traced once and side effects are harmless.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch._higher_order_ops import scan

from .solvers import Field, Params, ReversibleScheme, State


def _unaliased(new: State, old: State) -> State:
    """``scan`` forbids body outputs that are its inputs or each other: copy those."""
    out: list[Tensor] = []
    for x in new:
        out.append(x.clone() if any(x is y for y in (*old, *out)) else x)
    return tuple(out)


def _run_steps(
    scheme: ReversibleScheme,
    field: Field,
    t_start: Tensor,
    t_end: Tensor,
    n: int,
    state: State,
    params: Params,
) -> State:
    """``n`` equal steps from ``t_start`` to ``t_end`` as one ``scan``; returns the final state."""
    h = (t_end - t_start) / n
    # The step index k rides in the carry as an integer; the scanned input has n rows of width 0,
    # so the exported graph stores no per-step data and its size does not depend on n.
    k0 = torch.zeros((), dtype=torch.int64, device=t_start.device)
    rows = torch.empty((n, 0), dtype=t_start.dtype, device=t_start.device)

    def body(carry: tuple[Tensor, State], row: Tensor) -> tuple[tuple[Tensor, State], Tensor]:
        k, x = carry
        tk = t_start + k.to(h.dtype) * h  # t_k = t_i + k h, as in _engine.step_times
        return (k + 1, _unaliased(scheme.step(field, tk, h, x, params), x)), row.clone()

    (_, final), _ = scan(body, (k0, tuple(state)), rows)
    return tuple(final)


def _integrate_nested(
    scheme: ReversibleScheme,
    field: Field,
    t: Tensor,
    state: State,
    params: Params,
    n: int,
    n_out: int,
) -> tuple[State, State]:
    """Every interval has ``n`` steps: one outer ``scan`` over the intervals."""

    def interval(carry: State, ends: tuple[Tensor, Tensor]) -> tuple[State, State]:
        final = _run_steps(scheme, field, ends[0], ends[1], n, carry, params)
        final = _unaliased(final, carry)
        return final, tuple(x.clone() for x in final[:n_out])

    final, stacked = scan(interval, tuple(state), (t[:-1], t[1:]))
    trajectories = tuple(torch.cat([x0.unsqueeze(0), xs]) for x0, xs in zip(state[:n_out], stacked))
    return trajectories, tuple(final)


def integrate_scan(
    scheme: ReversibleScheme,
    field: Field,
    t: Tensor,
    state: State,
    params: Params,
    steps: tuple[int, ...],
    n_out: int,
) -> tuple[State, State]:
    """Like :func:`mali_func._engine.integrate`, with each interval's steps in one ``scan``.

    Returns the solution components stacked at every ``t_i`` (shape ``(len(t), *y.shape)``) and
    the final extended state.
    """
    if len(steps) > 1 and len(set(steps)) == 1:
        return _integrate_nested(scheme, field, t, state, params, steps[0], n_out)
    outputs: list[list[Tensor]] = [[x] for x in state[:n_out]]
    for i, n in enumerate(steps):
        state = _run_steps(scheme, field, t[i], t[i + 1], n, state, params)
        for out, x in zip(outputs, state):
            out.append(x)
    return tuple(torch.stack(out) for out in outputs), state
