"""torchdiffeq's step callbacks, read from the field and called as torchdiffeq calls them.

A field may carry ``callback_step(t0, y0, dt)`` (before every step tried),
``callback_accept_step`` and ``callback_reject_step`` (after the controller decides), and the same
three with an ``_adjoint`` suffix, called in the backward pass, once per step from the last to the
first (MALI's reverse pass rebuilds the steps; a checkpointed backward walks them back the same
way; there are no rejections there, every backward step is "accepted"). ``y0`` is the solution at
the step's start (a tuple for a tuple state; ALF's velocity and a coupling's second copy are not
passed), ``dt`` the signed step. They are Python side effects, so they run in eager code only:
under ``torch.compile``, export or a :mod:`torch.func` transform a :class:`CallbackWarning` says
once that they are not called, never silence.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..backends import _mode

NAMES = ("callback_step", "callback_accept_step", "callback_reject_step")
"""The forward callbacks; the backward ones add ``_adjoint``."""
ALL_NAMES = (*NAMES, *(n + "_adjoint" for n in NAMES))
"""Every callback a field may carry, forward and backward."""


class CallbackWarning(UserWarning):
    """The field's step callbacks are not called (compiled, exported or transformed solves)."""


@dataclass(frozen=True)
class Callbacks:
    """The callbacks a field carries, and whether the state is a tuple."""

    found: dict[str, Callable[..., Any]]
    tuple_state: bool

    def _call(self, name: str, t: Tensor, y: tuple[Tensor, ...], h: Any) -> None:
        fn = self.found.get(name)
        if fn is not None:
            fn(t, y if self.tuple_state else y[0], h)

    def trial(self, t: Tensor, y: tuple[Tensor, ...], h: Any) -> None:
        """Before a step is tried (every step of a fixed grid)."""
        self._call("callback_step", t, y, h)

    def decided(self, t: Tensor, y: tuple[Tensor, ...], h: Any, ok: Tensor | bool) -> None:
        """After the controller accepted (``ok``) or rejected the step."""
        self._call("callback_accept_step" if bool(ok) else "callback_reject_step", t, y, h)

    def backward_step(self, t: Tensor, y: tuple[Tensor, ...], h: Any) -> None:
        """One step of the backward pass."""
        self._call("callback_step_adjoint", t, y, h)
        self._call("callback_accept_step_adjoint", t, y, h)


def callbacks_of(func: Any, tuple_state: bool, *, adaptive: bool = True) -> Callbacks | None:
    """The field's callbacks when they can run (plain eager code), else ``None`` (warning once
    if it has some). On a fixed grid no step is rejected or accepted by a controller: accept
    and reject callbacks warn there, as torchdiffeq's fixed solvers do."""
    if _mode.tracing():
        _has_callbacks_traced(func)  # warns once, while dynamo traces
        return None
    found = {name: fn for name in ALL_NAMES if callable(fn := getattr(func, name, None))}
    if not found:
        return None
    if _mode.under_transform():
        _warn("a torch.func transform")
        return None
    decided = sorted(n for n in found if n in NAMES[1:])
    if decided and not adaptive:
        warnings.warn(
            f"func's {', '.join(decided)}: a fixed grid accepts every step without a controller, "
            "so only callback_step (and callback_step_adjoint) are called",
            CallbackWarning,
            stacklevel=3,
        )
    return Callbacks(found, tuple_state)


@torch.compiler.assume_constant_result
def _has_callbacks_traced(func: Any) -> bool:
    """Run once while dynamo traces: warn if the field has callbacks that will not run."""
    if any(callable(getattr(func, n, None)) for n in ALL_NAMES):
        _warn("torch.compile or export")
        return True
    return False


def _warn(where: str) -> None:
    warnings.warn(
        f"func's step callbacks ({', '.join(NAMES)} and their _adjoint forms) are not called "
        f"under {where}, which traces the solve once and cannot run Python side effects at each "
        "step; call the solve eagerly to have them called",
        CallbackWarning,
        stacklevel=4,
    )
