"""Tracing a model with ``torch.onnx.export(dynamo=True)`` and writing the ONNX file.

The model runs in eval mode under :func:`torch.no_grad`, so only its forward computation is
captured; inside :func:`mali_func.odeint`, export takes the forward-only ``scan`` path, which keeps
the integration loop one ONNX ``Scan`` node whatever the number of steps.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..backends._export_guard import forward_only
from ._counters import counters_held
from ._errors import ExportError

BATCH = "batch"
"""Name of the dynamic batch axis in the exported graph."""

_NOISY_LOGGERS = ("torch.onnx._internal.exporter._registration",)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's chatter that is about torch itself, not about the user's model."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec.*")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _identity(x: Any) -> Any:
    from onnxscript import opset18 as op  # torch.onnx's own dependency

    return op.Identity(x)


# The gradient guard on adaptive solves' outputs (mali_func.backends._export_guard) is an identity
# in ONNX.
_TRANSLATIONS: dict[Any, Any] = {forward_only._opoverload: _identity}


@contextlib.contextmanager
def inference_mode_of(model: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for the duration; the model's training flag is restored."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(training)


def _root_cause(err: BaseException) -> BaseException:
    """The end of a ``raise ... from`` chain: the model's own error, not the exporter's wrapper."""
    seen = {id(err)}
    while err.__cause__ is not None and id(err.__cause__) not in seen:
        err = err.__cause__
        seen.add(id(err))
    return err


def _dynamic_shapes(args: tuple[Tensor, ...]) -> tuple[dict[int, Any], ...]:
    batch = torch.export.Dim(BATCH)
    return tuple({0: batch} for _ in args)


STACK_TRACE = "pkg.torch.onnx.stack_trace"
"""The exporter's per-node metadata holding the Python stack that created the node: about half
of a small model's file, and the exporting machine's source paths, which a deployed file has no
use for."""


def _strip_stack_traces(graph: Any) -> None:
    """Drop :data:`STACK_TRACE` from every node of ``graph`` and of its loop bodies."""
    import onnx_ir  # installed with onnx's exporter dependencies (onnxscript)

    for node in onnx_ir.traversal.RecursiveGraphIterator(graph):
        node.metadata_props.pop(STACK_TRACE, None)


def export_file(
    model: nn.Module,
    args: tuple[Tensor, ...],
    path: Path,
    *,
    dynamic_batch: bool,
    opset: int | None,
    input_names: tuple[str, ...] | None,
    output_names: tuple[str, ...] | None,
) -> float:
    """Export ``model`` at ``args`` to ``path``; returns the seconds spent exporting and saving.

    Call it inside :func:`inference_mode_of`. Raises :class:`ExportError` with torch's reason
    when tracing or translation fails.
    """
    start = time.perf_counter()
    try:
        with _quiet(), counters_held(model, args):
            program = torch.onnx.export(
                model,
                args,
                dynamo=True,
                dynamic_shapes=_dynamic_shapes(args) if dynamic_batch else None,
                opset_version=opset,
                input_names=None if input_names is None else list(input_names),
                output_names=None if output_names is None else list(output_names),
                verbose=False,
                optimize=True,
                custom_translation_table=_TRANSLATIONS,
            )
    except Exception as err:
        root = _root_cause(err)
        reason = str(err) if root is err else f"{type(root).__name__}: {root}"
        raise ExportError(f"torch.onnx.export could not export the model: {reason}") from err
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    _strip_stack_traces(program.model.graph)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(path)
    return time.perf_counter() - start
