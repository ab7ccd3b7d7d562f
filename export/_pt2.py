"""PyTorch-native deployment: ``torch.export`` and an AOTInductor ``.pt2`` package.

:func:`to_pt2` traces the model with :func:`torch.export.export` in eval mode without autograd
(``odeint`` then takes its forward-only path: a ``scan`` for a fixed grid, the controller's
``while_loop`` for adaptive steps), compiles the program ahead of time with
``torch._inductor.aoti_compile_and_package`` into one ``.pt2`` file, loads it back and compares
it with the model on the example batch and a second batch size. The package runs with torch alone
(``torch._inductor.aoti_load_package(path)``), no model code; :func:`load_pt2` does that with an
error that names the file when it is missing, truncated or not a package.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves

from ..backends._export_guard import strip
from ._batch import observed_sizes, resized, second_batch, taken_sizes, trace_batches
from ._counters import counters_held
from ._errors import ExportError
from ._trace import BATCH, _root_cause, inference_mode_of
from ._validate import _args, _path, _rtol


@dataclass(frozen=True)
class Pt2Report:
    """What :func:`to_pt2` produced and how well the package matches the model."""

    path: Path
    file_bytes: int
    export_seconds: float
    compile_seconds: float
    dynamic_batch: bool
    batches: tuple[int, ...]
    max_abs_error: float
    max_rel_error: float

    def __str__(self) -> str:
        checked = ", ".join(str(b) for b in self.batches) or "none (check=False)"
        return "\n".join(
            [
                f"file           {self.path} ({self.file_bytes / 1024:.0f} KiB, AOTInductor)",
                f"batch axis     {'dynamic' if self.dynamic_batch else 'fixed'}",
                f"export         torch.export {self.export_seconds:.1f} s, "
                f"AOTInductor {self.compile_seconds:.1f} s",
                f"check          package vs torch at batch {checked}: max abs. error "
                f"{self.max_abs_error:.1e}, max rel. error {self.max_rel_error:.1e}",
            ]
        )


def load_pt2(path: str | Path) -> Any:
    """The runnable model in an AOTInductor package; :class:`ExportError` naming the file when
    it cannot be loaded (missing, truncated, not a ``.pt2`` package)."""
    file = Path(path)
    if not file.is_file():
        raise ExportError(f"no such .pt2 package: {file}")
    try:
        return torch._inductor.aoti_load_package(str(file))
    except Exception as err:  # the loader raises RuntimeError, zipfile and C++ errors alike
        raise ExportError(f"cannot load the .pt2 package {file}: {err}") from err


def _outputs(value: Any) -> list[Tensor]:
    return [x for x in tree_leaves(value) if isinstance(x, Tensor)]


def to_pt2(
    model: nn.Module,
    args: tuple[Tensor, ...],
    path: str | Path,
    *,
    dynamic_batch: bool = True,
    rtol: float = 1e-4,
    check: bool = True,
) -> Pt2Report:
    """Export ``model`` at ``args`` with :func:`torch.export.export` and package it with
    AOTInductor at ``path`` (a ``.pt2`` file); check the package against the model.

    Args:
        model: a module that calls :func:`mali_func.odeint` (fixed or adaptive steps).
        args: example inputs (a tensor or a tuple of tensors), batch first.
        path: where to write the package.
        dynamic_batch: keep the first axis of every input symbolic (default).
        rtol: the largest allowed difference, relative to the largest magnitude of the model's
            output, on the example batch and (``dynamic_batch``) on a second batch size.
        check: load the package back and compare it with the model.

    Raises:
        TypeError, ValueError: an invalid argument, named.
        ExportError: ``torch.export`` or AOTInductor failed (torch's reason is in the message),
            or the package disagrees with the model by more than ``rtol``.
    """
    example = _args(args, dynamic_batch)
    file = _path(path, ".pt2")
    tolerance = _rtol(rtol)
    with inference_mode_of(model):
        start = time.perf_counter()
        shapes = None
        if dynamic_batch:
            batch = torch.export.Dim(BATCH, min=1)
            shapes = tuple({0: batch} for _ in example)
        traced = example
        if dynamic_batch:  # not at a size the model itself has (or 1, which tracing fixes)
            with torch.no_grad():
                sizes = trace_batches(
                    example[0].shape[0],
                    taken_sizes(model, example),
                    observed_sizes(model, example),
                )
            if sizes[0] != example[0].shape[0]:
                traced = resized(example, sizes[0])
        try:
            with counters_held(model, traced):  # self.nfe += 1 in a field: bookkeeping
                program = torch.export.export(model, traced, dynamic_shapes=shapes)
            program = strip(program)  # inference only: the adaptive solves' gradient guard goes
        except Exception as err:
            root = _root_cause(err)
            raise ExportError(
                f"torch.export could not export the model: {type(root).__name__}: {root}"
            ) from err
        exported = time.perf_counter()
        file.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch._inductor.aoti_compile_and_package(program, package_path=str(file))
        except Exception as err:
            raise ExportError(f"AOTInductor could not compile the program: {err}") from err
        compiled = time.perf_counter()
        batches: list[int] = []
        worst_abs = worst_rel = 0.0
        if check:
            runner = load_pt2(file)
            variants = [example]
            if dynamic_batch:
                variants.append(resized(example, second_batch(example[0].shape[0])))
            for inputs in variants:
                want, got = _outputs(model(*inputs)), _outputs(runner(*inputs))
                if len(want) != len(got):
                    raise ExportError(f"the package returned {len(got)} outputs, torch {len(want)}")
                for w, g in zip(want, got):
                    abs_err = float((g - w).abs().max()) if w.numel() else 0.0
                    scale = float(w.abs().max()) if w.numel() else 1.0
                    rel_err = abs_err / (scale or 1.0)
                    if not rel_err <= tolerance or math.isnan(abs_err):
                        raise ExportError(
                            f"the .pt2 package disagrees with torch at batch size "
                            f"{inputs[0].shape[0]}: max relative error {rel_err:.3e} > rtol "
                            f"{tolerance:.3e}; the file was kept at {file}"
                        )
                    worst_abs, worst_rel = max(worst_abs, abs_err), max(worst_rel, rel_err)
                batches.append(int(inputs[0].shape[0]))
    return Pt2Report(
        path=file,
        file_bytes=file.stat().st_size,
        export_seconds=exported - start,
        compile_seconds=compiled - exported,
        dynamic_batch=dynamic_batch,
        batches=tuple(batches),
        max_abs_error=worst_abs,
        max_rel_error=worst_rel,
    )
