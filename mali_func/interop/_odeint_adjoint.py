"""``odeint_adjoint``: :func:`mali_func.odeint` with torchdiffeq's defaults, the drop-in for
``from torchdiffeq import odeint_adjoint as odeint``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor

from .._checks import UNCAPPED
from .._integrate import integrate
from .._odeint import TensorOrTuple
from ..backends._mode import tracing
from ..gradients._strategies import MALI
from ..schemes import ADAPTIVE_METHODS, TABLEAUS
from ..stepping._steps import Adaptive, Fixed
from ._adams import METHODS as ADAMS
from ._adams import adams_odeint
from ._compat import FIXED_GRID_METHODS
from ._scipy import scipy_odeint
from ._shorthands import expand, replaced

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
    coupling and MALI instead; ``gradient="backprop"`` alone keeps the plain step.
    ``method="rk4"`` is torchdiffeq's: Kutta's 3/8 rule (``"rk4_alt"``; :func:`odeint`'s
    ``"rk4"`` is the classic tableau). Every argument of :func:`odeint` is accepted."""
    if isinstance(method, str) and method in ADAMS:
        return adams_odeint(
            func, y0, t, TORCHDIFFEQ_RTOL if rtol is None else rtol,
            TORCHDIFFEQ_ATOL if atol is None else atol, options, method=method, **kwargs,
        )  # fmt: skip
    if method == "scipy_solver":
        return scipy_odeint(
            func, y0, t, TORCHDIFFEQ_RTOL if rtol is None else rtol,
            TORCHDIFFEQ_ATOL if atol is None else atol, options, **kwargs,
        )  # fmt: skip
    if method == "rk4":  # torchdiffeq's "rk4" steps by the 3/8 rule (its rk4_alt_step_func)
        method = "rk4_alt"
    # The defaults are decided before the shorthands are folded into objects, so that
    # checkpoints=4 configures the default Checkpoint() of a plain Runge-Kutta method.
    args, stats = kwargs.pop("args", ()), kwargs.pop("stats", False)
    gradient = kwargs.pop("gradient", None)
    plain = "coupling" not in kwargs and (
        (isinstance(method, str) and method in TABLEAUS)
        or (method is None and kwargs.get("scheme") is None and TORCHDIFFEQ_METHOD in TABLEAUS)
    )
    if gradient is None:
        gradient = "checkpoint" if plain else "mali"
    solve = expand(
        "odeint_adjoint", rtol=rtol, atol=atol, method=method, steps=kwargs.pop("steps", None),
        gradient=gradient, keywords=kwargs,
    )  # fmt: skip
    if solve["method"] is None and solve.get("scheme") is None:
        solve["method"] = TORCHDIFFEQ_METHOD
    if plain and not isinstance(solve["gradient"], MALI):
        solve["coupling"] = None
    # torchdiffeq's fixed grids (options' step_size or grid_constructor, or a fixed method
    # stepping along t) ignore its tolerances, which here refuse a fixed grid: dropped.
    keys = options if isinstance(options, Mapping) else {}
    spelled = "step_size" in keys or "grid_constructor" in keys
    spelled = spelled or (solve["steps"] is None and solve["method"] in FIXED_GRID_METHODS)
    if spelled:
        solve["rtol"] = solve["atol"] = None
    elif not isinstance(solve["steps"], Fixed):
        solve["steps"] = _uncapped(solve, keys)
        for name, default in (("rtol", TORCHDIFFEQ_RTOL), ("atol", TORCHDIFFEQ_ATOL)):
            if solve[name] is None:  # not given, as a parameter or in Adaptive(...)
                solve[name] = default
    return integrate(func, y0, t, options=options, args=args, stats=stats, **solve)


def _uncapped(solve: dict[str, Any], options: Mapping[str, Any]) -> Any:
    """Adaptive steps as torchdiffeq takes them: output times interpolated (dense output), and no
    cap on the steps in eager code (``max_steps`` defaults to
    :data:`~mali_func._checks.UNCAPPED`; compiled and exported solves keep 10,000, which sizes
    their loops)."""
    steps = solve["steps"]
    adapts = (
        isinstance(steps, Adaptive)
        or solve.get("scheme") is not None
        or (solve["method"] in ADAPTIVE_METHODS)
    )
    if not adapts:
        return steps
    steps = Adaptive() if steps is None else steps
    changes: dict[str, Any] = {}
    if steps.interpolate is None:
        changes["interpolate"] = True
    if not tracing() and "max_num_steps" not in options and steps.max_steps is None:
        changes["max_steps"] = UNCAPPED
    return replaced(steps, **changes) if changes else steps
