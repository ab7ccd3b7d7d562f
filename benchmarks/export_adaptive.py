"""An adaptive Neural ODE classifier deployed to ONNX and to a .pt2 package: parity, size, latency.

The digits classifier of ``examples/digits_parts.py`` (untrained weights) with its ``ODEBlock``
solving adaptively (plain Tsit5, ``rtol`` 1e-3 and 1e-6, ``atol`` 1e-6), exported with
``mali_func.export.to_onnx``: the controller becomes one ONNX ``Loop``. Reported: the largest
difference between onnxruntime and torch at batch 1 and 256 (relative to the largest output), the
file size at both tolerances, and the median latency of onnxruntime (``CPUExecutionProvider``,
one thread) and of the AOTInductor package (``mali_func.export.to_pt2``) against torch eager under
``no_grad`` (one thread).

    python benchmarks/export_adaptive.py [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _common import RESULTS, md_table, save_json, timed, write

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))


def measure(rtol: float) -> dict[str, Any]:
    import onnxruntime as ort
    from digits_parts import ConvField, DigitsModel, load_digits_split

    from mali_func import ODEBlock
    from mali_func.export import load_pt2, to_onnx, to_pt2

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = DigitsModel().eval()
    options = {"method": "tsit5", "coupling": None, "gradient": "checkpoint"}
    model.ode = ODEBlock(ConvField(32), rtol=rtol, atol=1e-6, **options)
    x = load_digits_split()["x_test"]
    out: dict[str, Any] = {"rtol": rtol}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "adaptive.onnx"
        report = to_onnx(model, (x[:1],), path)
        out.update(bytes=report.file_bytes, loops=report.loops, export_s=report.export_seconds)
        pt2 = to_pt2(model, (x[:1],), Path(tmp) / "adaptive.pt2")
        out.update(pt2_bytes=pt2.file_bytes, pt2_s=pt2.export_seconds + pt2.compile_seconds)
        runner = load_pt2(Path(tmp) / "adaptive.pt2")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for batch, repeats in ((1, 100), (256, 10)):
            xb = x[:batch]
            feed = {name: xb.numpy()}

            def median(fn: Callable[[], object], n: int = repeats) -> float:
                fn()
                return statistics.median(timed(fn) for _ in range(n))

            with torch.no_grad():
                ref = model(xb)
                got = torch.from_numpy(session.run(None, feed)[0])
                out[f"error_{batch}"] = float((got - ref).abs().max() / ref.abs().max())
                out[f"torch_s_{batch}"] = median(lambda: model(xb))  # noqa: B023
                out[f"ort_s_{batch}"] = median(lambda: session.run(None, feed))  # noqa: B023
                out[f"pt2_s_{batch}"] = median(lambda: runner(xb))  # noqa: B023
                out[f"pt2_error_{batch}"] = float((runner(xb) - ref).abs().max() / ref.abs().max())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = [measure(rtol) for rtol in (1e-3, 1e-6)]
    save_json(args.out / "export_adaptive.json", rows)
    table = [
        [f"{r['rtol']:g}", f"{r['bytes']:,}", str(r["loops"]), f"{r['export_s']:.1f}",
         f"{r['error_1']:.1e}", f"{r['error_256']:.1e}",
         f"{1e3 * r['torch_s_1']:.2f} / {1e3 * r['ort_s_1']:.2f} "
         f"({r['torch_s_1'] / r['ort_s_1']:.1f}x)",
         f"{1e3 * r['torch_s_256']:.1f} / {1e3 * r['ort_s_256']:.1f} "
         f"({r['torch_s_256'] / r['ort_s_256']:.1f}x)"]
        for r in rows
    ]  # fmt: skip
    text = md_table(
        ["rtol", "file bytes", "Loop nodes", "export s", "error, batch 1", "error, batch 256",
         "batch 1: torch / onnxruntime ms", "batch 256: torch / onnxruntime ms"],
        table,
    )  # fmt: skip
    pt2 = [
        [f"{r['rtol']:g}", f"{r['pt2_bytes']:,}", f"{r['pt2_s']:.1f}",
         f"{r['pt2_error_1']:.1e} / {r['pt2_error_256']:.1e}",
         f"{1e3 * r['torch_s_1']:.2f} / {1e3 * r['pt2_s_1']:.2f} / {1e3 * r['ort_s_1']:.2f}",
         f"{1e3 * r['torch_s_256']:.1f} / {1e3 * r['pt2_s_256']:.1f} / {1e3 * r['ort_s_256']:.1f}"]
        for r in rows
    ]  # fmt: skip
    text += "\n\n" + md_table(
        ["rtol", ".pt2 bytes", "export + compile s", "error, batch 1 / 256",
         "batch 1: torch / .pt2 / onnxruntime ms", "batch 256: torch / .pt2 / onnxruntime ms"],
        pt2,
    )  # fmt: skip
    write(args.out / "export_adaptive.md", text)
    print(text)


if __name__ == "__main__":
    main()
