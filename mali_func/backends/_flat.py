"""Flat carries and the controller's ``while_loop``: what the compiled and export backends share.

:func:`torch._higher_order_ops.while_loop` and :func:`~torch._higher_order_ops.scan` carry flat
tuples of tensors; a solve's carries are pytrees (states, outputs, accumulators) with ``None``
leaves for what is not carried. :func:`flatten` gives a pytree's tensors and the function that
rebuilds it. :class:`TracedWhile` is ``while_`` on ``while_loop``: the entries a trial keeps (the
records of accepted steps) go to slots ``0 .. count - 1`` of buffers of ``max_steps + 1`` rows,
which compiled code and ONNX (one ``Loop`` node) both run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch._higher_order_ops import while_loop
from torch.utils._pytree import tree_flatten, tree_unflatten

Count = int | torch.SymInt | Tensor
Index = int | Tensor
Cond = Callable[[Any], Tensor]
WhileBody = Callable[[Any], tuple[Any, tuple[Tensor, ...], Tensor]]


def take(x: Tensor, j: Index) -> Tensor:
    """``x[j]``; for a 0-dim index tensor without reading it on the host (also under vmap)."""
    if isinstance(j, int):
        return x[j]
    return x.index_select(0, j.reshape(1)).squeeze(0)


def unaliased(new: Sequence[Tensor], old: Sequence[Tensor]) -> list[Tensor]:
    """``new``, with a copy of each tensor that is one of ``old`` or an earlier one of ``new``:
    ``scan`` forbids body outputs that alias its inputs or each other, ``torch.compile`` one
    tensor passed twice to a Function, and a Function returning an input as it is cannot save
    it."""
    out: list[Tensor] = []
    for x in new:
        out.append(x.clone() if any(x is y for y in (*old, *out)) else x)
    return out


def flatten(tree: Any) -> tuple[list[Tensor], Callable[[Any], Any]]:
    """The tensors of a pytree (``None`` leaves are structure, not carried) and its rebuilder."""
    leaves, spec = tree_flatten(tree)
    where = [i for i, x in enumerate(leaves) if x is not None]

    def rebuild(tensors: Any) -> Any:
        full: list[Any] = [None] * len(leaves)
        for i, x in zip(where, tensors):
            full[i] = x
        return tree_unflatten(full, spec)

    return [leaves[i] for i in where], rebuild


def tensors_of(tree: Any) -> list[Tensor]:
    return [x for x in tree_flatten(tree)[0] if x is not None]


def counter(like: Tensor, value: Count = 0) -> Tensor:
    if isinstance(value, Tensor):
        return value.to(device=like.device, dtype=torch.int64).reshape(()).clone()
    return torch.full((), value, dtype=torch.int64, device=like.device)


class TracedWhile:
    """``while_`` on :func:`while_loop` over flat carries (compile and export): kept entries go to
    slots ``0 .. count - 1`` of buffers of ``max_steps + 1``."""

    def prepare(self) -> None:
        """Called before a loop is traced (the compiled backend's workarounds)."""

    def while_(
        self,
        cond: Cond,
        body: WhileBody,
        carry: Any,
        *,
        max_steps: int,
        dtypes: tuple[torch.dtype, ...],
        check_every: int = 8,
    ) -> tuple[Any, tuple[Tensor, ...], Index]:
        self.prepare()
        leaves, rebuild = flatten(carry)
        n_c = len(leaves)
        like = leaves[0]
        buffers = [torch.zeros(max_steps + 1, dtype=d, device=like.device) for d in dtypes]

        def test(it: Tensor, count: Tensor, *xs: Tensor) -> Tensor:
            return (it < max_steps) & cond(rebuild(xs[:n_c]))

        def step(it: Tensor, count: Tensor, *xs: Tensor) -> tuple[Tensor, ...]:
            new, entry, keep = body(rebuild(xs[:n_c]))
            slot = torch.where(keep, count, max_steps).reshape(1)
            bufs = (b.index_copy(0, slot, e.reshape(1)) for b, e in zip(xs[n_c:], entry))
            return (it + 1, count + keep.long(), *tensors_of(new), *bufs)

        contiguous = (x.clone(memory_format=torch.contiguous_format) for x in leaves)
        init = (counter(like), counter(like), *contiguous, *buffers)
        res = while_loop(test, step, init)
        return rebuild(res[2 : 2 + n_c]), tuple(res[2 + n_c :]), res[1]
