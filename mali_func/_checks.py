"""Validation of :func:`mali_func.odeint`'s arguments, with errors that name the argument.

Checks that need a tensor's value (finiteness, monotonic times, step counts from ``step_size``)
read it on the host once per call, and only for ordinary eager tensors: under ``torch.compile`` or
a :mod:`torch.func` transform the value is not available, and those checks are skipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .backends._mode import is_concrete, tracing
from .schemes import ADAPTIVE_METHODS, ReversibleScheme, RungeKutta
from .stepping._controllers import Controller, IntegralController, Tolerances
from .stepping._steps import check_count, check_size

UNCAPPED = 2**31 - 1
"""``max_steps`` of :func:`mali_func.odeint_adjoint`'s eager adaptive solves: no cap in practice,
as torchdiffeq."""
DEFAULT_MAX_STEPS = 10_000
"""The default ``max_steps`` of :func:`mali_func.odeint` (a solve that cannot finish, such as
ALF past its stability limit, fails instead of running on), and of every compiled or exported
adaptive solve (their buffers, records and checkpoint plans are sized by it)."""


def check_scheme(scheme: ReversibleScheme, *, adaptive: bool, gradient: Any = None) -> None:
    """Refuse a scheme that lacks a method the solve needs, naming the scheme and the method
    (``gradient=None``: no gradient is asked for, so no inverse is needed)."""
    missing = []
    if adaptive and not scheme.has("step_with_error"):
        missing.append(
            "step_with_error, so it cannot choose its steps: give n_steps or step_size (or "
            "torchdiffeq's options={'step_size': h}), or use a method that adapts "
            f"({', '.join(ADAPTIVE_METHODS)})"
        )
    rebuilds = gradient is not None and gradient.rebuilds
    if rebuilds and not (scheme.has("inverse") or scheme.has("reverse")):
        plain = isinstance(scheme, RungeKutta)
        missing.append(
            "inverse, which gradient='mali' needs to rebuild the steps backwards; use "
            "gradient='checkpoint' (the same exact gradient, memory bounded by `checkpoints` "
            "states) or 'backprop'"
            + (", or its reversible coupling (coupling='auto')" if plain else "")
        )
    if missing:
        raise ValueError(f"scheme {scheme!r} does not implement {' and '.join(missing)}")


def check_y0(y0: Any) -> tuple[tuple[Tensor, ...], bool]:
    """Return ``y0`` as a tuple of tensors and whether it was given as a tuple."""
    if isinstance(y0, Tensor):
        parts, is_tuple = (y0,), False
    elif isinstance(y0, (tuple, list)) and y0 and all(isinstance(y, Tensor) for y in y0):
        parts, is_tuple = tuple(y0), True
    else:
        raise TypeError(
            "y0 must be a floating-point tensor or a non-empty tuple of them, got "
            f"{type(y0).__name__}"
        )
    for i, y in enumerate(parts):
        name = f"y0[{i}]" if is_tuple else "y0"
        if not y.is_floating_point():
            raise TypeError(f"{name} must have a floating-point dtype, got {y.dtype}")
        if y.dtype != parts[0].dtype:
            raise TypeError(f"all of y0 must share one dtype, got {parts[0].dtype} and {y.dtype}")
        if y.device != parts[0].device:
            raise ValueError(
                f"all of y0 must be on one device, got {parts[0].device} and {y.device}"
            )
        if is_concrete(y) and not bool(torch.isfinite(y).all()):
            raise ValueError(f"{name} must be finite, got a NaN or infinite entry")
    return parts, is_tuple


def check_t(t: Any, like: Tensor) -> Tensor:
    """``t`` as a 1-D tensor on ``like``'s dtype (a floating ``t`` of another dtype is cast, as
    torchdiffeq does; an integer one is refused) and device, strictly monotonic."""
    if type(t).__module__ == "numpy" and hasattr(t, "tolist"):  # an array: like a list
        t = t.tolist()
    if isinstance(t, (list, tuple)) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in t
    ):
        t = torch.tensor(t, dtype=like.dtype, device=like.device)
    if not isinstance(t, Tensor):
        raise TypeError(f"t must be a 1-D tensor of times, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"t must have a floating-point dtype, got {t.dtype}")
    cast_from = None
    if t.dtype != like.dtype:  # as torchdiffeq: the times follow the state's precision
        cast_from, original = t.dtype, t
        t = t.to(like.dtype)
    if t.device != like.device:
        raise ValueError(f"t must be on the device of y0 ({like.device}), got {t.device}")
    if t.ndim != 1:
        raise ValueError(f"t must be 1-D, got shape {tuple(t.shape)}")
    if t.shape[0] < 1:
        raise ValueError("t must hold at least 1 time (one time returns y0), got none")
    if is_concrete(t):
        if not bool(torch.isfinite(t).all()):
            raise ValueError("t must be finite, got a NaN or infinite entry")
        dt = t[1:] - t[:-1]
        if not (bool((dt > 0).all()) or bool((dt < 0).all())):
            if cast_from is not None and is_concrete(original):
                steps = original[1:] - original[:-1]
                if bool((steps > 0).all()) or bool((steps < 0).all()):
                    raise ValueError(
                        f"t is strictly monotonic in {cast_from} but not once cast to y0's "
                        f"dtype {like.dtype} (times follow the state's precision, as in "
                        "torchdiffeq): some times lie closer than that dtype resolves; give y0 "
                        f"in {cast_from}, or times further apart"
                    )
            raise ValueError("t must be strictly increasing or strictly decreasing")
    return t


def check_steps(n_steps: Any, step_size: Any, t: Tensor) -> tuple[int, ...] | None:
    """Number of steps in each interval of ``t``; ``None`` asks for adaptive steps."""
    if n_steps is None and step_size is None:
        return None
    if n_steps is not None and step_size is not None:
        raise ValueError("give either n_steps or step_size, not both")
    intervals = t.shape[0] - 1
    if n_steps is not None:
        if isinstance(n_steps, (tuple, list)):
            if len(n_steps) != intervals:
                raise ValueError(
                    f"n_steps as a sequence needs one count per interval of t ({intervals}), "
                    f"got {len(n_steps)}"
                )
            return tuple(check_count(n, f"n_steps[{i}]") for i, n in enumerate(n_steps))
        return (check_count(n_steps, "n_steps"),) * intervals
    step_size = number_of("step_size", step_size)
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)):
        raise TypeError(f"step_size must be a real number, got {type(step_size).__name__}")
    check_size(step_size)
    if not is_concrete(t):
        raise ValueError(
            "step_size needs the values of t, which are not available under torch.compile, "
            "export or a torch.func transform; pass n_steps instead (one int, or one per "
            "interval), or make t a constant of the model: ODEBlock(field, t0, t1, "
            "step_size=...) converts step_size to step counts when it is built"
        )
    eps = torch.finfo(t.dtype).eps
    return steps_for((t[1:] - t[:-1]).abs().tolist(), step_size, slack=max(1e-12, 8 * eps))


def steps_for(spans: Sequence[float], step_size: float, slack: float = 1e-12) -> tuple[int, ...]:
    """``ceil(|dt| / step_size)`` steps per interval (at least one). The relative ``slack``
    absorbs the round-off of the times (8 ulps of their dtype): ``ceil(0.3 / 0.1)`` is 3 also
    when 0.3 is a float32."""
    counts = [span / step_size * (1 - slack) for span in spans]
    if not all(math.isfinite(c) and c < 2**62 for c in counts):
        raise ValueError(
            f"step_size={step_size!r} is too small: it gives more steps than can be counted"
        )
    return tuple(max(1, math.ceil(c)) for c in counts)


def number_of(name: str, value: Any) -> Any:
    """A one-element real tensor as its number (torchdiffeq takes tensor tolerances and step
    sizes), in eager code; anything else is returned as given, for the caller's checks. Several
    values (per-component tolerances) are refused, naming ``name``."""
    count = len(value) if isinstance(value, (tuple, list)) else None
    if isinstance(value, Tensor) and value.numel() > 1:
        count = value.numel()
    if count is not None:
        raise TypeError(
            f"{name} must be one number for every component: per-component values (a tuple "
            "or a tensor of several, which torchdiffeq takes for its tolerances) are not "
            f"supported, got a {type(value).__name__} of {count}"
        )
    if not isinstance(value, Tensor) or value.is_complex() or value.dtype == torch.bool:
        return value
    if not is_concrete(value):
        raise TypeError(
            f"{name} must be a number under torch.compile, export or torch.func transforms, "
            "got a tensor"
        )
    return value.item()


def _positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    value = number_of(name, value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    ok = value >= 0 if allow_zero else value > 0
    # math.isfinite does not trace (dynamo makes a number that changed between compiled calls
    # symbolic); comparisons do, and a NaN fails them too.
    finite = -math.inf < value < math.inf
    if not (finite and ok):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be {kind} and finite, got {value}")
    return float(value)


INTERPOLATE_DEFAULT = True
"""Whether adaptive solves interpolate their interior output times by default."""


def check_adaptive(
    adaptive: bool, rtol: Any, atol: Any, steps: Any = None, *, tuple_state: bool = False
) -> Tolerances | None:
    """The settings of an adaptive solve (``rtol``, ``atol`` and an :class:`Adaptive` ``steps``'
    fields); they are refused beside ``n_steps`` or ``step_size``. A ``norm`` is called on a
    tensor, or on a tuple for a tuple state (``tuple_state``), as torchdiffeq calls it."""
    fields = ("max_steps", "first_step", "controller", "min_step", "max_step", "norm",
              "interpolate")  # fmt: skip
    values = {f: getattr(steps, f, None) for f in fields}
    if not adaptive:
        options = (("rtol", rtol), ("atol", atol), *values.items())
        given = [n for n, v in options if v is not None]
        if given:
            raise ValueError(
                f"{', '.join(given)} apply to adaptive solves only; drop them or drop "
                "n_steps/step_size"
            )
        return None
    r = _positive("rtol", 1e-3 if rtol is None else rtol, allow_zero=True)
    a = _positive("atol", 1e-6 if atol is None else atol, allow_zero=True)
    if r == 0 and a == 0:
        raise ValueError("rtol and atol cannot both be 0")
    max_steps, first_step, controller = (values[f] for f in fields[:3])
    if max_steps is None:
        max_steps = DEFAULT_MAX_STEPS
    if isinstance(max_steps, bool) or not isinstance(max_steps, int):
        raise TypeError(f"max_steps must be an int, got {type(max_steps).__name__}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}")
    first = None if first_step is None else _positive("first_step", first_step)
    if controller is None:
        controller = IntegralController()
    elif isinstance(controller, type) or not isinstance(controller, Controller):
        raise TypeError(
            "controller must be an object with methods init(h0) and propose(memory, err, h, "
            "order), such as mali_func.IntegralController(), got "
            f"{controller!r}"
        )
    if tracing():
        # A value that changed between compiled calls is a symbolic float, which while_loop's
        # carried closure does not take: traced solves read the tolerances as 0-dim tensors.
        r, a = torch.scalar_tensor(r), torch.scalar_tensor(a)  # type: ignore[assignment]
        first = None if first is None else torch.scalar_tensor(first)  # type: ignore[assignment]
    lo = (
        0.0
        if values["min_step"] is None
        else _positive("min_step", values["min_step"], allow_zero=True)
    )
    hi = (
        math.inf if values["max_step"] is None else _positive_or_inf("max_step", values["max_step"])
    )
    if lo > hi:
        raise ValueError(f"min_step ({lo}) must not exceed max_step ({hi})")
    norm = values["norm"]
    if norm is not None and not callable(norm):
        raise TypeError(f"norm must be callable on the scaled error, got {type(norm).__name__}")
    if norm is not None and not tuple_state:
        norm = _on_tensor(norm)
    interpolate = values["interpolate"]
    if interpolate is None:
        interpolate = INTERPOLATE_DEFAULT
    if not isinstance(interpolate, bool):
        raise TypeError(f"interpolate must be a bool, got {type(interpolate).__name__}")
    return Tolerances(r, a, max_steps, first, controller, min_step=lo, max_step=hi, norm=norm,
                      interpolate=interpolate)  # fmt: skip


def _positive_or_inf(name: str, value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == math.inf:
        return math.inf
    return _positive(name, value)


def _on_tensor(norm: Any) -> Any:
    """A norm of one tensor, called on the controller's one-element tuple."""

    def on_tuple(scaled: tuple[Tensor, ...]) -> Tensor:
        return norm(scaled[0])

    return on_tuple
