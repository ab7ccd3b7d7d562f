"""Terminal events under :mod:`torch.func` transforms: each sample searched on its own.

The event search (:mod:`mali_func._events`) reads the solution on the host, which ``vmap``'s
batched tensors do not allow. Under a transform the whole event solve therefore runs inside an
:class:`torch.autograd.Function` whose ``vmap`` rule takes the samples one at a time, each an
ordinary eager event solve (its own bracket, its own event time, and the same clear error when
its event function never crosses zero). Its backward recomputes that eager solve with a graph and
pulls the cotangents through it (the implicit function theorem's gradient of
:func:`mali_func._events._rerouted`), again per sample under ``vmap``; so ``vmap(grad(...))``
gives per-sample gradients of event times. The cost: the event solve twice for a gradient, and
one sample at a time.

The field's and the event function's parameters (``nn.Module`` s) are inputs of the Function and
reach the eager solve through :func:`torch.func.functional_call`, so gradients flow to them and
no batched tensor leaks into the eager code; a plain callable must read no tensor of an outer
transform (pass them through ``args``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

Run = Callable[..., tuple[Tensor, ...]]


def _sample(x: Any, dim: int | None, b: int) -> Any:
    return x.select(dim, b) if isinstance(x, Tensor) and dim is not None else x


def _per_sample(apply: Callable[..., tuple[Tensor, ...]], info: Any, in_dims: tuple[Any, ...],
                args: tuple[Any, ...]) -> tuple[tuple[Tensor, ...], tuple[int, ...]]:  # fmt: skip
    """A ``vmap`` rule: ``apply`` on each sample, the results stacked along dimension 0."""
    rows = [apply(*(_sample(a, d, b) for a, d in zip(args, in_dims)))
            for b in range(info.batch_size)]  # fmt: skip
    out = tuple(torch.stack(column) for column in zip(*rows))
    return out, (0,) * len(out)


class EagerSolve(torch.autograd.Function):
    """``apply(run, *tensors)``: ``run(*tensors)`` in eager code (host reads allowed)."""

    @staticmethod
    def forward(run: Run, *tensors: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        return tuple(x.detach() for x in run(*tensors))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.run = inputs[0]
        ctx.save_for_backward(*inputs[1:])

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        tensors = ctx.saved_tensors
        return (None, *EagerVJP.apply(ctx.run, len(tensors), *tensors, *grads))

    @staticmethod
    def vmap(info: Any, in_dims: tuple[Any, ...], run: Run, *tensors: Tensor) -> Any:
        return _per_sample(EagerSolve.apply, info, in_dims, (run, *tensors))


class EagerVJP(torch.autograd.Function):
    """``apply(run, n, *tensors, *cotangents)``: the VJP of ``run`` at ``tensors``, recomputed."""

    @staticmethod
    def forward(run: Run, n: int, *args: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        tensors, cots = args[:n], args[n:]
        with torch.enable_grad():
            leaves = tuple(x.detach().requires_grad_(x.is_floating_point()) for x in tensors)
            outs = run(*leaves)
            pairs = [(o, c) for o, c in zip(outs, cots) if o.requires_grad]
            wrt = [x for x in leaves if x.requires_grad]
            got = iter(torch.autograd.grad([o for o, _ in pairs], wrt, [c for _, c in pairs],
                                           allow_unused=True))  # fmt: skip
        grads = [next(got) if x.requires_grad else None for x in leaves]
        return tuple(torch.zeros_like(x) if g is None else g for x, g in zip(tensors, grads))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> Any:  # type: ignore[override]
        raise NotImplementedError(
            "second derivatives of event times under torch.func transforms are not supported; "
            "differentiate the event solve once, or call it eagerly"
        )

    @staticmethod
    def vmap(info: Any, in_dims: tuple[Any, ...], run: Run, n: int, *args: Tensor) -> Any:
        return _per_sample(EagerVJP.apply, info, in_dims, (run, n, *args))


def _module_tensors(module: Any) -> tuple[list[str], list[Tensor]]:
    if not isinstance(module, nn.Module):
        return [], []
    named = [*module.named_parameters(), *module.named_buffers()]
    return [n for n, _ in named], [x for _, x in named]


def events_per_sample(eager: Callable[..., tuple[Tensor, Any]], func: Any, y0: Any, t: Tensor,
                      event_fn: Any, args: tuple[Tensor, ...]) -> tuple[Tensor, Any]:  # fmt: skip
    """``eager(func, y0, t, event_fn, args)``, the eager event solve, through
    :class:`EagerSolve`."""
    tuple_state = isinstance(y0, (tuple, list))
    parts = tuple(y0) if tuple_state else (y0,)
    f_names, f_tensors = _module_tensors(func)
    e_names, e_tensors = _module_tensors(event_fn)
    sizes = (len(parts), 1, len(args), len(f_tensors), len(e_tensors))

    def run(*tensors: Tensor) -> tuple[Tensor, ...]:
        cut, pieces = 0, []
        for size in sizes:
            pieces.append(tensors[cut : cut + size])
            cut += size
        parts_, (t_,), args_, f_t, e_t = pieces
        field, event, extra = func, event_fn, tuple(args_)
        if f_names:  # the field's parameters travel as args: the solve sees every tensor
            n_user, extra = len(args_), (*args_, *f_t)

            def field(s: Tensor, y: Any, *a: Tensor) -> Any:
                state = dict(zip(f_names, a[n_user:]))
                return torch.func.functional_call(func, state, (s, y, *a[:n_user]))

        if e_names:
            e_state = dict(zip(e_names, e_t))

            def event(s: Tensor, y: Any) -> Tensor:
                return torch.func.functional_call(event_fn, e_state, (s, y))

        start = tuple(parts_) if tuple_state else parts_[0]
        event_t, solution = eager(field, start, t_, event, extra)
        sol = tuple(solution) if tuple_state else (solution,)
        return (event_t, *sol)

    out = EagerSolve.apply(run, *parts, t, *args, *f_tensors, *e_tensors)
    return out[0], (tuple(out[1:]) if tuple_state else out[1])
