"""torchdiffeq's names with torchdiffeq's defaults: the one-line import change.

``from mali_func.torchdiffeq import odeint, odeint_adjoint, odeint_event`` replaces
``from torchdiffeq import ...``: both ``odeint`` and ``odeint_adjoint`` are
:func:`mali_func.odeint_adjoint` (dopri5, ``rtol=1e-7, atol=1e-9``, torchdiffeq's plain
Runge-Kutta step with its exact gradient by checkpointing, no step cap in eager code), and
``odeint_event`` solves with it. :func:`mali_func.odeint` is the library's own front door, with its
own defaults (ALF, ``rtol=1e-3, atol=1e-6``, the reversible coupling for Runge-Kutta names); what
differs is listed in the documentation (*Coming from torchdiffeq*).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from .interop._odeint_adjoint import odeint_adjoint
from .interop._odeint_event import odeint_event as _odeint_event

odeint = odeint_adjoint
"""torchdiffeq's ``odeint``: :func:`mali_func.odeint_adjoint` (the same defaults and results; the
gradient is exact for the discrete solve whichever name is called)."""


def odeint_event(
    func: Callable[..., Any],
    y0: Tensor | tuple[Tensor, ...],
    t0: Tensor | float,
    *,
    event_fn: Callable[[Tensor, Any], Tensor],
    reverse_time: bool = False,
    odeint_interface: Callable[..., Any] = odeint_adjoint,
    **kwargs: Any,
) -> tuple[Tensor, Any]:
    """:func:`mali_func.odeint_event` solving with torchdiffeq's defaults."""
    return _odeint_event(func, y0, t0, event_fn=event_fn, reverse_time=reverse_time,
                         odeint_interface=odeint_interface, **kwargs)  # fmt: skip


__all__ = ["odeint", "odeint_adjoint", "odeint_event"]
