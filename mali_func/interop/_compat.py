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
reversible coupling of the same tableau here; multistep, implicit and SciPy methods do not exist
in a reversible form and are refused with the list of what does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor

from .. import schemes
from ..stepping._controllers import Controller, IntegralController

OPTION_KEYS = ("step_size", "first_step", "max_num_steps")
"""The torchdiffeq ``options`` keys that have a meaning here, besides the controller's."""

CONTROLLER_KEYS = {"safety": "safety", "dfactor": "min_factor", "ifactor": "max_factor"}
"""torchdiffeq's ``options`` keys of its step-size controller, and ours."""

_REFUSED_OPTIONS = {
    "perturb": "perturb (event handling for discontinuities) is not supported",
    "grid_constructor": "grid_constructor is not supported: give n_steps or step_size",
    "interp": "interp is not supported: outputs are steps that land on every t[i]",
}
_NOT_REVERSIBLE = (
    "dopri8", "fehlberg2", "explicit_adams", "implicit_adams", "fixed_adams", "scipy_solver",
    "rk4_alt",  # the 3/8 rule: not implemented; "rk4" is the classic tableau
)  # fmt: skip


def translate(
    method: str | None,
    options: Mapping[str, Any] | None,
    *,
    n_steps: int | None,
    step_size: float | None,
    first_step: float | None,
    max_steps: int | None,
    controller: Controller | None,
    event_fn: Any,
    adjoint_params: Iterable[Any] | None,
) -> tuple[float | None, float | None, int | None, Controller | None]:
    """Check torchdiffeq's extra arguments; return ``(step_size, first_step, max_steps,
    controller)``."""
    if event_fn is not None:
        raise NotImplementedError(
            "event_fn: event handling is not implemented in mali-func; solve to a fixed end time"
        )
    if isinstance(method, str) and method in _NOT_REVERSIBLE:
        raise ValueError(
            f"method {method!r} (torchdiffeq) has no reversible form here; mali-func's methods "
            f"are {list(schemes.METHODS)}"  # read now: the list may grow
        )
    if adjoint_params is not None:
        if isinstance(adjoint_params, Tensor) or not isinstance(adjoint_params, Iterable):
            raise TypeError(
                "adjoint_params must be a sequence of tensors (e.g. tuple(func.parameters())), "
                f"got {type(adjoint_params).__name__}"
            )
        for k, p in enumerate(adjoint_params):
            if not isinstance(p, Tensor):
                raise TypeError(f"adjoint_params[{k}] must be a tensor, got {type(p).__name__}")
    if options is None:
        return step_size, first_step, max_steps, controller
    if not isinstance(options, Mapping):
        raise TypeError(f"options must be a dict, got {type(options).__name__}")
    for key in options:
        if key in _REFUSED_OPTIONS:
            raise ValueError(f"options[{key!r}]: {_REFUSED_OPTIONS[key]}")
        if key not in OPTION_KEYS and key not in CONTROLLER_KEYS:
            raise ValueError(
                f"options has an unknown key {key!r}; valid keys: {list(OPTION_KEYS)} and the "
                f"step-size controller's {list(CONTROLLER_KEYS)}"
            )
    ours = {"step_size": step_size, "first_step": first_step, "max_num_steps": max_steps}
    for key in options:
        if key in CONTROLLER_KEYS:
            if controller is not None:
                raise ValueError(f"give options[{key!r}] or controller=, not both")
            continue
        if ours[key] is not None:
            name = "max_steps" if key == "max_num_steps" else key
            raise ValueError(f"give options[{key!r}] or {name}=, not both")
    if "step_size" in options and n_steps is not None:
        raise ValueError("give options['step_size'] or n_steps, not both")
    factors = {CONTROLLER_KEYS[k]: v for k, v in options.items() if k in CONTROLLER_KEYS}
    if factors:
        try:
            controller = IntegralController(**factors)
        except (TypeError, ValueError) as err:
            given = {k: v for k, v in options.items() if k in CONTROLLER_KEYS}
            raise type(err)(
                f"options {given}: {err} (dfactor is min_factor, ifactor is max_factor)"
            ) from None
    return (
        options.get("step_size", step_size),
        options.get("first_step", first_step),
        options.get("max_num_steps", max_steps),
        controller,
    )
