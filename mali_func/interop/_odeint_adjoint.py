"""``odeint_adjoint``: :func:`mali_func.odeint` with torchdiffeq's defaults, the drop-in for
``from torchdiffeq import odeint_adjoint as odeint``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor

from .._integrate import integrate
from .._odeint import TensorOrTuple
from ..schemes import TABLEAUS
from ._shorthands import expand

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
    # The defaults are decided on odeint's expanded keywords, so the objects (steps=Fixed(...),
    # gradient=MALI(), method=<scheme>) and their shorthands are read alike.
    args, stats = kwargs.pop("args", ()), kwargs.pop("stats", False)
    gradient_given = "gradient" in kwargs
    options_ = expand(
        "odeint_adjoint", rtol=rtol, atol=atol, method=method, steps=kwargs.pop("steps", None),
        gradient=kwargs.pop("gradient", "mali"), keywords=kwargs,
    )  # fmt: skip
    fixed = any(options_.get(k) is not None for k in ("n_steps", "step_size")) or (
        isinstance(options, Mapping) and "step_size" in options
    )
    if options_["method"] is None and options_.get("scheme") is None:
        options_["method"] = TORCHDIFFEQ_METHOD
    if options_["method"] in TABLEAUS and "coupling" not in options_:
        if not gradient_given:
            options_["gradient"] = "checkpoint"
        if options_["gradient"] != "mali":
            options_["coupling"] = None
    if not fixed:
        for name, default in (("rtol", TORCHDIFFEQ_RTOL), ("atol", TORCHDIFFEQ_ATOL)):
            if options_[name] is None:  # not given, as a parameter or in Adaptive(...)
                options_[name] = default
    return integrate(func, y0, t, options=options, args=args, stats=stats, **options_)
