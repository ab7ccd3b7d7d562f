"""torchdiffeq's calling convention, translated to :func:`mali_func.odeint`'s own arguments.

torchdiffeq (Chen et al., "Neural Ordinary Differential Equations", NeurIPS 2018) calls
``odeint(func, y0, t, rtol, atol, method, options)`` and ``odeint_adjoint(..., adjoint_params=,
adjoint_rtol=, ...)``. Here both names are the same MALI solve: its backward replays the forward
steps exactly, so the adjoint's own tolerances and method have nothing to configure and are
accepted as no-ops. ``options`` carries solver settings under torchdiffeq's keys; they map to ours:

==================  ==============================================================
``step_size``       ``step_size`` (fixed steps of at most that size per interval)
``first_step``      ``first_step`` (the first adaptive step)
``max_num_steps``   ``max_steps`` (most trial steps of an adaptive solve)
``safety``          ``controller=IntegralController(safety=...)``
``dfactor``         its ``min_factor`` (the most a step may shrink, default 0.2)
``ifactor``         its ``max_factor`` (the most a step may grow, default 10)
==================  ==============================================================

torchdiffeq's defaults for the last three are the integral controller's own.

The method names that torchdiffeq and this library share (``"euler"``, ``"midpoint"``,
``"heun3"``, ``"adaptive_heun"``, ``"bosh3"``, ``"rk4"``, ``"dopri5"``, ``"tsit5"``) name the
reversible coupling of the same tableau here (as do ``"heun2"``, ``"fehlberg2"`` and ``"dopri8"``).
The Adams family and ``"scipy_solver"`` have no reversible form: :func:`odeint` refuses them,
:func:`~mali_func.odeint_adjoint` runs them as torchdiffeq does (:mod:`._adams`,
:mod:`._scipy`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor

from .. import schemes
from ..stepping._controllers import Controller, IntegralController
from ..stepping._steps import Adaptive, Fixed, Steps
from ._landings import KEYS as LANDING_KEYS

OPTION_KEYS = ("step_size", "first_step", "max_num_steps", "min_step", "max_step", "norm",
               "perturb")  # fmt: skip
"""The torchdiffeq ``options`` keys that map to ours, besides the controller's (and ``jump_t``,
``step_t``, ``grid_constructor``: :mod:`._landings`)."""
ADAPTIVE_KEYS = ("first_step", "max_num_steps", "min_step", "max_step", "norm", "safety",
                 "dfactor", "ifactor", "jump_t", "step_t")  # fmt: skip
FIXED_GRID_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4", "rk4_alt")
"""torchdiffeq's fixed-grid method names: without a step size they step from each time of ``t``
to the next, as in torchdiffeq (``"heun"``, ``"reversible_heun"`` and custom schemes without an
error estimate still ask for a grid)."""
"""The torchdiffeq ``options`` keys that have a meaning here, besides the controller's."""

CONTROLLER_KEYS = {"safety": "safety", "dfactor": "min_factor", "ifactor": "max_factor"}
"""torchdiffeq's ``options`` keys of its step-size controller, and ours."""

_REFUSED_OPTIONS = {
    "interp": "interp is not supported: outputs are steps that land on every t[i]",
}
_NOT_REVERSIBLE = {
    "explicit_adams": "a multistep method; mali_func.odeint_adjoint runs it (differentiated "
    "by backprop), or use 'rk4' (fixed grid) or 'dopri5' (adaptive)",
    "implicit_adams": "an implicit multistep method; mali_func.odeint_adjoint runs it "
    "(differentiated by backprop), or use 'dopri5' or 'tsit5' at a smaller rtol",
    "fixed_adams": "a multistep method; mali_func.odeint_adjoint runs it (differentiated by "
    "backprop), or use 'rk4' on the same grid",
    "scipy_solver": "SciPy's solvers run outside autograd; mali_func.odeint_adjoint runs it "
    "(continuous adjoint), or use 'dopri5' or 'tsit5' (adaptive)",
}


def translate(
    method: str | None,
    options: Mapping[str, Any] | None,
    steps: Steps | None,
    *,
    adjoint_params: Iterable[Any] | None = None,
    **unused: Any,
) -> Steps | None:
    """Check torchdiffeq's extra arguments; return ``steps`` with ``options`` folded in
    (``adjoint_rtol``, ``adjoint_atol``, ``adjoint_method``, ``adjoint_options``: nothing to
    configure, MALI's backward replays the forward steps)."""
    if isinstance(method, str) and method in _NOT_REVERSIBLE:
        raise ValueError(
            f"method {method!r} (torchdiffeq) has no reversible form here: "
            f"{_NOT_REVERSIBLE[method]}. mali-func's methods are {list(schemes.METHODS)}"
        )
    _check_adjoint_params(adjoint_params)
    if options is None:
        return steps
    _check_keys(options)
    if "step_size" in options:
        if isinstance(steps, Fixed):
            name = "n_steps" if steps.n is not None else "step_size="
            raise ValueError(f"give options['step_size'] or {name}, not both")
        _refuse_adaptive(steps, [k for k in options if k in ADAPTIVE_KEYS])
        return Fixed(size=options["step_size"])
    if isinstance(steps, Fixed):
        _refuse_adaptive(Adaptive(), [k for k in options if k in ADAPTIVE_KEYS])
    if not any(k in ADAPTIVE_KEYS for k in options):
        return steps
    current = steps if isinstance(steps, Adaptive) else Adaptive()
    ours = {"first_step": current.first_step, "max_num_steps": current.max_steps}
    ours |= {k: getattr(current, k) for k in ("min_step", "max_step", "norm")}
    for key in options:
        if key in CONTROLLER_KEYS and current.controller is not None:
            raise ValueError(f"give options[{key!r}] or controller=, not both")
        if key in ours and ours[key] is not None:
            name = "max_steps" if key == "max_num_steps" else key
            raise ValueError(f"give options[{key!r}] or {name}=, not both")
    return Adaptive(
        max_steps=_whole(options["max_num_steps"])
        if "max_num_steps" in options
        else current.max_steps,
        first_step=options.get("first_step", current.first_step),
        controller=_controller(options) or current.controller,
        min_step=options.get("min_step", current.min_step),
        max_step=options.get("max_step", current.max_step),
        norm=options.get("norm", current.norm),
        interpolate=current.interpolate,
    )


def _whole(value: Any) -> int:
    """torchdiffeq's ``max_num_steps``: an int, or a float that is one (torchdiffeq compares it)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"options['max_num_steps'] must be a whole number, got {value!r}")
    return value


def _check_adjoint_params(adjoint_params: Any) -> None:
    if adjoint_params is None:
        return
    if isinstance(adjoint_params, Tensor) or not isinstance(adjoint_params, Iterable):
        raise TypeError(
            "adjoint_params must be a sequence of tensors (e.g. tuple(func.parameters())), "
            f"got {type(adjoint_params).__name__}"
        )
    for k, p in enumerate(adjoint_params):
        if not isinstance(p, Tensor):
            raise TypeError(f"adjoint_params[{k}] must be a tensor, got {type(p).__name__}")


def _check_keys(options: Any) -> None:
    if not isinstance(options, Mapping):
        raise TypeError(f"options must be a dict, got {type(options).__name__}")
    for key in options:
        if key in _REFUSED_OPTIONS:
            raise ValueError(f"options[{key!r}]: {_REFUSED_OPTIONS[key]}")
        if key not in OPTION_KEYS and key not in CONTROLLER_KEYS and key not in LANDING_KEYS:
            raise ValueError(
                f"options has an unknown key {key!r}; valid keys: "
                f"{[*OPTION_KEYS, *LANDING_KEYS]} and the step-size controller's "
                f"{list(CONTROLLER_KEYS)}"
            )


def _refuse_adaptive(steps: Steps | None, keys: list[str]) -> None:
    """Adaptive settings beside a fixed grid: named, as :func:`~mali_func._checks.check_adaptive`
    names them."""
    names = [n for n in ("max_steps", "first_step", "controller", "min_step", "max_step", "norm")
             if isinstance(steps, Adaptive) and getattr(steps, n) is not None]  # fmt: skip
    names += ["controller" if k in CONTROLLER_KEYS else
              "max_steps" if k == "max_num_steps" else k for k in keys]  # fmt: skip
    if names:
        raise ValueError(
            f"{', '.join(dict.fromkeys(names))} apply to adaptive solves only; drop them or drop "
            "n_steps/step_size"
        )


def _controller(options: Mapping[str, Any]) -> Controller | None:
    """torchdiffeq's controller keys as an :class:`IntegralController`, if any are given."""
    factors = {CONTROLLER_KEYS[k]: v for k, v in options.items() if k in CONTROLLER_KEYS}
    if not factors:
        return None
    try:
        return IntegralController(**factors)
    except (TypeError, ValueError) as err:
        given = {k: v for k, v in options.items() if k in CONTROLLER_KEYS}
        raise type(err)(
            f"options {given}: {err} (dfactor is min_factor, ifactor is max_factor)"
        ) from None
