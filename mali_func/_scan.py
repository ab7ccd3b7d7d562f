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

from ._flat import Count, TracedWhile, counter, flatten, tensors_of, unaliased
from ._mode import Mode


class ScanLoops(TracedWhile):
    """Export loops: ``scan`` over ``n`` rows of width 0 (the graph stores nothing per step);
    ``while_`` is the compiled backend's ``while_loop`` (one ONNX ``Loop`` node, its trip count
    bounded by ``max_steps``)."""

    mode = Mode.EXPORT

    def fori(
        self, n: Count, body: Callable[[Any, Any], Any], carry: Any, *, reverse: bool = False,
        unroll: int = 1,
    ):  # fmt: skip
        if reverse:
            raise NotImplementedError("export traces the forward pass only")
        return self.fori_collect(n, lambda j, c: (body(j, c), ()), carry)[0]

    def fori_collect(
        self, n: Count, body: Callable[[Any, Any], tuple[Any, tuple[Tensor, ...]]], carry: Any
    ) -> tuple[Any, tuple[Tensor, ...]]:
        """Like :meth:`fori` with a ``body`` returning ``(carry, ys)``; also returns every
        iteration's ``ys`` stacked (``scan``'s own outputs: no buffer is carried)."""
        leaves, rebuild = flatten(carry)
        leaves = [x.contiguous() for x in leaves]  # body outputs are contiguous: so must init be
        like = leaves[0]
        rows = torch.empty((int(n), 0), dtype=like.dtype, device=like.device)

        def step(c: tuple[Tensor, list[Tensor]], row: Tensor) -> tuple[Any, Any]:
            j, xs = c
            new, ys = body(j, rebuild(xs))
            # scan's body needs at least one output of its own: the row (width 0) is one.
            ys = [y.clone() for y in ys] or row.clone()
            return (j + 1, unaliased(tensors_of(new), list(xs))), ys

        (_, final), ys = scan(step, (counter(like), list(leaves)), rows)
        return rebuild(final), tuple(ys) if isinstance(ys, list) else ()
