"""The ONNX rows of ``benchmarks/extras.py``: the digits classifier exported with
``mali_func.export.to_onnx``, onnxruntime (one intra-op thread) against torch eager, median
latency and the largest difference between their outputs."""

from __future__ import annotations

import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _common import timed


def onnx_latency(quick: bool, batch: int) -> dict[str, Any]:
    import onnxruntime as ort

    from mali_func.export import to_onnx

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    from digits_parts import DigitsModel, load_digits_split

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = DigitsModel(n_steps=6).eval()
    x = load_digits_split()["x_test"][:batch]
    repeats = (50 if quick else 200) if batch == 1 else (5 if quick else 30)

    def median(fn: Callable[[], object]) -> float:
        for _ in range(3):
            fn()
        return statistics.median(timed(fn) for _ in range(repeats))

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "digits.onnx"
        report = to_onnx(model, (x[:1],), path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.numpy()}
        with torch.no_grad():
            ref = model(x)
            out = torch.from_numpy(session.run(None, feed)[0])
            err = float((out - ref).abs().max() / ref.abs().max())
            torch_s = median(lambda: model(x))
            ort_s = median(lambda: session.run(None, feed))
    return {
        "setting": f"digits model (untrained), 6 steps, batch {batch}, float32,"
        f" median of {repeats}",
        "baseline_s": torch_s,
        "candidate_s": ort_s,
        "check": f"max difference {err:.1e} (relative to the largest output);"
        f" {report.file_bytes / 1024:.0f} KiB file, {report.loops} loop node",
        "batch": batch,
        "export_s": report.export_seconds,
    }
