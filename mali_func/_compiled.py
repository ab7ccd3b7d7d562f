"""A compile-friendly twin of the engine: the step loops are ``while_loop``s, not Python loops.

:class:`mali_func._engine.ReversibleChain` runs its steps in Python ``for`` loops, which
``torch.compile`` unrolls: compile time grows with the number of steps. Here the same computation
is written with :func:`torch._higher_order_ops.while_loop`, which dynamo, AOTAutograd and inductor
keep as one loop whatever the step count, and which takes the step count as data (an ``int``, a
``SymInt`` or a 0-dim integer tensor), so a new count need not recompile.

Two nested loops: the outer one over the intervals ``[t_i, t_{i+1}]`` writes the solution at
``t_{i+1}`` into the trajectory, the inner one runs ``n`` equal steps.

* ``gradient="mali"``: :class:`LoopChain`, an autograd.Function whose forward is the loop above and
  whose backward is the reverse loop: from the final state, each body rebuilds the previous state
  with the scheme's inverse and pulls the cotangent back through the step
  (:meth:`ReversibleScheme.reverse` with :func:`torch.func.vjp`, one field evaluation plus one VJP
  per step for ALF). Nothing is stored per step, so memory stays constant.
* ``gradient="backprop"``: the same loops without an autograd.Function; ``while_loop``'s own
  autograd stores every step's carries (memory linear in the steps, like eager backprop).

Inductor in torch 2.13 lowers a ``while_loop`` inside a backward graph with the outer graph's
donated-buffer indices applied to the loop body's inputs (pytorch/pytorch#192840), so the body may
overwrite a buffer that is still needed and the gradients come out silently wrong. Importing this
module therefore turns ``torch._functorch.config.donated_buffer`` off (a memory optimisation of
compiled backward graphs); :func:`odeint_loop` refuses to be traced while it is on.
"""

from __future__ import annotations

from typing import Any

import torch
import torch._functorch.config as functorch_config
from torch import Tensor
from torch._higher_order_ops import while_loop

from ._drift import reconstruction_error
from .solvers import Field, Params, ReversibleScheme, State

functorch_config.donated_buffer = False

Count = int | torch.SymInt | Tensor


def _at(x: Tensor, i: Tensor) -> Tensor:
    """``x[i]`` for a 0-dim integer tensor ``i``, without reading ``i`` on the host."""
    return x.index_select(0, i.reshape(1)).squeeze(0)


def _put(x: Tensor, i: Tensor, value: Tensor) -> Tensor:
    """``x`` with ``x[i]`` replaced by ``value`` (out of place)."""
    return x.index_copy(0, i.reshape(1), value.unsqueeze(0))


def _counter(like: Tensor, value: int = 0) -> Tensor:
    return torch.full((), value, dtype=torch.int64, device=like.device)


def _forward(
    scheme: ReversibleScheme,
    field: Field,
    t: Tensor,
    n: Count,
    state: State,
    params: Params,
    n_out: int,
) -> tuple[State, State]:
    """Trajectories of the first ``n_out`` state components at every ``t_i``, final state."""
    m = t.shape[0] - 1
    ns = len(state)
    trajs = tuple(x.unsqueeze(0).expand(m + 1, *x.shape).contiguous() for x in state[:n_out])

    def outer_body(i: Tensor, *carry: Tensor) -> tuple[Tensor, ...]:
        st, tr = carry[:ns], carry[ns:]
        ti = _at(t, i)
        h = (_at(t, i + 1) - ti) / n

        def inner_body(k: Tensor, *x: Tensor) -> tuple[Tensor, ...]:
            return (k + 1, *scheme.step(field, ti + k * h, h, x, params))

        _, *st = while_loop(lambda k, *_: k < n, inner_body, (_counter(t), *st))
        tr = tuple(_put(a, i + 1, x) for a, x in zip(tr, st))
        return (i + 1, *st, *tr)

    _, *out = while_loop(lambda i, *_: i < m, outer_body, (_counter(t), *state, *trajs))
    return tuple(out[ns:]), tuple(out[:ns])


class LoopChain(torch.autograd.Function):
    """``apply(spec, t, n, probe, *state0, *params) -> (*trajectories, *aux_final)``.

    ``spec`` is ``(scheme, field, n_state, n_out)``; ``n`` a 0-dim int64 tensor.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        spec: tuple[ReversibleScheme, Field, int, int],
        t: Tensor,
        n: Tensor,
        probe: Tensor | None,
        *tensors: Tensor,
    ) -> tuple[Tensor, ...]:
        scheme, field, ns, n_out = spec
        trajs, final = _forward(scheme, field, t, n, tensors[:ns], tensors[ns:], n_out)
        return (*trajs, *final[n_out:])

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        spec, t, n, probe, *tensors = inputs
        ctx.spec = spec
        ctx.has_probe = probe is not None
        ctx.save_for_backward(t, n, *tensors, *output)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        scheme, field, ns, n_out = ctx.spec
        t, n, *saved = ctx.saved_tensors
        state0, params = tuple(saved[:ns]), tuple(saved[ns : len(saved) - len(grads)])
        outputs = saved[len(saved) - len(grads) :]
        time_grad = bool(ctx.needs_input_grad[1])
        npar, m = len(params), t.shape[0] - 1
        g_out = tuple(g.contiguous() for g in grads[:n_out])
        # Carried values must not alias each other or what the loop bodies capture: clone.
        state = tuple(x.clone() for x in (*(y[-1] for y in outputs[:n_out]), *outputs[n_out:]))
        cot = tuple(g.clone() for g in (*(g[-1] for g in g_out), *grads[n_out:]))
        acc = tuple(torch.zeros_like(p) for p in params)
        extra = (torch.zeros_like(t),) if time_grad else ()

        def outer_body(i: Tensor, *carry: Tensor) -> tuple[Tensor, ...]:
            # Reverse interval i - 1 (i runs m..1); carry = state, cot, acc, [cot_t].
            st, ct = carry[:ns], carry[ns : 2 * ns]
            ac, rest = carry[2 * ns : 2 * ns + npar], carry[2 * ns + npar :]
            lo = i - 1
            ti = _at(t, lo)
            h = (_at(t, i) - ti) / n

            def inner_body(k: Tensor, *c: Tensor) -> tuple[Tensor, ...]:
                kk = k - 1
                x, a, p_acc, sums = c[:ns], c[ns : 2 * ns], c[2 * ns : 2 * ns + npar], c[2 * ns + npar :]
                prev, a_prev, c_t, c_h, c_p = scheme.reverse(
                    field, ti + kk * h, h, x, a, params, time_grad=time_grad, vjp=torch.func.vjp
                )
                p_acc = tuple(u + v for u, v in zip(p_acc, c_p))
                if time_grad:
                    sums = (sums[0] + c_t, sums[1] + kk * c_t + c_h)
                return (kk, *prev, *a_prev, *p_acc, *sums)

            zero = torch.zeros_like(ti)
            sums0 = (zero, zero.clone()) if time_grad else ()
            _, *res = while_loop(
                lambda k, *_: k > 0, inner_body, (n.clone(), *st, *ct, *ac, *sums0)
            )
            st, ct = tuple(res[:ns]), tuple(res[ns : 2 * ns])
            ac = tuple(res[2 * ns : 2 * ns + npar])
            ct = (*(c + _at(g, lo) for c, g in zip(ct[:n_out], g_out)), *ct[n_out:])
            if time_grad:
                sum_t, sum_h = res[2 * ns + npar :]
                both = torch.stack([sum_t - sum_h / n, sum_h / n])
                rest = (rest[0].index_add(0, torch.stack([lo, i]), both),)
            return (lo, *st, *ct, *ac, *rest)

        res = while_loop(
            lambda i, *_: i > 0, outer_body, (_counter(t, m), *state, *cot, *acc, *extra)
        )
        st, ct = tuple(res[1 : 1 + ns]), tuple(res[1 + ns : 1 + 2 * ns])
        ac = tuple(res[1 + 2 * ns : 1 + 2 * ns + npar])
        grad_t = res[-1] if time_grad else None
        error = reconstruction_error(st, state0) if ctx.has_probe else None
        return (None, grad_t, None, error, *ct, *ac)


def odeint_loop(
    scheme: ReversibleScheme,
    field: Field,
    t: Tensor,
    state0: State,
    params: Params,
    n_steps: Count,
    n_out: int,
    *,
    gradient: str = "mali",
    probe: Tensor | None = None,
) -> tuple[State, State]:
    """Solve with ``n_steps`` equal steps per interval of ``t``, as ``while_loop``s.

    Args:
        scheme: the reversible scheme (:class:`~mali_func.solvers.ALF`, ...).
        field: pure field ``field(t, y, params) -> dy/dt`` over tuples (see ``_field.py``).
        t: 1-D output times.
        state0: the scheme's initial extended state (``scheme.init(...)``).
        params: tensors the field reads; gradients are returned for them.
        n_steps: steps per interval: an ``int``, a ``SymInt`` or a 0-dim integer tensor (a tensor
            never recompiles for a new value).
        n_out: how many leading state components are the solution (recorded at every ``t_i``).
        gradient: ``"mali"`` (constant memory) or ``"backprop"`` (``while_loop``'s autograd).
        probe: the :class:`~mali_func.DriftMonitor` leaf; receives the reconstruction error.

    Returns:
        ``(trajectories, aux_final)``: the solution components stacked over ``t``, and the
        auxiliary (non-solution) part of the final state, like :func:`_engine.solve_reversible`.
    """
    if torch.compiler.is_compiling() and functorch_config.donated_buffer:
        raise RuntimeError(
            "torch._functorch.config.donated_buffer must be False when compiling odeint "
            "(pytorch/pytorch#192840 makes inductor corrupt while_loop gradients otherwise)"
        )
    if gradient == "backprop":
        trajs, final = _forward(scheme, field, t, n_steps, state0, params, n_out)
        return trajs, final[n_out:]
    n = n_steps if isinstance(n_steps, Tensor) else torch.scalar_tensor(n_steps, dtype=torch.int64)
    spec = (scheme, field, len(state0), n_out)
    out = LoopChain.apply(spec, t, n.to(torch.int64).reshape(()), probe, *state0, *params)
    return tuple(out[:n_out]), tuple(out[n_out:])
