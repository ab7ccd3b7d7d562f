"""The export loop backend: :func:`torch._higher_order_ops.scan`, forward only.

A fixed grid's steps become one ``scan`` over the step indices, so ONNX keeps one ``Scan`` node
whose body is one step, and the graph stores nothing per step; the outputs at several output
times ride in a carried buffer (a ``scan``'s own stacked outputs of a dynamic batch size cannot be
lowered by AOTInductor in torch 2.13: ``KeyError`` on the batch symbol). The adaptive controller
runs on ``while_loop`` as in compiled code (one ``Loop`` node, its trip count bounded by
``max_steps``).

The step index is scanned over, not carried, and the body's output of its own (``scan`` needs
one) is a floating row of width 0: ``scan``'s autograd mishandles integer carries and outputs, and
a program exported in grad mode, or called with grad on, differentiates the scan.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch._higher_order_ops import scan

from ._flat import Count, TracedWhile, flatten, tensors_of, unaliased
from ._mode import Mode


class ScanLoops(TracedWhile):
    """Export loops: ``scan`` over the step indices (the graph stores nothing per step);
    ``while_`` is the compiled backend's ``while_loop`` (one ONNX ``Loop`` node, its trip count
    bounded by ``max_steps``)."""

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
        steps = torch.arange(int(n), dtype=torch.int64, device=like.device)
        rows = torch.empty((int(n), 0), dtype=like.dtype, device=like.device)

        def step(xs: list[Tensor], inputs: list[Tensor]) -> tuple[list[Tensor], Tensor]:
            j, row = inputs
            new = body(j, rebuild(xs))
            return unaliased(tensors_of(new), list(xs)), row.clone()

        final, _ = scan(step, list(leaves), [steps, rows])
        return rebuild(final)
