"""Solves traced by ``torch.compile`` inside :mod:`torch.func` transforms (compiled per-sample
gradients: ``torch.compile(vmap(grad(loss)), fullgraph=True)``, ``jacrev`` under compile).

Eagerly, :class:`mali_func.gradients._solve.Solve` is a ``torch.func``-ready ``autograd.Function``
(``generate_vmap_rule``: the forward and the MALI backward run once per sample under ``vmap``).
Traced by dynamo inside a transform, two torch 2.13 limits meet it (torch 2.13.0, CPU; both
reproduced by ``tests/test_compiled_transforms.py`` without this module's measures):

* ``while_loop`` and ``scan`` have no functorch rule: dynamo's check of a loop body fails on the
  transforms' wrapped tensors (``AssertionError: Expected FakeTensor`` under ``grad``, ``Cannot
  access storage of BatchedTensorImpl`` under ``vmap``), and AOTAutograd would find no rule after
  it. A fixed grid is therefore walked with Python loops there: the graph holds every step, so
  compile time grows with the number of steps (the solve and its MALI reverse stay exact and
  memory stays that of MALI). The adaptive controller needs a data-dependent loop, and
  checkpointing its nested recomputation loops: both are refused with the alternatives
  (:func:`check_traced_transform`).
* dynamo replaces the Function by its ``autograd_function_apply`` operator, whose runtime Function
  (``ApplyTemplate``) has no vmap rule (``You tried to vmap over ApplyTemplate``).
  :func:`vmap_traced_functions` gives exactly that class the rule ``generate_vmap_rule=True``
  generates (run once per sample), which is what the original Function declares. It is installed
  while a solve under ``vmap`` is traced, never at import.

Per-sample code (``vmap``, eager or compiled, and Opacus's per-sample gradients) sees one sample
at a time, so a field that normalises with batch statistics (batch norm in training mode) cannot
mean what it does on the batch: :func:`check_per_sample` refuses it, naming the layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..backends import _mode


def check_per_sample(func: Any) -> None:
    """Refuse a field with batch statistics under ``vmap``, naming the layer and the fixes."""
    if not isinstance(func, nn.Module) or not _mode.under_vmap():
        return
    for name, m in func.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            raise ValueError(
                f"func's {type(m).__name__} layer {name or '(the field)'!r} is in training mode "
                "inside torch.func.vmap (per-sample gradients, Opacus): it normalises with the "
                "statistics of a batch, which one sample does not have, so per-sample results "
                "would not be those of the batch; use a per-sample normalisation (GroupNorm, "
                "LayerNorm) or call .eval() on the layer"
            )


def check_traced_transform(*, adaptive: bool, gradient: str) -> None:
    """Refuse what cannot be traced inside a transform in torch 2.13, naming what works."""
    if adaptive:
        raise NotImplementedError(
            "adaptive steps (rtol/atol) inside a torch.func transform (vmap, grad, jacrev) under "
            "torch.compile are not supported with torch 2.13: the step-size controller needs "
            "while_loop, which has no torch.func rule there. Use a fixed grid (n_steps= or "
            "step_size=) inside the compiled transform, or run the transform of the adaptive "
            "solve eagerly (torch.func.vmap(torch.func.grad(loss)) works with "
            f"gradient={gradient!r})"
        )


_INSTALLED: list[bool] = []


@torch.compiler.assume_constant_result
def vmap_traced_functions() -> bool:
    """Give dynamo's ``autograd_function_apply`` Function a generated vmap rule (see the module
    docs); dynamo runs this once while tracing, before AOTAutograd replays the graph."""
    if not _INSTALLED:
        from torch._C._functorch import TransformType
        from torch._functorch import autograd_function as af

        table = af.custom_function_call.functorch_table
        rule = table[TransformType.Vmap]

        def vmap_rule(interpreter: Any, function: Any, *operands: Any, **kwargs: Any) -> Any:
            if function.__name__ == "ApplyTemplate" and function.__module__ == af.__name__:
                return af.custom_function_call_vmap_generate_rule(interpreter, function, *operands)
            return rule(interpreter, function, *operands, **kwargs)

        table[TransformType.Vmap] = vmap_rule
        _INSTALLED.append(True)
    return True
