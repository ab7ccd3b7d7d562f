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
from typing import TYPE_CHECKING

from torch import Tensor, nn
from torch.utils._pytree import tree_leaves

if TYPE_CHECKING:
    import numpy as np
    import onnx
    import onnxruntime as ort

from ._batch import resized, second_batch
from ._deps import require
from ._errors import ExportError, ParityError


@dataclass(frozen=True)
class Parity:
    """Largest errors over every output at every compared batch size."""

    batches: tuple[int, ...]
    max_abs_error: float
    max_rel_error: float


def check_file(path: Path) -> None:
    """Run ``onnx.checker.check_model(full_check=True)``; raise :class:`ExportError` if it fails."""
    onnx = require("onnx")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (OSError, onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise ExportError(f"the exported file {path} fails the ONNX checker: {err}") from err


def load_model(path: Path) -> onnx.ModelProto:
    """The graph of ``path``, without external weights.

    Raises :class:`ExportError` naming the file if it is missing, truncated or not ONNX.
    """
    onnx = require("onnx")
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (OSError, DecodeError) as err:
        raise ExportError(f"cannot read the ONNX file {path}: {err}") from err
    if not proto.HasField("graph"):
        raise ExportError(f"the ONNX file {path} holds no graph (empty or truncated?)")
    return proto


def session(path: Path) -> ort.InferenceSession:
    """An onnxruntime CPU session for ``path``.

    Raises :class:`ExportError` naming the file if onnxruntime cannot load it (missing,
    truncated, not ONNX).
    """
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no notes about unused initializers
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's errors derive from Exception only
        raise ExportError(f"onnxruntime cannot load the ONNX file {path}: {err}") from err


def _run(sess: ort.InferenceSession, feed: dict[str, np.ndarray], path: Path) -> list:
    try:
        return sess.run(None, feed)
    except Exception as err:  # onnxruntime's errors derive from Exception only
        shapes = ", ".join(f"{name} {list(a.shape)}" for name, a in feed.items())
        raise ExportError(f"onnxruntime cannot run {path} on inputs {shapes}: {err}") from err


def _errors(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(max absolute, max relative) difference; mismatched NaN or infinity counts as infinite."""
    import numpy as np

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
    sess = session(path)
    names = [i.name for i in sess.get_inputs()]
    if len(names) != len(args):
        raise ExportError(
            f"the exported graph takes {len(names)} inputs but the model was given {len(args)}"
        )
    variants = [args]
    if dynamic_batch:
        variants.append(resized(args, second_batch(args[0].shape[0])))
    worst_abs = worst_rel = 0.0
    for inputs in variants:
        size = inputs[0].shape[0] if inputs[0].ndim else None
        refs = [x for x in tree_leaves(model(*inputs)) if isinstance(x, Tensor)]
        feed = {n: a.detach().cpu().numpy() for n, a in zip(names, inputs)}
        outs = _run(sess, feed, path)
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
