"""``python -m mali_func.export``: export a trained model to ONNX from the command line.

The model comes from a factory, ``"package.module:callable"``, called without arguments; the
weights from a ``state_dict`` file (loaded with ``weights_only=True``). The example input is
random, of the given shape, so the check compares torch and onnxruntime on it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._api import to_onnx
from ._batch import resized, second_batch
from ._errors import ExportError
from ._pt2 import to_pt2
from ._trace import inference_mode_of

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 1,1,8,8, got {text!r}") from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"expected positive sizes like 1,1,8,8, got {text!r}")
    return dims


def _factory(spec: str) -> Callable[[], Any]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise argparse.ArgumentTypeError(f"expected 'module.path:callable', got {spec!r}")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise argparse.ArgumentTypeError(f"cannot import {module_name!r}: {err}") from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise argparse.ArgumentTypeError(f"{module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise argparse.ArgumentTypeError(f"{spec!r} is not callable")
    return target


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mali_func.export",
        description="Export a model that calls mali_func.odeint to ONNX (checked with the ONNX "
        "checker and onnxruntime) or to an AOTInductor .pt2 package (checked against torch).",
    )
    parser.add_argument("factory", type=_factory, help="'module.path:callable' returning the model")
    parser.add_argument("-w", "--weights", type=Path, help="state_dict file (torch.save)")
    parser.add_argument(
        "-s", "--input-shape", type=_shape, required=True, help="example input shape, e.g. 1,1,8,8"
    )
    parser.add_argument(
        "-o", "--output", type=Path, required=True, help="the .onnx (or .pt2) file to write"
    )
    parser.add_argument(
        "--format",
        choices=("onnx", "pt2"),
        default="onnx",
        help="onnx (checked with onnxruntime) or pt2 (torch.export + AOTInductor package)",
    )
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="float32")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: exporter's)")
    parser.add_argument("--rtol", type=float, default=1e-4, help="allowed relative error")
    parser.add_argument("--fixed-batch", action="store_true", help="no dynamic batch axis")
    parser.add_argument("--no-check", action="store_true", help="skip checker and onnxruntime")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random example input")
    return parser


def _load_model(factory: Callable[[], Any], weights: Path | None) -> nn.Module:
    try:
        model = factory()
    except Exception as err:
        name = getattr(factory, "__qualname__", repr(factory))
        raise ExportError(f"the factory {name} raised {type(err).__name__}: {err}") from err
    if not isinstance(model, nn.Module):
        raise TypeError(f"the factory must return a torch.nn.Module, got {type(model).__name__}")
    if weights is not None:
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(
                f"--weights: {weights} is not a state_dict file written by torch.save "
                f"({type(err).__name__}: {err}); save one with "
                "torch.save(model.state_dict(), path)"
            ) from err
        if not isinstance(state, dict):
            raise TypeError(f"{weights} must hold a state_dict, got {type(state).__name__}")
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(
                f"--weights: {weights} does not fit the factory's model: {err}"
            ) from err
    return model


def _example_error(model: nn.Module, example: Tensor, dynamic_batch: bool) -> str | None:
    """Why the model cannot run on the example, as a message for ``-s/--input-shape``.

    With a dynamic batch the model must also run at a second batch size built from the example
    (a shape without its batch axis usually fails there). ``None`` when the model runs.
    """
    shape = ",".join(map(str, example.shape))
    hint = (
        "the shape must include the batch axis first: if "
        f"{shape} is the shape of one sample, use -s 1,{shape}"
    )
    with inference_mode_of(model):
        try:
            model(example)
        except Exception as err:
            return (
                f"the model fails on an example input of shape {shape} "
                f"({type(err).__name__}: {err}); {hint}"
            )
        if not dynamic_batch:
            return None
        other = second_batch(example.shape[0])
        try:
            model(*resized((example,), other))
        except Exception as err:
            return (
                f"the model runs on shape {shape} but fails when the first axis, the batch "
                f"axis, is {other} instead of {example.shape[0]} ({type(err).__name__}: {err}); "
                f"{hint}, or pass --fixed-batch to export this shape only"
            )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 exported and checked, 1 failed).

    Bad arguments, an example shape the model cannot run on included, exit with status 2.
    """
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.weights is not None and not ns.weights.is_file():
        parser.error(f"--weights: no such file {str(ns.weights)!r}")
    try:
        model = _load_model(ns.factory, ns.weights)
        dtype = _DTYPES[ns.dtype]
        model.to(dtype)
        example = torch.randn(ns.input_shape, generator=torch.Generator().manual_seed(ns.seed))
        example = example.to(dtype)
        problem = _example_error(model, example, dynamic_batch=not ns.fixed_batch)
        if problem is not None:
            parser.error(f"argument -s/--input-shape: {problem}")
        report: object
        if ns.format == "pt2":
            report = to_pt2(
                model,
                (example,),
                ns.output,
                dynamic_batch=not ns.fixed_batch,
                rtol=ns.rtol,
                check=not ns.no_check,
            )
        else:
            report = to_onnx(
                model,
                (example,),
                ns.output,
                dynamic_batch=not ns.fixed_batch,
                opset=ns.opset,
                rtol=ns.rtol,
                check=not ns.no_check,
            )
    except (ExportError, TypeError, ValueError, RuntimeError, OSError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(report)
    return 0
