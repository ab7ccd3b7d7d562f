"""The gradient engine: one autograd.Function over a chain of reversible steps.

Given a reversible scheme ``Phi`` (:class:`mali_func.solvers.ReversibleScheme`), output times
``t_0, ..., t_M`` and ``n_i`` equal steps of size ``h_i = (t_{i+1} - t_i) / n_i`` in interval
``i``, the forward pass applies ``Phi`` at ``t_i + k h_i`` for ``k = 0..n_i - 1`` and records the
solution part of the state at every ``t_i``. It stores nothing per step.

The backward pass starts from the final state, rebuilds each previous state with the scheme's
inverse and pulls the cotangent back through each step at the rebuilt point (MALI: Zhuang et al.,
ICLR 2021). Cotangents of the outputs enter at their times; cotangents of the step times are
chained to the output times through ``t_i + k h_i``. The result is the exact gradient of the
discrete forward computation, up to the round-off of the reconstruction, which is measured against
the kept initial state (:mod:`mali_func._drift`).

Written for :mod:`torch.func`: ``forward`` takes no ctx, ``setup_context`` saves only inputs and
outputs, ``generate_vmap_rule`` lets ``vmap`` batch it, and the backward differentiates with
:func:`torch.func.vjp`, so ``vmap(grad(...))`` and ``jacrev`` see through the solve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._drift import reconstruction_error, warn_if_drifted
from ._vjp import choose_vjp
from .solvers import Field, Params, ReversibleScheme, State


def step_times(t: Tensor, i: int, n: int) -> tuple[Tensor, list[Tensor]]:
    """Step size and start times of the ``n`` steps of interval ``i`` (shared by both passes)."""
    h = (t[i + 1] - t[i]) / n
    return h, [t[i] + k * h for k in range(n)]


def integrate(
    scheme: ReversibleScheme,
    field: Field,
    t: Tensor,
    state: State,
    params: Params,
    steps: tuple[int, ...],
    n_out: int,
) -> tuple[State, State]:
    """Run the chain; return the stacked solution at every ``t_i`` and the final state."""
    outputs: list[list[Tensor]] = [[x] for x in state[:n_out]]
    for i, n in enumerate(steps):
        h, starts = step_times(t, i, n)
        for tk in starts:
            state = scheme.step(field, tk, h, state, params)
        for out, x in zip(outputs, state):
            out.append(x)
    return tuple(torch.stack(out) for out in outputs), state


@dataclass(frozen=True, eq=False)
class Chain:
    """Static description of a solve: everything that is not a tensor."""

    scheme: ReversibleScheme
    field: Field
    steps: tuple[int, ...]
    n_state: int
    n_out: int
    n_params: int
    reconstruction_tol: float | None


def add_optional(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    """``a + b`` where ``None`` stands for zero."""
    if a is None:
        return b
    if b is None:
        return a
    return a + b


class ReversibleChain(torch.autograd.Function):
    """``apply(chain, t, probe, *state0, *params) -> (*trajectories, *aux_final)``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(  # type: ignore[override]
        chain: Chain, t: Tensor, probe: Tensor | None, *tensors: Tensor
    ) -> tuple[Tensor, ...]:
        state0 = tensors[: chain.n_state]
        params = tensors[chain.n_state :]
        trajectories, final = integrate(
            chain.scheme, chain.field, t, state0, params, chain.steps, chain.n_out
        )
        return (*trajectories, *final[chain.n_out :])

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        chain, t, probe, *tensors = inputs
        ctx.chain = chain
        ctx.has_probe = probe is not None
        ctx.save_for_backward(t, *tensors, *output)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        chain: Chain = ctx.chain
        t, *saved = ctx.saved_tensors
        state0 = tuple(saved[: chain.n_state])
        params = tuple(saved[chain.n_state : chain.n_state + chain.n_params])
        outputs = saved[chain.n_state + chain.n_params :]
        trajectories, aux = outputs[: chain.n_out], outputs[chain.n_out :]
        out_grads, aux_grads = grads[: chain.n_out], grads[chain.n_out :]

        state: State = (*(x[-1] for x in trajectories), *aux)
        cot: State = (*(g[-1] for g in out_grads), *aux_grads)
        time_grad = bool(ctx.needs_input_grad[1])
        vjp = choose_vjp((t, *state, *cot, *params))
        cot_params: list[Tensor | None] = [None] * chain.n_params
        cot_t: list[Tensor | None] = [None] * t.shape[0]
        for i in reversed(range(len(chain.steps))):
            n = chain.steps[i]
            h, starts = step_times(t, i, n)
            sum_t: Tensor | None = None
            sum_h: Tensor | None = None
            for k in reversed(range(n)):
                state, cot, c_t, c_h, c_p = chain.scheme.reverse(
                    chain.field, starts[k], h, state, cot, params, time_grad=time_grad, vjp=vjp
                )
                cot_params = [add_optional(a, b) for a, b in zip(cot_params, c_p)]
                if c_t is not None and c_h is not None:
                    sum_t = add_optional(sum_t, c_t)
                    sum_h = add_optional(sum_h, k * c_t + c_h)
            if sum_t is not None and sum_h is not None:
                cot_t[i] = add_optional(cot_t[i], sum_t - sum_h / n)
                cot_t[i + 1] = add_optional(cot_t[i + 1], sum_h / n)
            cot = (*(c + g[i] for c, g in zip(cot[: chain.n_out], out_grads)), *cot[chain.n_out :])

        error = reconstruction_error(state, state0)
        warn_if_drifted(error, chain.reconstruction_tol)
        grad_t = None
        if time_grad:
            grad_t = torch.stack([torch.zeros_like(t[0]) if c is None else c for c in cot_t])
        return (None, grad_t, error if ctx.has_probe else None, *cot, *cot_params)


def solve_reversible(
    chain: Chain,
    t: Tensor,
    state0: State,
    params: Params,
    probe: Tensor | None = None,
) -> tuple[State, State]:
    """Differentiate the chain with MALI; returns ``(trajectories, auxiliary final state)``."""
    out = ReversibleChain.apply(chain, t, probe, *state0, *params)
    return tuple(out[: chain.n_out]), tuple(out[chain.n_out :])
