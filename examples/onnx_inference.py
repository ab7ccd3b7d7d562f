"""Run an exported mali-func model with onnxruntime alone: no torch needed at inference time.

    python examples/onnx_inference.py outputs/digits.onnx                 # random input, batch 4
    python examples/onnx_inference.py outputs/digits.onnx --input x.npy   # your own samples
    python examples/onnx_inference.py model.onnx --batch 256 --save-output y.npy

The model is whatever ``mali_func.export.to_onnx`` (or ``python -m mali_func.export``) wrote,
e.g. the digits classifier of ``examples/digits_classifier.py`` with input ``(batch, 1, 8, 8)``.
Without ``--input`` a random input is drawn in the graph's declared shape, with symbolic axes
(the batch) set to ``--batch``. For an output of shape ``(batch, classes)`` the predicted class
of each sample is printed too. Only numpy and onnxruntime are imported.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def load_session(path: Path, threads: int = 0) -> ort.InferenceSession:
    """An onnxruntime CPU session for ``path``; ``threads=0`` lets onnxruntime choose."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def random_input(session: ort.InferenceSession, batch: int, seed: int) -> np.ndarray:
    """A standard-normal sample in the first input's shape, symbolic axes set to ``batch``."""
    spec = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else batch for d in spec.shape]
    dtype = _NUMPY_TYPES.get(spec.type, np.float32)
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def run(session: ort.InferenceSession, x: np.ndarray) -> list[np.ndarray]:
    """All outputs of the model for input ``x`` (cast to the input's declared dtype)."""
    spec = session.get_inputs()[0]
    x = np.ascontiguousarray(x, dtype=_NUMPY_TYPES.get(spec.type, x.dtype))
    return session.run(None, {spec.name: x})


def _input(
    parser: argparse.ArgumentParser, args: argparse.Namespace, session: ort.InferenceSession
) -> np.ndarray:
    """The ``--input`` array, or a random one; a bad ``--input`` file is a usage error."""
    if not args.input:
        return random_input(session, args.batch, args.seed)
    try:
        x = np.load(args.input, allow_pickle=False)
    except (OSError, ValueError) as err:
        parser.error(f"--input: cannot read {args.input} as a .npy array: {err}")
    if not isinstance(x, np.ndarray) or x.ndim == 0:
        parser.error(f"--input: {args.input} must hold an array with a batch axis")
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, nargs="?", default=Path("outputs/digits.onnx"))
    parser.add_argument("--input", type=Path, help=".npy file with a batch of inputs")
    parser.add_argument("--batch", type=int, default=4, help="batch size of the random input")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads")
    parser.add_argument("--save-output", type=Path, help="write the first output to this .npy")
    args = parser.parse_args()
    if not args.model.is_file():
        parser.error(f"no ONNX file at {args.model}; export one with python -m mali_func.export")

    try:
        session = load_session(args.model, args.threads)
    except Exception as err:  # onnxruntime's errors derive from Exception only
        parser.error(f"cannot load {args.model} as an ONNX model (truncated or not ONNX?): {err}")
    x = _input(parser, args, session)
    for spec in session.get_inputs():
        print(f"input   {spec.name}: {spec.type} {spec.shape}")
    start = time.perf_counter()
    try:
        outputs = run(session, x)
    except Exception as err:
        parser.error(f"{args.model} cannot run on an input of shape {list(x.shape)}: {err}")
    elapsed = time.perf_counter() - start
    for spec, out in zip(session.get_outputs(), outputs):
        print(f"output  {spec.name}: {out.dtype} {list(out.shape)}")
    print(f"ran {x.shape[0]} sample(s) in {elapsed * 1e3:.2f} ms")
    first = outputs[0]
    if first.ndim == 2 and first.shape[1] > 1:
        print("predicted class per sample:", first.argmax(axis=1).tolist())
    if args.save_output:
        np.save(args.save_output, first)
        print(f"saved {args.save_output}")


if __name__ == "__main__":
    main()
