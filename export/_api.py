"""``to_onnx``: export a model that calls :func:`mali_func.odeint`, then check the file."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

from torch import Tensor, nn

from ._batch import (
    fixed_axes,
    has_dynamic_batch,
    observed_sizes,
    resized,
    second_batch,
    taken_sizes,
    trace_batches,
)
from ._deps import require
from ._errors import ExportError
from ._report import ExportReport, graph_stats
from ._trace import export_file, inference_mode_of
from ._validate import Request, validate
from ._verify import check_file, compare, load_model


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
            named ``batch``; all inputs must then share their first-axis size, and the model
            must run at another batch size too. The model is traced at a batch size that none
            of its other sizes equals (tracing can tie a batch size equal to, say, a state
            width to that width), and the written file's axes are checked to be symbolic.
        opset: the ONNX opset (at least 18); ``None`` takes the exporter's default.
        rtol: the largest relative error allowed between onnxruntime and torch, measured per
            output as ``max |ort - torch| / max |torch|``.
        check: run ``onnx.checker.check_model(full_check=True)`` and compare onnxruntime with
            torch on ``args`` (and, with a dynamic batch, at a second batch size).
        input_names: names for the graph's inputs.
        output_names: names for the graph's outputs.

    Returns:
        An :class:`ExportReport` with the file size, node counts, export time and errors.

    Raises:
        TypeError, ValueError: an argument is invalid (the message names it), or the model
            itself rejects ``args`` (e.g. ``odeint`` called without ``n_steps``), or, with
            ``dynamic_batch``, it fails at the second batch size (``ValueError`` naming ``args``).
        ExportError: the exporter failed, the file fails the ONNX checker, or the exporter
            fixed the batch axis that ``dynamic_batch`` asked for (the file is then removed).
        ParityError: onnxruntime and torch differ by more than ``rtol``; the file is kept.
        ImportError: ``onnx`` or (with ``check``) ``onnxruntime`` is not installed; the message
            names the extra (``pip install 'mali-func[onnx]'``).
    """
    require("onnx")  # torch.onnx.export(dynamo=True) needs it too
    if check:
        require("onnxruntime")
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
        # Eager runs first: the model's own errors surface as themselves, not as export errors.
        observed = _run_eagerly(request)
        seconds = _export(request, observed)
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
    proto = load_model(request.path)
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
        dynamic_batch=has_dynamic_batch(proto),
        export_seconds=seconds,
        checked=parity is not None,
        batches=() if parity is None else parity.batches,
        max_abs_error=None if parity is None else parity.max_abs_error,
        max_rel_error=None if parity is None else parity.max_rel_error,
        rtol=request.rtol,
    )


def _run_eagerly(request: Request) -> frozenset[int]:
    """Run the model on the example (and, for a dynamic batch, at a second batch size).

    Returns the sizes of the tensors its submodules saw. Raises the model's own error at the
    example's shape, and ``ValueError`` naming ``args`` if only the second batch size fails.
    """
    observed = observed_sizes(request.model, request.args)
    if request.dynamic_batch:
        batch = request.args[0].shape[0]
        other = second_batch(batch)
        try:
            request.model(*resized(request.args, other))
        except Exception as err:
            raise ValueError(
                f"args: with dynamic_batch=True the first axis of every input is the batch axis, "
                f"but the model fails when it has {other} samples instead of {batch} "
                f"({type(err).__name__}: {err}); give inputs with the batch axis first, or pass "
                "dynamic_batch=False to export these shapes only"
            ) from err
    return observed


def _export(request: Request, observed: frozenset[int]) -> float:
    """Write the file; with a dynamic batch, make sure the file's batch axis is dynamic.

    The batch is traced at sizes from :func:`trace_batches` until the file's axes are symbolic.
    Returns the seconds spent exporting. Raises :class:`ExportError`, the file removed, when
    every try fixes the batch axis.
    """
    export = functools.partial(
        export_file,
        request.model,
        path=request.path,
        dynamic_batch=request.dynamic_batch,
        opset=request.opset,
        input_names=request.input_names,
        output_names=request.output_names,
    )
    if not request.dynamic_batch:
        return export(request.args)
    batch = request.args[0].shape[0]
    taken = taken_sizes(request.model, request.args)
    seconds, tries = 0.0, []
    for size in trace_batches(batch, taken, observed):
        try:
            seconds += export(request.args if size == batch else resized(request.args, size))
        except ExportError as err:
            if size == batch:
                raise
            raise ExportError(
                f"{err} (traced at batch size {size}, not the example's {batch}: one that no "
                f"size of the model uses, so the batch axis stays symbolic; if the model works "
                f"at batch size {batch} only, pass dynamic_batch=False)"
            ) from err
        problems = fixed_axes(load_model(request.path), size)
        if not problems:
            return seconds
        tries.append(f"traced at batch size {size}, {' and '.join(problems)}")
    request.path.unlink(missing_ok=True)
    raise ExportError(
        "dynamic_batch=True, but the exporter fixed the batch axis: "
        + "; ".join(tries)
        + ". The model ties the batch size to a constant while tracing (e.g. it converts a size "
        "to a Python number, or reshapes to a literal batch size). Pass dynamic_batch=False to "
        f"export a file for batch size {batch} only, or make the model's shapes follow the "
        "input's first axis."
    )
