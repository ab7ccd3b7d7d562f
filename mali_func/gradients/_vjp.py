"""Two interchangeable vector-Jacobian products for the engine's backward pass.

:func:`torch.func.vjp` composes with every :mod:`torch.func` transform and is what the engine uses
under ``vmap``, ``grad``, ``jacrev`` and ``torch.compile``. In plain eager code it costs about a
quarter more than ordinary autograd on a small MLP (functorch wrappers, and
:func:`torch.func.functional_call` to substitute parameters), so there the engine uses
:func:`autograd_vjp`, which records the function with autograd on the tensors themselves (a
module's own parameters stay in place, so the module is called directly) and pulls back with
:func:`torch.autograd.grad`. Both return ``(output, pullback)`` with ``pullback(cotangent)``
giving cotangents shaped like the primals.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..backends._mode import is_concrete
from ..schemes._scheme import VJP


def _flatten(primals: tuple[Any, ...]) -> tuple[list[Tensor], list[int]]:
    """Flatten primals that are tensors or flat tuples of tensors (the engine's only kinds)."""
    flat: list[Tensor] = []
    sizes: list[int] = []
    for p in primals:
        if isinstance(p, Tensor):
            flat.append(p)
            sizes.append(-1)
        else:
            flat.extend(p)
            sizes.append(len(p))
    return flat, sizes


def _unflatten(flat: list[Any], sizes: list[int]) -> tuple[Any, ...]:
    out: list[Any] = []
    i = 0
    for n in sizes:
        if n < 0:
            out.append(flat[i])
            i += 1
        else:
            out.append(tuple(flat[i : i + n]))
            i += n
    return tuple(out)


def autograd_vjp(fn: Callable[..., Any], *primals: Any) -> tuple[Any, Callable[[Any], Any]]:
    """``torch.func.vjp`` for ordinary eager tensors, through :func:`torch.autograd.grad`.

    Each primal is a tensor or a flat tuple of tensors, and so is the output. Every primal but the
    last (states, times) gets a detached copy that requires grad, so the pullback never reaches
    into the graph they came from. In the last primal (the parameters, by the engine's
    convention) a leaf that requires grad is used as it is, once (so a module's parameters keep
    their identity and the module is called directly); any other tensor that requires grad (one
    computed from another input, such as a buffer ``b + 1``, or the same tensor passed twice)
    gets its own detached copy, so that each input's cotangent is its own partial derivative and
    not also the part that flows through another input. Tensors that do not require grad get no
    cotangent, which comes back as ``None``.
    """
    flat, sizes = _flatten(primals)
    always = len(flat) - (1 if sizes[-1] < 0 else sizes[-1])
    kept: set[int] = set()

    def leaf(i: int, x: Tensor) -> Tensor:
        if i >= always and (not x.requires_grad or (x.grad_fn is None and id(x) not in kept)):
            kept.add(id(x))
            return x
        return x.detach().requires_grad_()

    leaves = [leaf(i, x) for i, x in enumerate(flat)]
    with torch.enable_grad():
        out = fn(*_unflatten(leaves, sizes))
    single = isinstance(out, Tensor)
    out_flat = [out] if single else list(out)
    wanted = [i for i, x in enumerate(leaves) if x.requires_grad]
    inputs = [leaves[i] for i in wanted]

    def pullback(cotangent: Any) -> tuple[Any, ...]:
        cot_flat = [cotangent] if single else list(cotangent)
        # Outputs that do not depend on the inputs (a field constant in y) carry no gradient.
        live = [(o, c) for o, c in zip(out_flat, cot_flat) if o.requires_grad]
        if not live:
            grads = tuple(torch.zeros_like(x) for x in inputs)
        else:
            grads = torch.autograd.grad(
                [o for o, _ in live],
                inputs,
                [c for _, c in live],
                allow_unused=True,
                materialize_grads=True,
            )
        result: list[Any] = [None] * len(leaves)
        for i, g in zip(wanted, grads):
            result[i] = g
        return _unflatten(result, sizes)

    detached = [o.detach() for o in out_flat]
    return (detached[0] if single else tuple(detached)), pullback


def choose_vjp(tensors: tuple[Tensor, ...]) -> VJP:
    """:func:`autograd_vjp` for plain eager tensors, :func:`torch.func.vjp` otherwise."""
    if all(is_concrete(x) for x in tensors):
        return autograd_vjp
    return torch.func.vjp
