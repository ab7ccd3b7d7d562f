"""Adaptive solves, differentiated with MALI or by backprop through the accepted steps.

The forward pass is the controller of :mod:`mali_func._controller`. With MALI it keeps only the
step records (the interval, start and size of each step as fractions of its interval: the only
memory that grows with the number of steps) and the final state; the backward pass walks the
records in reverse, inverting each step and pulling the cotangent back through it exactly as the
fixed-grid engine does (:mod:`mali_func._engine`; Zhuang et al., ICLR 2021). Step sizes are
constants of the gradient, as in the paper: the result equals backprop through the same accepted
steps, which :func:`replay` computes. Under ``vmap`` the records keep rejected trials too, and
each sample's backward skips its own rejected ones with ``torch.where``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._checks import is_concrete
from ._controller import Records, SolveStats, Tolerances, interval_times, run_controller
from ._drift import reconstruction_error, warn_if_drifted
from ._engine import add_optional
from ._vjp import choose_vjp
from .solvers import Field, Params, ReversibleScheme, State

N_RECORDS = len(Records._fields)
N_STATS = len(SolveStats._fields)


@dataclass(frozen=True, eq=False)
class AdaptiveChain:
    scheme: ReversibleScheme
    field: Field
    tol: Tolerances
    n_state: int
    n_out: int
    n_params: int
    reconstruction_tol: float | None


def _mask(ok: Tensor, new: Tensor | None, old: Tensor | None) -> Tensor | None:
    if new is None:
        return old
    return torch.where(ok, new, torch.zeros_like(new) if old is None else old)


def _row(x: Tensor, i: Tensor) -> Tensor:
    """``x[i]`` for a 0-dim index tensor, also when ``i`` is batched under vmap."""
    return x.index_select(0, i.reshape(1)).squeeze(0)


class AdaptiveFunction(torch.autograd.Function):
    """``apply(chain, t, probe, *state0, *params) -> (*outputs, *aux, *records, *stats)``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(  # type: ignore[override]
        chain: AdaptiveChain, t: Tensor, probe: Tensor | None, *tensors: Tensor
    ) -> tuple[Tensor, ...]:
        state0 = tensors[: chain.n_state]
        params = tensors[chain.n_state :]
        eager = all(is_concrete(x) for x in (t, *tensors))
        outputs, final, records, stats = run_controller(
            chain.scheme, chain.field, t, state0, params, chain.n_out, chain.tol, eager=eager
        )
        return (*outputs, *final[chain.n_out :], *records, *stats)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        chain, t, probe, *tensors = inputs
        ctx.chain = chain
        ctx.has_probe = probe is not None
        n_keep = len(output) - N_STATS
        records = output[n_keep - N_RECORDS : n_keep]
        ctx.mark_non_differentiable(*records, *output[n_keep:])
        ctx.save_for_backward(t, *tensors, *output[:n_keep])

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        chain: AdaptiveChain = ctx.chain
        t, *saved = ctx.saved_tensors
        n_s, n_p, n_o = chain.n_state, chain.n_params, chain.n_out
        state0, params = tuple(saved[:n_s]), tuple(saved[n_s : n_s + n_p])
        rest = saved[n_s + n_p :]
        outputs, aux = rest[:n_o], rest[n_o:n_s]
        records = Records(*rest[n_s:])
        out_grads, aux_grads = grads[:n_o], grads[n_o:n_s]

        # Output cotangents enter after the step that ends their interval, the last one included.
        state: State = (*(x[-1] for x in outputs), *aux)
        cot: State = (*(torch.zeros_like(g[-1]) for g in out_grads), *aux_grads)
        time_grad = bool(ctx.needs_input_grad[1])
        vjp = choose_vjp((t, *state, *cot, *params))
        cot_params: list[Tensor | None] = [None] * n_p
        grad_t = torch.zeros_like(t) if time_grad else None
        for k in reversed(range(records.start.shape[0])):
            i, c, theta = records.interval[k], records.start[k], records.size[k]
            ok = records.accepted[k]
            ends = records.ends[k] & ok
            cot = (
                *(a + torch.where(ends, _row(g, i + 1), 0) for a, g in zip(cot[:n_o], out_grads)),
                *cot[n_o:],
            )
            tk, h = interval_times(t, i, c, theta)
            prev, c_prev, a_t, a_h, a_p = chain.scheme.reverse(
                chain.field, tk, h, state, cot, params, time_grad=time_grad, vjp=vjp
            )
            state = tuple(torch.where(ok, a, b) for a, b in zip(prev, state))
            cot = tuple(torch.where(ok, a, b) for a, b in zip(c_prev, cot))
            cot_params = [add_optional(acc, _mask(ok, g, None)) for acc, g in zip(cot_params, a_p)]
            if grad_t is not None and a_t is not None and a_h is not None:
                d_span = torch.where(ok, c * a_t + theta * a_h, 0)
                a_start = torch.where(ok, a_t, 0) - d_span
                grad_t = grad_t.index_add(0, i.reshape(1), a_start.reshape(1))
                grad_t = grad_t.index_add(0, (i + 1).reshape(1), d_span.reshape(1))
        cot = (*(a + g[0] for a, g in zip(cot[:n_o], out_grads)), *cot[n_o:])
        error = reconstruction_error(state, state0)
        warn_if_drifted(error, chain.reconstruction_tol)
        return (None, grad_t, error if ctx.has_probe else None, *cot, *cot_params)


def solve_adaptive(
    chain: AdaptiveChain, t: Tensor, state0: State, params: Params, probe: Tensor | None
) -> tuple[State, SolveStats]:
    out = AdaptiveFunction.apply(chain, t, probe, *state0, *params)
    n_keep = len(out) - N_STATS
    return tuple(out[: chain.n_out]), SolveStats(*out[n_keep:])


def replay(
    scheme: ReversibleScheme,
    field: Field,
    t: Tensor,
    state: State,
    params: Params,
    records: Records,
    n_out: int,
) -> State:
    """Re-run the recorded steps with autograd (backprop through the same accepted steps)."""
    m = t.shape[0] - 1
    # Row m + 1 takes the writes of steps that end no interval; it is dropped at the end.
    stacked = [torch.stack([y] * (m + 2)) for y in state[:n_out]]
    for k in range(records.start.shape[0]):
        ok = records.accepted[k]
        i = records.interval[k]
        tk, h = interval_times(t, i, records.start[k], records.size[k])
        new = scheme.step(field, tk, h, state, params)
        state = tuple(torch.where(ok, a, b) for a, b in zip(new, state))
        slot = torch.where(records.ends[k] & ok, i + 1, m + 1).reshape(1)
        stacked = [s.index_copy(0, slot, z.unsqueeze(0)) for s, z in zip(stacked, state[:n_out])]
    return tuple(s[:-1] for s in stacked)
