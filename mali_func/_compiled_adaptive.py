"""Adaptive solves under ``torch.compile``: the controller and its MALI backward as ``while_loop``s.

The eager adaptive path (:mod:`mali_func._adaptive`) drives :func:`mali_func._controller._iterate`
from Python, reading a flag on the host every few trials and growing Python lists of records.
Here the same trial step is the body of one :func:`torch._higher_order_ops.while_loop`, which runs
until every interval is done, the solve failed or ``max_steps`` trials were made: no host read,
no graph break, and a graph whose size does not depend on the tolerances.

Accepted steps are compacted into preallocated buffers of ``max_steps + 1`` entries (rejected
trials write to the last, spare entry), so the backward pass walks only accepted steps. A failed
solve returns NaN outputs and ``stats.failed``; nothing raises under compile.

* ``gradient="mali"``: :class:`AdaptiveLoop`, whose backward is a reverse ``while_loop`` over the
  records: each iteration injects the output cotangent where the step ends an interval, inverts
  the step and pulls the cotangent back (:meth:`ReversibleScheme.reverse` with the fenced
  :func:`mali_func._compiled._vjp`), and adds the ``t`` cotangent with ``index_add``.
* ``gradient="backprop"`` runs the same reverse loop: the gradient of the same accepted steps,
  equal to backprop through them up to the round-off of the reconstruction. (Replaying the records
  under ``while_loop``'s own autograd would be exact, but torch 2.13's ``while_loop`` backward
  loses the cotangent that one carry sends into another over iterations, e.g. through
  ``b' = b + g(a)``: wrong gradients for ``(z, logp)``-like states.)

The torch 2.13 workarounds of :mod:`mali_func._compiled` (donated buffers off, fenced cotangents)
apply here too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch._higher_order_ops import while_loop

from ._compiled import _at, _vjp
from ._controller import SolveStats, Tolerances, _Carry, _iterate, initial_carry, interval_times
from ._drift import reconstruction_error
from .solvers import Field, Params, ReversibleScheme, State

Spec = tuple[ReversibleScheme, Field, Tolerances, int, int]
"""``(scheme, field, tol, n_state, n_out)``: what :class:`AdaptiveLoop` needs besides tensors."""

N_RECORDS = 4  # interval, start, size, ends
N_STATS = len(SolveStats._fields)


def _control(
    scheme: ReversibleScheme,
    field: Field,
    t: Tensor,
    state: State,
    params: Params,
    n_out: int,
    tol: Tolerances,
) -> tuple[State, State, tuple[Tensor, ...], Tensor, SolveStats]:
    """Outputs at every ``t_i``, the final state, the records, their count and the stats."""
    ns, m, size = len(state), t.shape[0] - 1, tol.max_steps + 1
    start = initial_carry(field, t, state, params, n_out, tol)
    outputs = start.outputs

    def filled(value: float, dtype: torch.dtype, *shape: int) -> Tensor:
        return torch.full(shape, value, dtype=dtype, device=t.device)

    i64, f, b = torch.int64, t.dtype, torch.bool
    records = (filled(0, i64, size), filled(0, f, size), filled(0, f, size), filled(0, b, size))
    # interval, c, hmag, rejected_last and the stats, as in _Carry.
    scalars = (start.interval, start.c, start.hmag, start.rejected_last, *start.stats)
    # Carried values must not alias each other or what the bodies capture.
    init = tuple(x.clone() for x in (*state, *outputs, *scalars, *records))
    n_o = len(outputs)

    def unpack(c: tuple[Tensor, ...]) -> _Carry:
        interval, cc, hm, rej, *st = c[ns + n_o : ns + n_o + 8]
        return _Carry(c[:ns], c[ns : ns + n_o], interval, cc, hm, rej, SolveStats(*st))

    def cond(k: Tensor, *c: Tensor) -> Tensor:
        carry = unpack(c)
        return (k < tol.max_steps) & (carry.interval < m) & ~carry.stats.failed

    def body(k: Tensor, *c: Tensor) -> tuple[Tensor, ...]:
        new, (i, c0, theta, ok, ends) = _iterate(scheme, field, t, params, n_out, tol, unpack(c))
        slot = torch.where(ok, new.stats.n_accepted - 1, tol.max_steps).reshape(1)
        recs = tuple(
            r.index_copy(0, slot, v.reshape(1))
            for r, v in zip(c[ns + n_o + 8 :], (i, c0, theta, ends))
        )
        scal = (new.interval, new.c, new.hmag, new.rejected_last, *new.stats)
        return (k + 1, *new.state, *new.outputs, *scal, *recs)

    res = while_loop(cond, body, (filled(0, i64), *init))[1:]
    carry = unpack(res)
    stats = carry.stats._replace(failed=carry.stats.failed | (carry.interval < m))
    trajs = tuple(
        torch.where(stats.failed, torch.full_like(o[:-1], float("nan")), o[:-1])
        for o in carry.outputs
    )
    return trajs, carry.state, tuple(res[ns + n_o + 8 :]), stats.n_accepted, stats


class AdaptiveLoop(torch.autograd.Function):
    """``apply(spec, t, probe, *state0, *params) -> (*trajs, *aux, *records, count, *stats)``."""

    @staticmethod
    def forward(  # type: ignore[override]
        spec: Spec, t: Tensor, probe: Tensor | None, *tensors: Tensor
    ) -> tuple[Tensor, ...]:
        scheme, field, tol, ns, n_out = spec
        trajs, final, records, count, stats = _control(
            scheme, field, t, tensors[:ns], tensors[ns:], n_out, tol
        )
        return (*trajs, *final[n_out:], *records, count.clone(), *stats)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        spec, t, probe, *tensors = inputs
        ctx.spec = spec
        ctx.has_probe = probe is not None
        n_keep = len(output) - N_STATS - 1
        ctx.mark_non_differentiable(*output[n_keep - N_RECORDS :])
        ctx.save_for_backward(t, *tensors, *output[: n_keep + 1])

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        scheme, field, _, ns, n_out = ctx.spec
        t, *saved = ctx.saved_tensors
        n_p = len(saved) - ns - ns - N_RECORDS - 1
        state0, params = tuple(saved[:ns]), tuple(saved[ns : ns + n_p])
        rest = saved[ns + n_p :]
        outputs, aux, records, count = rest[:n_out], rest[n_out:ns], rest[ns:-1], rest[-1]
        g_out = tuple(g.contiguous() for g in grads[:n_out])
        time_grad = bool(ctx.needs_input_grad[1])

        def body(k: Tensor, *c: Tensor) -> tuple[Tensor, ...]:
            k = k - 1
            x, a, acc = c[:ns], c[ns : 2 * ns], c[2 * ns : 2 * ns + n_p]
            i, start, size, ends = (_at(r, k) for r in records)
            a = (
                *(b + torch.where(ends, _at(g, i + 1), 0) for b, g in zip(a[:n_out], g_out)),
                *a[n_out:],
            )
            tk, h = interval_times(t, i, start, size)
            prev, a_prev, a_t, a_h, a_p = scheme.reverse(
                field, tk, h, x, a, params, time_grad=time_grad, vjp=_vjp
            )
            # s + d, fenced against inductor's addmm rewrite (see _compiled).
            acc = tuple(s if d is None else torch.sub(s, torch.neg(d)) for s, d in zip(acc, a_p))
            if not time_grad or a_t is None or a_h is None:
                return (k, *prev, *a_prev, *acc)
            d_span = start * a_t + size * a_h
            gt = c[-1].index_add(0, i.reshape(1), (a_t - d_span).reshape(1))
            return (k, *prev, *a_prev, *acc, gt.index_add(0, (i + 1).reshape(1), d_span.reshape(1)))

        final = (*(y[-1] for y in outputs), *aux)
        cot = (*(torch.zeros_like(g[-1]) for g in g_out), *grads[n_out:ns])
        carry = tuple(x.clone() for x in (*final, *cot))
        carry += tuple(torch.zeros_like(p) for p in params)
        carry += (torch.zeros_like(t),) if time_grad else ()
        res = while_loop(lambda k, *_: k > 0, body, (count.clone(), *carry))[1:]
        state, cot = res[:ns], res[ns : 2 * ns]
        cot = (*(b + g[0] for b, g in zip(cot[:n_out], g_out)), *cot[n_out:])
        grad_t = res[-1] if time_grad else None
        error = reconstruction_error(state, state0) if ctx.has_probe else None
        return (None, grad_t, error, *cot, *res[2 * ns : 2 * ns + n_p])


def adaptive_loop(
    scheme: ReversibleScheme,
    field: Field,
    t: Tensor,
    state0: State,
    params: Params,
    n_out: int,
    tol: Tolerances,
    *,
    gradient: str = "mali",
    probe: Tensor | None = None,
) -> tuple[State, SolveStats]:
    """Solve adaptively as ``while_loop``s; returns ``(trajectories, stats)``.

    Meant to be traced by ``torch.compile`` (``fullgraph=True``, forward and backward); the
    arguments are those of :func:`mali_func._compiled.odeint_loop` with ``tol`` for ``n_steps``.
    A solve that fails (``max_steps`` trials, or a step size underflow) returns NaN trajectories
    and ``stats.failed``. ``gradient="backprop"`` takes the MALI reverse loop (see the module docs).
    """
    del gradient
    if not torch.is_grad_enabled() or not any(x.requires_grad for x in (t, *state0, *params)):
        # Nothing to differentiate (dynamo mis-binds a setup_context Function's args then).
        trajs, _, _, _, stats = _control(scheme, field, t, state0, params, n_out, tol)
        return trajs, stats
    spec = (scheme, field, tol, len(state0), n_out)
    out = AdaptiveLoop.apply(spec, t, probe, *state0, *params)
    return tuple(out[:n_out]), SolveStats(*out[len(out) - N_STATS :])
