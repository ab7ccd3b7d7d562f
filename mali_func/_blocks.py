"""``ODEBlock``: a Neural ODE layer, ``x -> y(t1)`` where ``dy/dt = field(t, y)`` and ``y(t0) = x``.

The block is the place where users meet the integrator inside their own models (Chen et al.,
"Neural Ordinary Differential Equations", NeurIPS 2018): a residual stack in the limit of many
thin layers. Integrated with the asynchronous leapfrog method and differentiated with MALI by
default (Zhuang et al., ICLR 2021), its training memory does not grow with the number of steps.
Any tensor shape works, so a convolutional field on ``(B, C, H, W)`` feature maps is a drop-in.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

import torch
from torch import Tensor, nn

from ._checks import check_adaptive, check_scheme, check_steps, steps_for
from ._integrate import integrate
from .backends._mode import under_vmap
from .gradients._strategies import MALI
from .interop._shorthands import expand
from .schemes._methods import COUPLING_DEFAULT, scheme_for
from .stepping._steps import Fixed


class ODEBlock(nn.Module):
    """Integrate the input from ``t0`` to ``t1`` with ``field(t, x)``.

    Args:
        field: the vector field, an ``nn.Module`` called as ``field(t, x)`` with a 0-dim ``t``.
        t0: the start of the time span.
        t1: its end; ``t1 < t0`` integrates backwards.
        t_eval: optional output times strictly between ``t0`` and ``t1`` or equal to them; the
            block then returns the states at those times stacked along a new first axis
            (``(len(t_eval), *x.shape)``) instead of the state at ``t1``.
        **odeint_options: :func:`mali_func.odeint`'s options: ``method`` (a name or a scheme
            object), ``steps`` (:class:`~mali_func.Fixed` or :class:`~mali_func.Adaptive`, the
            default when no grid is given), ``gradient`` (a name or :class:`~mali_func.MALI`,
            :class:`~mali_func.Checkpoint`, :class:`~mali_func.Backprop`), ``rtol``, ``atol``,
            and odeint's shorthand keywords (``n_steps``, ``step_size``, ``eta``, ...). Stored
            in ``options`` as objects (``steps``, ``gradient``; the shorthands folded in),
            which may be changed in place.

    The time grid is a non-persistent buffer: it follows ``.to(device)`` and stays out of
    ``state_dict``; it is cast to the input's dtype on every call.
    """

    times: Tensor

    def __init__(
        self,
        field: nn.Module,
        *,
        t0: float = 0.0,
        t1: float = 1.0,
        t_eval: Sequence[float] | None = None,
        **odeint_options: Any,
    ) -> None:
        super().__init__()
        if not isinstance(field, nn.Module):
            raise TypeError(f"field must be an nn.Module, got {type(field).__name__}")
        _check_span(t0, t1)
        options = _expanded(odeint_options)
        steps = options.get("steps")
        adaptive = [k for k in ("rtol", "atol") if options.get(k) is not None]
        if isinstance(steps, Fixed) and adaptive:
            fixed = "n_steps" if steps.n is not None else "step_size"
            raise ValueError(
                f"{', '.join(adaptive)} configure adaptive steps, which {fixed} replace: give "
                "one or the other"
            )
        self.register_buffer("times", torch.zeros(0, dtype=torch.float64), persistent=False)
        self._set_grid(t0, t1, t_eval)
        self.field = field
        self.options = options
        _check_options(self.times, self.options)

    # The times are configuration, not weights: set them and the grid follows; a dtype cast of
    # the module (``model.bfloat16().float()``) does not round them.
    @property
    def t0(self) -> float:
        return self._t0

    @t0.setter
    def t0(self, value: float) -> None:
        self._retime(value, self._t1, self._t_eval)

    @property
    def t1(self) -> float:
        return self._t1

    @t1.setter
    def t1(self, value: float) -> None:
        self._retime(self._t0, value, self._t_eval)

    @property
    def t_eval(self) -> tuple[float, ...] | None:
        return self._t_eval

    @t_eval.setter
    def t_eval(self, value: Sequence[float] | None) -> None:
        self._retime(self._t0, self._t1, value)

    def _retime(self, t0: Any, t1: Any, t_eval: Sequence[float] | None) -> None:
        _check_span(t0, t1)
        self._set_grid(t0, t1, t_eval)

    def _set_grid(self, t0: float, t1: float, t_eval: Sequence[float] | None) -> None:
        """The grid ``[t0, *t_eval, t1]`` (checked), the selection of the outputs and the
        ``times`` buffer, in float64 on the buffer's device."""
        grid, select = _grid(float(t0), float(t1), t_eval)
        self._t0, self._t1, self._select, self._grid = float(t0), float(t1), select, tuple(grid)
        self._t_eval = None if t_eval is None else tuple(_times_of(t_eval))
        self._fill_times()

    def _fill_times(self) -> None:
        self.times = torch.tensor(self._grid, dtype=torch.float64, device=self.times.device)

    def _apply(self, fn: Any, recurse: bool = True) -> ODEBlock:
        super()._apply(fn, recurse)
        if self.times.dtype != torch.float64:  # cast back, from the exact grid
            self._fill_times()
        return self

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(
                f"ODEBlock takes one tensor x, got {type(x).__name__}; for a tuple state call "
                "mali_func.odeint, which takes tuples"
            )
        times = self.times.to(dtype=x.dtype, device=x.device)
        ys = integrate(self.field, x, times, **self._solve_options())
        assert isinstance(ys, Tensor)
        out = ys[-1] if self._select is None else ys[self._select]
        if under_vmap():
            # Under vmap the selection is a strided view of the batched solution, and some of
            # torch 2.13's batching rules (group_norm: "Expected X.is_contiguous") refuse such
            # inputs; a contiguous copy changes no value.
            out = out.clone(memory_format=torch.contiguous_format)
        return out

    def _solve_options(self) -> dict[str, Any]:
        """``options`` with ``Fixed(size=...)`` turned into step counts from the block's own
        constant times: the solve then needs no values of ``t``, so it compiles, vmaps and
        exports like ``Fixed(n=...)``. Read at every call, so ``options`` may be changed in
        place, in either spelling (``options["gradient"] = "backprop"`` too)."""
        options = _expanded(self.options)
        options.setdefault("gradient", MALI())
        steps = options.get("steps")
        if isinstance(steps, Fixed) and steps.size is not None:
            spans = [abs(b - a) for a, b in itertools.pairwise(self._grid)]
            options["steps"] = Fixed(n=steps_for(spans, steps.size), unroll=steps.unroll)
        return options

    def extra_repr(self) -> str:
        parts = [f"t0={self.t0}", f"t1={self.t1}"]
        if self.t_eval is not None:
            parts.append(f"t_eval={list(self.t_eval)}")
        parts += [f"{k}={v!r}" for k, v in self.options.items()]
        return ", ".join(parts)


def _expanded(given: dict[str, Any]) -> dict[str, Any]:
    """``odeint``'s arguments as the engine takes them (shorthands folded into the objects), the
    ones that are set: what the block passes to every solve."""
    rest = dict(given)
    for name in ("args", "stats", "options"):
        if name in rest:
            raise TypeError(f"ODEBlock() takes no {name!r}: it is an option of odeint only")
    options = expand(
        "ODEBlock", rtol=rest.pop("rtol", None), atol=rest.pop("atol", None),
        method=rest.pop("method", None), steps=rest.pop("steps", None),
        gradient=rest.pop("gradient", "mali"), keywords=rest, torchdiffeq=False,
    )  # fmt: skip
    if options["gradient"] == MALI() and "gradient" not in given:
        options.pop("gradient")  # the default, left out of the block's repr
    return {k: v for k, v in options.items() if v is not None or k in given}


def _check_span(t0: Any, t1: Any) -> None:
    """``t0`` and ``t1``: finite real numbers that differ."""
    for name, value in (("t0", t0), ("t1", t1)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
    if t0 == t1:
        raise ValueError(f"t0 and t1 must differ, got t0 = t1 = {t0}")


def _check_options(times: Tensor, options: dict[str, Any]) -> None:
    """The checks :func:`odeint` runs on these options, run when the block is built (a bad
    option fails where the model is defined, not at its first call; they run again per call)."""
    steps = options.get("steps")
    fixed = steps if isinstance(steps, Fixed) else None
    counts = None if fixed is None else check_steps(fixed.n, fixed.size, times)
    check_adaptive(counts is None, options.get("rtol"), options.get("atol"), steps)
    coupling = options.get("coupling", COUPLING_DEFAULT)
    scheme = scheme_for(options.get("method"), options.get("scheme"), eta=options.get("eta"),
                        coupling=coupling)  # fmt: skip
    # What the gradient needs (a plain step has no inverse for MALI) is checked, as by odeint,
    # when a gradient is asked for: a block built for inference or export needs none.
    check_scheme(scheme, adaptive=counts is None, gradient=None)


def _times_of(t_eval: Any) -> list[float]:
    """``t_eval`` as floats: a sequence of real numbers or a 1-D tensor (a string, a number or a
    tensor of another shape is refused, naming ``t_eval``)."""
    if not isinstance(t_eval, Tensor) and hasattr(t_eval, "__array__"):  # a numpy array
        t_eval = torch.as_tensor(t_eval)
    if isinstance(t_eval, Tensor):
        if t_eval.ndim != 1 or t_eval.is_complex() or t_eval.dtype == torch.bool:
            raise ValueError(
                f"t_eval must be a 1-D real tensor of times, got {t_eval.dtype} of shape "
                f"{tuple(t_eval.shape)}"
            )
        return [float(s) for s in t_eval.tolist()]
    if isinstance(t_eval, (str, bytes)) or not isinstance(t_eval, Sequence):
        raise TypeError(f"t_eval must be a sequence of times, got {type(t_eval).__name__}")

    def real(s: Any) -> bool:
        if isinstance(s, Tensor):
            return s.numel() == 1 and not (s.is_complex() or s.dtype == torch.bool)
        return isinstance(s, Real) and not isinstance(s, bool)

    bad = [s for s in t_eval if not real(s)]
    if bad:
        raise TypeError(f"t_eval must hold real numbers, got {type(bad[0]).__name__} {bad[0]!r}")
    return [float(s) for s in t_eval]


def _grid(t0: float, t1: float, t_eval: Sequence[float] | None) -> tuple[list[float], Any]:
    """The solve's time grid and the indices of the requested outputs in it."""
    if t_eval is None:
        return [t0, t1], None
    times = _times_of(t_eval)
    if not times:
        raise ValueError("t_eval must hold at least one time")
    if not all(math.isfinite(s) for s in times):
        raise ValueError(f"t_eval must hold finite times, got {times}")
    sign = 1.0 if t1 > t0 else -1.0
    keys = [sign * s for s in times]
    if any(b <= a for a, b in itertools.pairwise(keys)):
        raise ValueError("t_eval must be strictly monotonic in the direction from t0 to t1")
    if keys[0] < sign * t0 or keys[-1] > sign * t1:
        raise ValueError(f"t_eval must lie within [t0, t1] = [{t0}, {t1}], got {times}")
    grid = ([] if times[0] == t0 else [t0]) + times + ([] if times[-1] == t1 else [t1])
    first = 0 if times[0] == t0 else 1
    return grid, slice(first, first + len(times))
