"""``odeint_event``: torchdiffeq's entry point for terminal events.

``odeint_event(func, y0, t0, event_fn=g)`` integrates from ``t0`` forwards (or backwards with
``reverse_time=True``) until ``g(t, y)`` crosses zero and returns ``(event_t, solution)``, the
solution holding the states at ``t0`` and at the event; both carry exact gradients (the implicit
function theorem on the discrete solve: :mod:`mali_func._events`). The solve itself is
``odeint_interface`` (:func:`mali_func.odeint` by default, or :func:`mali_func.odeint_adjoint`
for torchdiffeq's defaults) with the remaining keywords.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._odeint import odeint


def odeint_event(
    func: Callable[..., Any],
    y0: Tensor | tuple[Tensor, ...],
    t0: Tensor | float,
    *,
    event_fn: Callable[[Tensor, Any], Tensor],
    reverse_time: bool = False,
    odeint_interface: Callable[..., Any] = odeint,
    **kwargs: Any,
) -> tuple[Tensor, Any]:
    """Solve from ``t0`` until ``event_fn(t, y)`` changes sign; return ``(event_t, solution)``.

    Args:
        func: the field, as for :func:`mali_func.odeint`.
        y0: the state at ``t0`` (a tensor or a tuple of them).
        t0: the start time (a number or a 0-dim tensor; differentiable as a tensor).
        event_fn: ``event_fn(t, y)`` returning one scalar that depends on ``y``; the event is
            its first change of sign after ``t0``.
        reverse_time: integrate towards decreasing times.
        odeint_interface: the solve (:func:`mali_func.odeint` or
            :func:`mali_func.odeint_adjoint`).
        **kwargs: its options (``method``, ``rtol``, ``atol``, ``gradient``, ...).

    Raises:
        RuntimeError: ``event_fn`` never crosses zero within about 5.6 million times the first
            window (``|t1 - t0| = 1``).
        ValueError: ``event_fn`` returns more than one value, or does not depend on the state.
    """
    like = y0[0] if isinstance(y0, (tuple, list)) else y0
    start = torch.as_tensor(t0, dtype=like.dtype, device=like.device).reshape(())
    step = -1.0 if reverse_time else 1.0
    t = torch.stack([start, start.detach() + step])
    return odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)
