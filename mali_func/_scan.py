"""The export loop backend: :func:`torch._higher_order_ops.scan`, forward only.

A fixed grid's steps become one ``scan`` over ``n`` rows of width 0, so the graph stores nothing
per step and ONNX keeps one ``Scan`` node whose body is one step; the outputs at the output times
can be the outer scan's own outputs (:meth:`ScanLoops.fori_collect`). The adaptive controller runs
on ``while_loop`` as in compiled code (one ``Loop`` node, its trip count bounded by
``max_steps``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch._higher_order_ops import scan

from ._flat import (
    Cond,
    Count,
    Index,
    WhileBody,
    counter,
    flatten,
    tensors_of,
    unaliased,
    while_loop_collect,
)
from ._mode import Mode


class ScanLoops:
    """Export loops: ``scan`` over ``n`` rows of width 0 (the graph stores nothing per step)."""

    mode = Mode.EXPORT

    def fori(
        self, n: Count, body: Callable[[Any, Any], Any], carry: Any, *, reverse: bool = False,
        unroll: int = 1,
    ):  # fmt: skip
        if reverse:
            raise NotImplementedError("export traces the forward pass only")
        leaves, rebuild = flatten(carry)
        leaves = [x.contiguous() for x in leaves]  # body outputs are contiguous: so must init be
        like = leaves[0]
        rows = torch.empty((int(n), 0), dtype=like.dtype, device=like.device)

        def step(c: tuple[Tensor, list[Tensor]], row: Tensor) -> tuple[Any, Tensor]:
            j, xs = c
            out = tensors_of(body(j, rebuild(xs)))
            return (j + 1, unaliased(out, list(xs))), row.clone()

        (_, final), _ = scan(step, (counter(like), list(leaves)), rows)
        return rebuild(final)

    def fori_collect(
        self, n: Count, body: Callable[[Any, Any], tuple[Any, tuple[Tensor, ...]]], carry: Any
    ) -> tuple[Any, tuple[Tensor, ...]]:
        """Like :meth:`fori` with a ``body`` returning ``(carry, ys)``; also returns every
        iteration's ``ys`` stacked (``scan``'s own outputs: no buffer is carried)."""
        leaves, rebuild = flatten(carry)
        leaves = [x.contiguous() for x in leaves]
        like = leaves[0]
        rows = torch.empty((int(n), 0), dtype=like.dtype, device=like.device)

        def step(c: tuple[Tensor, list[Tensor]], row: Tensor) -> tuple[Any, Any]:
            j, xs = c
            new, ys = body(j, rebuild(xs))
            return (j + 1, unaliased(tensors_of(new), list(xs))), [y.clone() for y in ys]

        (_, final), ys = scan(step, (counter(like), list(leaves)), rows)
        return rebuild(final), tuple(ys)

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
        """The controller's ``while_loop`` (forward only), as compiled code runs it: ONNX keeps
        it as one ``Loop`` node, its trip count bounded by ``max_steps``."""
        return while_loop_collect(cond, body, carry, max_steps=max_steps, dtypes=dtypes)
