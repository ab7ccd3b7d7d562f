"""Where the steps go, as an object: :class:`Fixed` grids or :class:`Adaptive` steps.

The keywords these objects replace (``n_steps``, ``step_size``, ``unroll``; ``max_steps``,
``first_step``, ``controller``) stay accepted by :func:`mali_func.odeint` as shorthands, and
``rtol``/``atol`` stay where torchdiffeq's users put them; giving a keyword and an object that
sets the same option raises. Adaptive steps follow the error-per-step control of Hairer, Norsett
& Wanner (*Solving Ordinary Differential Equations I*, section II.4) with the scheme's embedded
error estimate.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ._controllers import Controller


def check_count(n: Any, name: str, where: str = "") -> int:
    """A step count: an int of at least 1 (``where`` ends the message)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{name} must be an int, got {type(n).__name__}{where}")
    if n < 1:
        raise ValueError(f"{name} must be at least 1, got {n}{where}")
    return n


def check_size(size: float, where: str = "") -> float:
    """A largest step size: positive and finite (``where`` ends the message)."""
    if not (math.isfinite(size) and size > 0):
        raise ValueError(f"step_size must be positive and finite, got {size}{where}")
    return size


@dataclass(frozen=True, repr=False)
class Fixed:
    """A fixed grid: ``n`` equal steps in every interval of ``t`` (or one count per interval),
    or ``ceil(|dt| / size)`` equal steps per interval.

    Args:
        n: steps per interval, an int or one per interval.
        size: the largest step size (exclusive with ``n``).
        unroll: steps per iteration of a compiled loop (fewer iterations, a larger graph).
    """

    n: int | Sequence[int] | None = None
    size: float | None = None
    unroll: int = 1

    def __post_init__(self) -> None:
        if (self.n is None) == (self.size is None):
            raise ValueError(
                f"Fixed needs exactly one of n and size, got n={self.n!r}, size={self.size!r}"
            )
        many = isinstance(self.n, (tuple, list))
        for i, c in enumerate(self.n if many else (self.n,)):  # type: ignore[arg-type]
            if isinstance(c, int) and not isinstance(c, bool):  # traced: the solve's check
                name = f"n_steps[{i}]" if many else "n_steps"
                check_count(c, name, " (Fixed(n=...): steps per interval)")
        if isinstance(self.size, float):
            check_size(self.size, " (Fixed(size=...))")
        u = self.unroll
        if isinstance(u, bool) or not isinstance(u, int) or u < 1:
            raise ValueError(
                f"unroll must be an int >= 1 (steps per compiled loop iteration), got {u!r}"
            )


@dataclass(frozen=True, repr=False)
class Adaptive:
    """Adaptive steps under error control (the default when no fixed grid is given).

    Args:
        rtol: relative tolerance (default 1e-3), mixed RMS norm.
        atol: absolute tolerance (default 1e-6).
        max_steps: the most trial steps (default 10,000; no cap through
            :func:`~mali_func.odeint_adjoint` in eager code, as torchdiffeq).
        first_step: the first step size; by default the Hairer-Wanner estimate.
        controller: accepts steps and proposes the next size (:class:`~mali_func.Controller`);
            by default :class:`~mali_func.IntegralController`.
        min_step: the smallest step size: a step this small is accepted whatever its error
            (torchdiffeq's ``min_step``; default 0).
        max_step: the largest step size (default unbounded).
        norm: the error norm, called on the scaled error ``err / (atol + rtol max(|y|, |y'|))``
            (a tensor, or a tuple for a tuple state) and returning a scalar; by default the RMS
            norm over every component (torchdiffeq's ``norm``).
        interpolate: outputs between the steps by dense output (the default): each output is
            one short step of the scheme from the start of the accepted step that holds it,
            differentiated exactly (:mod:`mali_func.stepping._dense`), so output times change no
            step; ``False``: the steps land on every output time.
    """

    rtol: float | None = None
    atol: float | None = None
    max_steps: int | None = None
    first_step: float | None = None
    controller: Controller | None = None
    min_step: float | None = None
    max_step: float | None = None
    norm: Callable[[Any], Tensor] | None = None
    interpolate: bool | None = None


Steps = Fixed | Adaptive


def brief_repr(obj: Any) -> str:
    """``Name(field=value, ...)`` with the fields that differ from their defaults only."""
    parts = [
        f"{f.name}={getattr(obj, f.name)!r}"
        for f in dataclasses.fields(obj)
        if getattr(obj, f.name) is not f.default and getattr(obj, f.name) != f.default
    ]
    return f"{type(obj).__name__}({', '.join(parts)})"


Fixed.__repr__ = brief_repr  # type: ignore[method-assign]
Adaptive.__repr__ = brief_repr  # type: ignore[method-assign]
