"""Checks of :func:`mali_func.export.to_onnx`'s arguments; each error names the argument."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

MIN_OPSET = 18
"""The oldest ONNX opset the dynamo-based exporter writes."""


@dataclass(frozen=True)
class Request:
    """Validated arguments of one export."""

    model: nn.Module
    args: tuple[Tensor, ...]
    path: Path
    dynamic_batch: bool
    opset: int | None
    rtol: float
    check: bool
    input_names: tuple[str, ...] | None
    output_names: tuple[str, ...] | None


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}")
    return value


def _names(value: Any, name: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{name} must be a sequence of strings or None, got {value!r}")
    names = tuple(value)
    if len(set(names)) != len(names):
        raise ValueError(f"{name} must not repeat a name, got {list(names)}")
    return names


def _args(args: Any, dynamic_batch: bool) -> tuple[Tensor, ...]:
    parts = (args,) if isinstance(args, Tensor) else args
    if not isinstance(parts, (tuple, list)) or not parts:
        raise TypeError(
            "args must be an example input tensor or a non-empty tuple of them, got "
            f"{type(args).__name__}"
        )
    for i, a in enumerate(parts):
        if not isinstance(a, Tensor):
            raise TypeError(f"args[{i}] must be a torch.Tensor, got {type(a).__name__}")
    if dynamic_batch:
        for i, a in enumerate(parts):
            if a.ndim == 0:
                raise ValueError(
                    f"args[{i}] has no batch axis (it is 0-dim); pass dynamic_batch=False "
                    "to export fixed shapes"
                )
            if a.shape[0] != parts[0].shape[0]:
                raise ValueError(
                    "dynamic_batch=True needs the same batch size (first axis) in every input: "
                    f"args[0] has {parts[0].shape[0]}, args[{i}] has {a.shape[0]}"
                )
            if a.shape[0] == 0:
                raise ValueError(f"args[{i}] has an empty batch axis; give at least one sample")
    return tuple(parts)


def _path(path: Any, suffix: str = ".onnx") -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    out = Path(path)
    if out.suffix != suffix:
        raise ValueError(f"path must end in {suffix}, got {str(out)!r}")
    if out.is_dir():
        raise ValueError(f"path must name a file, got the directory {str(out)!r}")
    return out


def _opset(opset: Any) -> int | None:
    if opset is None:
        return None
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise TypeError(f"opset must be an int or None, got {type(opset).__name__}")
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be at least {MIN_OPSET} (the dynamo exporter), got {opset}")
    return opset


def _rtol(rtol: Any) -> float:
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)):
        raise TypeError(f"rtol must be a positive number, got {type(rtol).__name__}")
    if not (math.isfinite(rtol) and rtol > 0):
        raise ValueError(f"rtol must be positive and finite, got {rtol}")
    return float(rtol)


def validate(
    model: Any,
    args: Any,
    path: Any,
    *,
    dynamic_batch: Any,
    opset: Any,
    rtol: Any,
    check: Any,
    input_names: Any,
    output_names: Any,
) -> Request:
    """Return the arguments normalised, or raise ``TypeError``/``ValueError`` naming one."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    dynamic = _flag(dynamic_batch, "dynamic_batch")
    parts = _args(args, dynamic)
    inputs = _names(input_names, "input_names")
    if inputs is not None and len(inputs) != len(parts):
        raise ValueError(
            f"input_names must name each of the {len(parts)} inputs, got {len(inputs)} names"
        )
    return Request(
        model=model,
        args=parts,
        path=_path(path),
        dynamic_batch=dynamic,
        opset=_opset(opset),
        rtol=_rtol(rtol),
        check=_flag(check, "check"),
        input_names=inputs,
        output_names=_names(output_names, "output_names"),
    )
