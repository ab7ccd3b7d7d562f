"""The input checks of the torchdiffeq-only methods (Adams, ``scipy_solver``): the library's own.

The Adams family (:mod:`._adams`) and ``scipy_solver`` (:mod:`._scipy`) bypass the engine, so
they call the same checks :func:`mali_func.odeint` makes: ``func`` callable, ``y0`` a finite
floating tensor or tuple of them, ``t`` 1-D and strictly monotonic (cast to ``y0``'s dtype, as
torchdiffeq does), positive finite tolerances, and the field returning ``y0``'s shapes and dtype
at its first evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from .._checks import _positive, check_t, check_y0
from ..field._field import _as_state, check_output

State = tuple[Tensor, ...]


def torchdiffeq_inputs(
    func: Any, y0: Any, t: Any, rtol: Any, atol: Any
) -> tuple[State, bool, Tensor]:
    """``(state, tuple_state, t)`` after the checks; raises naming the argument."""
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y), got {type(func).__name__}")
    state, tuple_state = check_y0(y0)
    t = check_t(t, state[0])
    _positive("rtol", rtol)
    _positive("atol", atol)
    return state, tuple_state, t


def checked_field(
    func: Callable[..., Any], state: State, tuple_state: bool, args: tuple[Tensor, ...]
) -> Callable[[Tensor, State], State]:
    """``field(t, y) -> State`` calling ``func(t, y, *args)``; its first output is checked
    against ``y0``'s shapes and dtype (a wrong field fails at once, not with a shape error
    deep inside a solver)."""
    pending = [True]

    def field(t: Tensor, y: State) -> State:
        out = _as_state(func(t, y if tuple_state else y[0], *args), tuple_state=tuple_state,
                        n=len(state))  # fmt: skip
        if pending:
            check_output(out, state)
            pending.clear()
        return out

    return field


def settings_of(
    method: str, options: Any, valid: tuple[str, ...], rest: dict[str, Any]
) -> dict[str, Any]:
    """``options`` as a dict after refusing library keywords left in ``rest`` and unknown
    option keys, each error naming what is valid."""
    if rest:
        raise ValueError(
            f"method={method!r} takes torchdiffeq's arguments only; {sorted(rest)} apply to "
            "the library's own methods"
        )
    settings = dict(options or {})
    unknown = [k for k in settings if k not in valid]
    if unknown:
        raise ValueError(
            f"unknown options {unknown} for method={method!r}; valid keys: {list(valid)}"
        )
    return settings


def stacked_y0(state: State, tuple_state: bool) -> Any:
    """The solution at a 1-element ``t``: ``y0`` stacked, as torchdiffeq returns it."""
    ys = tuple(y.unsqueeze(0) for y in state)
    return ys if tuple_state else ys[0]


def positive_option(options: dict[str, Any], key: str) -> float:
    """``options[key]`` as a positive finite number, or the error naming it."""
    return _positive(f"options[{key!r}]", options[key])


__all__ = ["checked_field", "positive_option", "settings_of", "stacked_y0", "torchdiffeq_inputs"]
