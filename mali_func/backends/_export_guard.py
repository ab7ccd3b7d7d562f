"""A guard on the output of an exported adaptive solve: forward only, no silent gradient.

An exported adaptive solve is one ``while_loop``. Called with autograd on, an
:class:`torch.export.ExportedProgram` differentiates that loop with ``while_loop``'s own autograd,
which in torch 2.13 returns a wrong gradient for our loop (measured: 10% off against finite
differences of the same program, whose forward values are exact). So every floating output of an
exported adaptive solve passes through ``mali_func::forward_only``, an identity whose backward
raises an error that says what to do. Fixed grids export as ``scan``, whose autograd is exact,
and are not guarded.

:func:`mali_func`'s own exporters (``export.to_onnx``, ``export.to_pt2``) remove the op
(:func:`strip`): their programs are for inference.
"""

from __future__ import annotations

import torch
from torch import Tensor

MESSAGE = (
    "an exported adaptive solve (a while_loop in the program) has no gradient: torch 2.13 "
    "differentiates such a loop wrongly. Differentiate the eager or torch.compile'd model, or "
    "export with a fixed grid (n_steps), whose exported scan differentiates exactly"
)


@torch.library.custom_op("mali_func::forward_only", mutates_args=())
def forward_only(x: Tensor) -> Tensor:
    """``x`` (a copy), whose gradient raises :data:`MESSAGE`."""
    return x.clone()


@forward_only.register_fake
def _(x: Tensor) -> Tensor:
    return torch.empty_like(x)


def _refuse(ctx: object, grad: Tensor) -> Tensor:
    raise RuntimeError(MESSAGE)


forward_only.register_autograd(_refuse)


def guard(x: Tensor) -> Tensor:
    """``x`` through :func:`forward_only` when it is floating (the only kind autograd follows)."""
    return forward_only(x) if x.is_floating_point() or x.is_complex() else x


def strip(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``program`` with the guard replaced by a copy (for inference-only exporters)."""
    return program.run_decompositions({torch.ops.mali_func.forward_only.default: torch.clone})
