"""Where the steps go, as an object: :class:`Fixed` grids or :class:`Adaptive` steps.

The keywords these objects replace (``n_steps``, ``step_size``, ``unroll``; ``max_steps``,
``first_step``, ``controller``) stay accepted by :func:`mali_func.odeint` as shorthands, and
``rtol``/``atol`` stay where torchdiffeq's users put them; giving a keyword and an object that
sets the same option raises. Adaptive steps follow the error-per-step control of Hairer, Norsett
& Wanner (*Solving Ordinary Differential Equations I*, section II.4) with the scheme's embedded
error estimate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._controllers import Controller


@dataclass(frozen=True)
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

    def keywords(self) -> dict[str, Any]:
        return {"n_steps": self.n, "step_size": self.size, "unroll": self.unroll}


@dataclass(frozen=True)
class Adaptive:
    """Adaptive steps under error control (the default when no fixed grid is given).

    Args:
        rtol: relative tolerance (default 1e-3), mixed RMS norm.
        atol: absolute tolerance (default 1e-6).
        max_steps: the most trial steps (default 10,000).
        first_step: the first step size; by default the Hairer-Wanner estimate.
        controller: accepts steps and proposes the next size (:class:`~mali_func.Controller`);
            by default :class:`~mali_func.IntegralController`.
    """

    rtol: float | None = None
    atol: float | None = None
    max_steps: int | None = None
    first_step: float | None = None
    controller: Controller | None = None

    def keywords(self) -> dict[str, Any]:
        return {"rtol": self.rtol, "atol": self.atol, "max_steps": self.max_steps,
                "first_step": self.first_step, "controller": self.controller}  # fmt: skip


Steps = Fixed | Adaptive
