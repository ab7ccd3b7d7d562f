"""``to_onnx``: export a model that calls :func:`mali_func.odeint`, then check the file."""

from __future__ import annotations

import os
from collections.abc import Sequence

import onnx
from torch import Tensor, nn

from ._report import ExportReport, graph_stats
from ._trace import export_file, inference_mode_of
from ._validate import validate
from ._verify import check_file, compare


def to_onnx(
    model: nn.Module,
    args: Tensor | tuple[Tensor, ...],
    path: str | os.PathLike[str],
    *,
    dynamic_batch: bool = True,
    opset: int | None = None,
    rtol: float = 1e-4,
    check: bool = True,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
) -> ExportReport:
    """Export ``model`` to an ONNX file with ``torch.onnx.export(dynamo=True)`` and check it.

    The model is traced in eval mode under :func:`torch.no_grad` (its training flag is restored
    afterwards). Every :func:`mali_func.odeint` call inside it must use a fixed grid given by
    ``n_steps`` (``step_size`` needs the values of ``t``, which tracing does not have); its
    integration is exported as one ONNX ``Scan`` loop whose body is a single step, so the graph
    does not grow with the number of steps, and no gradient machinery enters the file.

    Args:
        model: the module to export, e.g. a network holding a :class:`mali_func.ODEBlock`.
        args: an example input tensor, or a tuple of them (the positional arguments of
            ``model.forward``). Only shapes and dtypes are fixed by it, and its values are used
            for the check.
        path: the ``.onnx`` file to write; missing parent directories are created.
        dynamic_batch: make the first axis of every input (and so of the outputs) symbolic,
            named ``batch``; all inputs must then share their first-axis size.
        opset: the ONNX opset (at least 18); ``None`` takes the exporter's default.
        rtol: the largest relative error allowed between onnxruntime and torch, measured per
            output as ``max |ort - torch| / max |torch|``.
        check: run ``onnx.checker.check_model(full_check=True)`` and compare onnxruntime with
            torch on ``args`` (and, with a dynamic batch, at a second batch size).
        input_names, output_names: names for the graph's inputs and outputs.

    Returns:
        An :class:`ExportReport` with the file size, node counts, export time and errors.

    Raises:
        TypeError, ValueError: an argument is invalid (the message names it), or the model
            itself rejects ``args`` (e.g. ``odeint`` called without ``n_steps``).
        ExportError: the exporter failed, or the file fails the ONNX checker.
        ParityError: onnxruntime and torch differ by more than ``rtol``; the file is kept.
    """
    request = validate(
        model,
        args,
        path,
        dynamic_batch=dynamic_batch,
        opset=opset,
        rtol=rtol,
        check=check,
        input_names=input_names,
        output_names=output_names,
    )
    with inference_mode_of(request.model):
        # An eager run first: the model's own errors surface as themselves, not as export errors.
        request.model(*request.args)
        seconds = export_file(
            request.model,
            request.args,
            request.path,
            dynamic_batch=request.dynamic_batch,
            opset=request.opset,
            input_names=request.input_names,
            output_names=request.output_names,
        )
        parity = None
        if request.check:
            check_file(request.path)
            parity = compare(
                request.model,
                request.args,
                request.path,
                rtol=request.rtol,
                dynamic_batch=request.dynamic_batch,
            )
    proto = onnx.load(str(request.path), load_external_data=False)
    stats = graph_stats(proto)
    return ExportReport(
        path=request.path,
        file_bytes=request.path.stat().st_size,
        opset=stats.opset,
        nodes=stats.nodes,
        loops=stats.loops,
        total_nodes=stats.total_nodes,
        input_names=tuple(i.name for i in proto.graph.input),
        output_names=tuple(o.name for o in proto.graph.output),
        dynamic_batch=request.dynamic_batch,
        export_seconds=seconds,
        checked=parity is not None,
        batches=() if parity is None else parity.batches,
        max_abs_error=None if parity is None else parity.max_abs_error,
        max_rel_error=None if parity is None else parity.max_rel_error,
        rtol=request.rtol,
    )
