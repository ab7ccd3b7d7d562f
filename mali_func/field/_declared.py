"""Captured tensors the caller lists: torchdiffeq's ``adjoint_params`` for a plain function.

torchdiffeq documents ``odeint_adjoint(func, y0, t, adjoint_params=tuple(net.parameters()))`` for
a ``func`` that is not a module but closes over one. MALI's engine (Zhuang et al., ICLR 2021)
differentiates the tensors passed to it, so the listed tensors are passed as inputs while the
function goes on reading them from its closure: in eager code the vector-Jacobian products are
taken with autograd on those very tensors (:func:`mali_func.gradients._vjp.autograd_vjp` keeps a
leaf's identity), which gives their gradients exactly. Two things cannot work and are refused:
a tensor the function reads that is not listed (its gradient would be lost), and a listed tensor
that is not a leaf (its autograd identity is not kept); and under ``torch.compile`` or a
:mod:`torch.func` transform, whose VJPs substitute the inputs, a function that reads any of them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..backends._mode import tracing, under_transform
from ..schemes import State
from ._captures import _captured
from ._field import BoundField
from ._module_checks import _hidden_leaves


def check_declared(bound: BoundField, t0: Tensor, y0: State) -> int:
    """Refuse what a plain callable with declared captures cannot be differentiated through;
    return the field evaluations made (0 or 1)."""
    if not torch.is_grad_enabled():
        return 0
    if tracing() or under_transform():
        if any(p.requires_grad for p in bound.params):
            raise NotImplementedError(
                "adjoint_params: a plain function that reads the tensors it lists from its "
                "closure is differentiated in eager code only; under torch.compile or a "
                "torch.func transform pass them as odeint(..., args=(...)) and accept them as "
                "func(t, y, *args), or make func an nn.Module"
            )
        return 0
    for i, p in enumerate(bound.params):
        if p.requires_grad and p.grad_fn is not None and bound.names[i].startswith("adjoint"):
            raise TypeError(
                f"{bound.names[i]} is computed from other tensors (not a leaf), so a function "
                "that reads it from its closure cannot be differentiated through it; pass it as "
                "odeint(..., args=(tensor,)) and accept it as func(t, y, *args)"
            )
    out = bound.field(t0.detach(), tuple(y.detach() for y in y0), bound.params)
    if _hidden_leaves(out, bound.params):
        raise _captured(bound.field)
    return 1
