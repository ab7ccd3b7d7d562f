"""A compile-friendly twin of the engine: the step loops are ``while_loop``s, not Python loops.

:class:`mali_func._engine.ReversibleChain` runs its steps in Python ``for`` loops, which
``torch.compile`` unrolls: compile time grows with the number of steps. Here the same solve is
written with :func:`torch._higher_order_ops.while_loop`, which dynamo, AOTAutograd and inductor keep
as one loop whatever the step count. The count is data (an ``int``, a ``SymInt`` or a 0-dim integer
tensor; a tensor never recompiles), so compile time does not depend on it.

An outer loop over the intervals ``[t_i, t_{i+1}]`` records the solution at ``t_{i+1}``; an inner
loop runs the ``n`` equal steps (with one interval, the outer loop is left out).

* ``gradient="mali"``: :class:`LoopChain`, an autograd.Function whose forward is that loop and whose
  backward is the reverse loop: from the final state, each iteration rebuilds the previous state
  with the scheme's inverse and pulls the cotangent back through the step
  (:meth:`ReversibleScheme.reverse` with :func:`torch.func.vjp`: one field evaluation and one VJP
  per ALF step). Nothing is stored per step, so memory is constant in the number of steps.
* ``gradient="backprop"`` is not offered here: ``while_loop``'s own autograd in torch 2.13 gives
  wrong gradients when one carry feeds another across iterations (a ``(z, logp)`` state, or ALF's
  own ``z``/``v`` coupling), so :func:`mali_func.odeint` compiles backprop as the plain (unrolled)
  loop instead.

Two workarounds for torch 2.13 (CPU):

* Inductor lowers a ``while_loop`` inside a backward graph with the *outer* graph's donated-buffer
  indices applied to the loop body's inputs, so the body may overwrite a
  buffer that is still live and gradients come out silently wrong. Importing this module turns
  ``torch._functorch.config.donated_buffer`` off; :func:`odeint_loop` refuses to trace while it is
  on.
* Inductor rewrites ``add(mm(a, b), c)`` into ``addmm(c, a, b)``, which on MKL float32 rounds about
  ten times worse than a matmul and an add when the product is small against ``c``: accumulations
  over hundreds of steps drift to 1e-5. Cotangents are fenced (:func:`_fence`) so the rewrite
  cannot match.
"""

from __future__ import annotations

from typing import Any

import torch
import torch._functorch.config as functorch_config
from torch import Tensor
from torch._higher_order_ops import while_loop
from torch.utils._pytree import tree_map

from ._drift import reconstruction_error
from .solvers import Field, Params, ReversibleScheme, State

functorch_config.donated_buffer = False

Count = int | torch.SymInt | Tensor
Spec = tuple[ReversibleScheme, Field, int, int]
"""``(scheme, field, n_state, n_out)``: what :class:`LoopChain` needs besides tensors."""


def _fence(x: Tensor) -> Tensor:
    """``x`` itself, in a form that inductor's ``add(mm, c) -> addmm`` rewrite does not match."""
    return torch.neg(torch.neg(x))


def _vjp(fn: Any, *primals: Any) -> tuple[Any, Any]:
    """:func:`torch.func.vjp` with fenced cotangents (see the module docs)."""
    out, pullback = torch.func.vjp(fn, *primals)
    return out, lambda cotangent: tree_map(_fence, pullback(cotangent))


def _at(x: Tensor, i: Tensor) -> Tensor:
    """``x[i]`` for a 0-dim integer tensor ``i``, without reading ``i`` on the host."""
    return x.index_select(0, i.reshape(1)).squeeze(0)


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
    """The solution components stacked over ``t``, and the final state."""
    ns, m = len(state), t.shape[0] - 1

    def interval(t_lo: Tensor, t_hi: Tensor, x0: State) -> State:
        h = (t_hi - t_lo) / n

        def body(k: Tensor, *x: Tensor) -> tuple[Tensor, ...]:
            return (k + 1, *scheme.step(field, t_lo + k * h, h, x, params))

        return tuple(while_loop(lambda k, *_: k < n, body, (_counter(t), *x0))[1:])

    # Carried values must not alias each other or what the bodies capture.
    state = tuple(x.clone() for x in state)
    if m == 1:
        final = interval(t[0], t[1], state)
        return tuple(torch.stack([a, b]) for a, b in zip(state[:n_out], final)), final

    def outer(i: Tensor, *carry: Tensor) -> tuple[Tensor, ...]:
        x = interval(_at(t, i), _at(t, i + 1), carry[:ns])
        trajs = (a.index_copy(0, (i + 1).reshape(1), b.unsqueeze(0)) for a, b in zip(carry[ns:], x))
        return (i + 1, *x, *trajs)

    trajs = tuple(x.unsqueeze(0).expand(m + 1, *x.shape).contiguous() for x in state[:n_out])
    out = while_loop(lambda i, *_: i < m, outer, (_counter(t), *state, *trajs))[1:]
    return tuple(out[ns:]), tuple(out[:ns])


class LoopChain(torch.autograd.Function):
    """``apply(spec, t, n, probe, *state0, *params) -> (*trajectories, *aux_final)``.

    ``n`` is a 0-dim int64 tensor; ``probe`` a DriftMonitor leaf (or ``None``) whose gradient is
    the relative reconstruction error of the backward pass.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        spec: Spec, t: Tensor, n: Tensor, probe: Tensor | None, *tensors: Tensor
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
        n_p = len(saved) - ns - len(grads)
        state0, params = tuple(saved[:ns]), tuple(saved[ns : ns + n_p])
        outputs = saved[ns + n_p :]
        time_grad, m = bool(ctx.needs_input_grad[1]), t.shape[0] - 1
        g_out = tuple(g.contiguous() for g in grads[:n_out])

        def interval(t_lo: Tensor, t_hi: Tensor, carry: State) -> tuple[State, Tensor | None]:
            """Reverse the steps of one interval; ``carry`` is ``(*state, *cot, *param_cot)``."""
            h = (t_hi - t_lo) / n

            def body(k: Tensor, *c: Tensor) -> tuple[Tensor, ...]:
                k = k - 1
                x, a = c[:ns], c[ns : 2 * ns]
                acc, sums = c[2 * ns : 2 * ns + n_p], c[2 * ns + n_p :]
                prev, a_prev, a_t, a_h, a_p = scheme.reverse(
                    field, t_lo + k * h, h, x, a, params, time_grad=time_grad, vjp=_vjp
                )
                acc = tuple(torch.sub(s, torch.neg(d)) for s, d in zip(acc, a_p))  # s + d, fenced
                if time_grad:
                    sums = (sums[0] + a_t, sums[1] + k * a_t + a_h)
                return (k, *prev, *a_prev, *acc, *sums)

            sums0 = (torch.zeros_like(t_lo), torch.zeros_like(t_lo)) if time_grad else ()
            res = while_loop(lambda k, *_: k > 0, body, (n.clone(), *carry, *sums0))[1:]
            if not time_grad:
                return tuple(res), None
            sum_t, sum_h = res[-2:]
            return tuple(res[:-2]), torch.stack([sum_t - sum_h / n, sum_h / n])

        def add_outputs(carry: State, i: Tensor | int) -> State:
            """Add the cotangents of the outputs at ``t_i`` to those of the state."""
            at = (lambda g: g[i]) if isinstance(i, int) else (lambda g: _at(g, i))
            return (*(c + at(g) for c, g in zip(carry, g_out)), *carry[n_out:])

        # Carried values must not alias each other or what the bodies capture: clone.
        final = (*(y[-1] for y in outputs[:n_out]), *outputs[n_out:])
        cot = (*(g[-1] for g in g_out), *grads[n_out:])
        carry = tuple(x.clone() for x in (*final, *cot))
        carry += tuple(torch.zeros_like(p) for p in params)
        if m == 1:
            carry, grad_t = interval(t[0], t[1], carry)
            carry = (*carry[:ns], *add_outputs(carry[ns:], 0))
        else:

            def outer(i: Tensor, *c: Tensor) -> tuple[Tensor, ...]:
                lo = i - 1
                new, dt = interval(_at(t, lo), _at(t, i), c[: 2 * ns + n_p])
                new = (*new[:ns], *add_outputs(new[ns:], lo))
                if dt is None:
                    return (lo, *new)
                return (lo, *new, c[-1].index_add(0, torch.stack([lo, i]), dt))

            extra = (torch.zeros_like(t),) if time_grad else ()
            res = while_loop(lambda i, *_: i > 0, outer, (_counter(t, m), *carry, *extra))[1:]
            carry, grad_t = res[: 2 * ns + n_p], (res[-1] if time_grad else None)
        error = reconstruction_error(carry[:ns], state0) if ctx.has_probe else None
        return (None, grad_t, None, error, *carry[ns:])


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
    """Solve with ``n_steps`` equal steps in every interval of ``t``, as ``while_loop``s.

    Meant to be traced by ``torch.compile`` (``fullgraph=True`` works, forward and backward).

    Args:
        scheme: the reversible scheme (:class:`~mali_func.solvers.ALF`, ...).
        field: a pure field ``field(t, y, params) -> dy/dt`` over tuples (``_field.bind_field``);
            it must not mutate Python state (``while_loop`` bodies may not).
        t: 1-D output times.
        state0: the scheme's initial extended state (``scheme.init(...)``).
        params: the tensors the field reads; gradients are returned for them.
        n_steps: steps per interval: an ``int``, a ``SymInt`` or a 0-dim integer tensor.
        n_out: how many leading state components are the solution (recorded at every ``t_i``).
        gradient: must be ``"mali"`` (see the module docs).
        probe: a :class:`~mali_func.DriftMonitor` leaf that receives the reconstruction error.

    Returns:
        ``(trajectories, aux_final)`` as :func:`mali_func._engine.solve_reversible` returns them.
    """
    if torch.compiler.is_compiling() and functorch_config.donated_buffer:
        raise RuntimeError(
            "set torch._functorch.config.donated_buffer = False before compiling odeint: "
            "inductor in this torch corrupts while_loop gradients otherwise"
        )
    if gradient == "backprop":
        raise ValueError(
            "odeint_loop differentiates with MALI only: while_loop's own autograd gives wrong "
            "gradients in torch 2.13 when one carry feeds another (e.g. (z, logp) states)"
        )
    if not torch.is_grad_enabled() or not any(x.requires_grad for x in (t, *state0, *params)):
        # Inference: the forward loop alone (the autograd.Function is not needed, and dynamo
        # fails to bind it when nothing requires grad).
        trajs, final = _forward(scheme, field, t, n_steps, state0, params, n_out)
        return trajs, final[n_out:]
    if isinstance(n_steps, Tensor):
        n = n_steps.to(device=t.device, dtype=torch.int64).reshape(())
    else:
        n = torch.scalar_tensor(n_steps, dtype=torch.int64, device=t.device)
    out = LoopChain.apply((scheme, field, len(state0), n_out), t, n, probe, *state0, *params)
    return tuple(out[:n_out]), tuple(out[n_out:])
