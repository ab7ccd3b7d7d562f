"""Checks of a written ONNX file: the ONNX checker, then onnxruntime against torch.

The comparison runs the model in torch (eval mode, no autograd) and the file in onnxruntime on the
same inputs and measures, for each output, the largest absolute difference relative to the
largest magnitude of torch's output. With a dynamic batch axis it also runs a second batch size,
built by repeating the example's samples, so a batch size baked into the graph is caught.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves

from ._errors import ExportError, ParityError


@dataclass(frozen=True)
class Parity:
    """Largest errors over every output at every compared batch size."""

    batches: tuple[int, ...]
    max_abs_error: float
    max_rel_error: float


def check_file(path: Path) -> None:
    """Run ``onnx.checker.check_model(full_check=True)``; raise :class:`ExportError` if it fails."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise ExportError(f"the exported file {path} fails the ONNX checker: {err}") from err


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no notes about unused initializers
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _resized(args: tuple[Tensor, ...], size: int) -> tuple[Tensor, ...]:
    index = torch.arange(size) % args[0].shape[0]
    return tuple(a[index.to(a.device)] for a in args)


def _errors(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(max absolute, max relative) difference; mismatched NaN or infinity counts as infinite."""
    out64, ref64 = out.astype(np.float64), ref.astype(np.float64)
    same = (out64 == ref64) | (np.isnan(out64) & np.isnan(ref64))
    with np.errstate(invalid="ignore"):
        diff = np.where(same, 0.0, np.abs(out64 - ref64))
    abs_err = float(np.max(diff, initial=0.0))
    if math.isnan(abs_err):
        abs_err = math.inf
    finite = np.abs(ref64[np.isfinite(ref64)])
    scale = float(np.max(finite, initial=0.0)) or 1.0
    return abs_err, abs_err / scale


def compare(
    model: nn.Module, args: tuple[Tensor, ...], path: Path, *, rtol: float, dynamic_batch: bool
) -> Parity:
    """Compare onnxruntime with torch; raise :class:`ParityError` beyond ``rtol``.

    Call it inside :func:`mali_func.export._trace.inference_mode_of`.
    """
    session = _session(path)
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(args):
        raise ExportError(
            f"the exported graph takes {len(names)} inputs but the model was given {len(args)}"
        )
    variants = [args]
    if dynamic_batch:
        variants.append(_resized(args, 1 if args[0].shape[0] > 1 else 3))
    worst_abs = worst_rel = 0.0
    for inputs in variants:
        size = inputs[0].shape[0] if inputs[0].ndim else None
        refs = [x for x in tree_leaves(model(*inputs)) if isinstance(x, Tensor)]
        feed = {n: a.detach().cpu().numpy() for n, a in zip(names, inputs)}
        outs = session.run(None, feed)
        if len(outs) != len(refs):
            raise ExportError(f"onnxruntime returned {len(outs)} outputs, torch {len(refs)}")
        for i, (out, ref_t) in enumerate(zip(outs, refs)):
            ref = ref_t.detach().cpu().numpy()
            if out.shape != ref.shape:
                raise ParityError(
                    path=str(path),
                    batch=size,
                    output=i,
                    max_rel_error=math.inf,
                    max_abs_error=math.inf,
                    rtol=rtol,
                    detail=f"shape {tuple(out.shape)} from onnxruntime, {tuple(ref.shape)} "
                    "from torch",
                )
            abs_err, rel_err = _errors(out, ref)
            if not rel_err <= rtol:
                raise ParityError(
                    path=str(path),
                    batch=size,
                    output=i,
                    max_rel_error=rel_err,
                    max_abs_error=abs_err,
                    rtol=rtol,
                )
            worst_abs, worst_rel = max(worst_abs, abs_err), max(worst_rel, rel_err)
    sizes = tuple(v[0].shape[0] for v in variants if v[0].ndim)
    return Parity(batches=sizes, max_abs_error=worst_abs, max_rel_error=worst_rel)
