"""``odeint_adjoint``: :func:`mali_func.odeint` with torchdiffeq's defaults, the drop-in for
``from torchdiffeq import odeint_adjoint as odeint``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor

from .._odeint import TensorOrTuple, odeint
from ..schemes import TABLEAUS

TORCHDIFFEQ_RTOL, TORCHDIFFEQ_ATOL, TORCHDIFFEQ_METHOD = 1e-7, 1e-9, "dopri5"


def odeint_adjoint(
    func: Callable[..., Any],
    y0: TensorOrTuple,
    t: Tensor | Sequence[float],
    rtol: float | None = None,
    atol: float | None = None,
    method: str | None = None,
    options: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """:func:`odeint` with torchdiffeq's defaults, for ``from mali_func import odeint_adjoint as
    odeint``: ``method="dopri5"`` unless a ``scheme`` is given, ``rtol=1e-7, atol=1e-9`` on
    adaptive solves, and, for a Runge-Kutta method given neither ``coupling`` nor
    ``gradient``, torchdiffeq's own plain step (``coupling=None``) differentiated by
    ``gradient="checkpoint"``: the same discrete solve as torchdiffeq's forward, its exact
    gradient (which the adjoint method approximates) in bounded memory, and none of the reversible
    coupling's parasitic mode. ``gradient="mali"`` (or a ``coupling``) selects the reversible
    coupling and MALI instead; ``gradient="backprop"`` alone keeps the plain step. Every
    argument of :func:`odeint` is accepted."""
    fixed = any(kwargs.get(k) is not None for k in ("n_steps", "step_size")) or (
        isinstance(options, Mapping) and "step_size" in options
    )
    if method is None and kwargs.get("scheme") is None:
        method = TORCHDIFFEQ_METHOD
    if isinstance(method, str) and method in TABLEAUS and "coupling" not in kwargs:
        gradient = kwargs.setdefault("gradient", "checkpoint")
        if gradient != "mali":
            kwargs["coupling"] = None
    if not fixed:
        rtol = TORCHDIFFEQ_RTOL if rtol is None else rtol
        atol = TORCHDIFFEQ_ATOL if atol is None else atol
    return odeint(func, y0, t, rtol, atol, method, options, **kwargs)
