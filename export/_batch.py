"""Keeping the batch axis dynamic: the batch size to trace at, and the axes the file really has.

``torch.export`` keeps the batch axis symbolic only while nothing ties it to a fixed size. A batch
size equal to another size of the model (the width of an ODE state, a side of a weight) can be
unified with it while tracing; the ONNX exporter then silently refines the axis to that constant
and writes a file that takes one batch size only. So the batch is traced at a size that no input,
parameter, buffer or module output uses, and the written file's axes are read back: a dynamic axis
is a ``dim_param``, a fixed one a ``dim_value``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves

if TYPE_CHECKING:
    import onnx

Dim = int | str | None
"""One axis of a graph input or output: a fixed size, a symbol, or unknown."""


def second_batch(size: int) -> int:
    """The other batch size a dynamic-batch file is checked at: 1, or 3 when the example has 1."""
    return 1 if size > 1 else 3


def resized(args: tuple[Tensor, ...], size: int) -> tuple[Tensor, ...]:
    """``args`` with ``size`` samples along the first axis, repeating the example's samples."""
    index = torch.arange(size) % args[0].shape[0]
    return tuple(a[index.to(a.device)] for a in args)


def _sizes(tensors: Iterable[object]) -> set[int]:
    return {int(d) for t in tensors if isinstance(t, Tensor) for d in t.shape}


def taken_sizes(model: nn.Module, args: tuple[Tensor, ...]) -> frozenset[int]:
    """Sizes the model fixes: every axis of its parameters and buffers, the inputs' other axes."""
    sizes = _sizes(model.parameters()) | _sizes(model.buffers())
    sizes |= {int(d) for a in args for d in a.shape[1:]}
    return frozenset(sizes)


def observed_sizes(model: nn.Module, args: tuple[Tensor, ...]) -> frozenset[int]:
    """Run ``model(*args)`` once; return every size of the tensors its submodules took and gave.

    The run is also the eager check of the example: the model's own errors surface unchanged.
    """
    seen: set[int] = set()

    def hook(_module: nn.Module, inputs: object, output: object) -> None:
        seen.update(_sizes(tree_leaves(inputs)) | _sizes(tree_leaves(output)))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        model(*args)
    finally:
        for handle in handles:
            handle.remove()
    return frozenset(seen)


def trace_batches(
    batch: int, taken: frozenset[int], observed: frozenset[int], count: int = 2
) -> tuple[int, ...]:
    """Up to ``count`` batch sizes to trace at, best first.

    The example's own ``batch`` comes first unless it is 1 (which tracing specializes) or a size
    the model fixes; then the smallest sizes from 2 up that no tensor of the model was seen with.
    """
    first = (batch,) if batch >= 2 and batch not in taken else ()
    avoid = taken | observed | {batch}
    spare = (n for n in itertools.count(2) if n not in avoid)
    return first + tuple(itertools.islice(spare, count - len(first)))


def _dims(value: onnx.ValueInfoProto) -> list[Dim] | None:
    """The axes of a graph input or output; ``None`` when the file gives no shape."""
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    out: list[Dim] = []
    for dim in tensor.shape.dim:
        kind = dim.WhichOneof("value")
        out.append(dim.dim_value if kind == "dim_value" else dim.dim_param or None)
    return out


def _shape_text(dims: list[Dim]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _batch_is_fixed(dims: list[Dim] | None) -> bool:
    return dims is not None and (not dims or isinstance(dims[0], int))


def has_dynamic_batch(proto: onnx.ModelProto) -> bool:
    """Whether the first axis of every graph input is symbolic (or unknown) in the file."""
    inputs = proto.graph.input
    return bool(inputs) and not any(_batch_is_fixed(_dims(v)) for v in inputs)


def fixed_axes(proto: onnx.ModelProto, traced: int) -> list[str]:
    """What in the file contradicts a dynamic batch traced at size ``traced``; empty when nothing.

    Every input's first axis must be symbolic, and an output with no symbolic axis must have
    no axis of size ``traced``: that is the batch baked in (or, rarely, a model size equal to it,
    which tracing at another size tells apart).
    """
    problems = []
    for value in proto.graph.input:
        dims = _dims(value)
        if _batch_is_fixed(dims):
            assert dims is not None
            problems.append(f"input {value.name!r} has the fixed shape {_shape_text(dims)}")
    for value in proto.graph.output:
        dims = _dims(value)
        if dims is not None and traced in dims and all(isinstance(d, int) for d in dims):
            problems.append(f"output {value.name!r} has the fixed shape {_shape_text(dims)}")
    return problems
