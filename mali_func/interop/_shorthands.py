"""The keyword shorthands of :func:`mali_func.odeint`'s options, folded into its objects.

``odeint`` takes one object per concept: ``method`` (a name or a
:class:`~mali_func.ReversibleScheme`), ``steps`` (:class:`~mali_func.Fixed` or
:class:`~mali_func.Adaptive`) and ``gradient`` (a name, or :class:`~mali_func.MALI`,
:class:`~mali_func.Checkpoint`, :class:`~mali_func.Backprop`). The keywords that configured them
before (``n_steps``, ``checkpoints``, ...) stay accepted as documented shorthands: a keyword is
the short way to set one field of one object, so nothing written against the earlier signature
breaks, and the engine sees objects only. :func:`expand` folds the keywords into the objects and
refuses an option given twice, an option of another strategy, or a keyword nobody takes, naming
it. ``eta``, ``coupling`` and ``scheme`` stay keywords of the scheme's construction
(:func:`mali_func.schemes._methods.scheme_for`); torchdiffeq's own keywords (``event_fn``,
``adjoint_*``) pass through to :mod:`._compat`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..gradients._strategies import GRADIENTS, MALI, Backprop, Checkpoint
from ..schemes import ReversibleScheme
from ..stepping._steps import Adaptive, Fixed

SHORTHANDS: dict[str, str] = {
    "n_steps": "steps=Fixed(n=...)",
    "step_size": "steps=Fixed(size=...)",
    "unroll": "steps=Fixed(..., unroll=...)",
    "max_steps": "steps=Adaptive(max_steps=...)",
    "first_step": "steps=Adaptive(first_step=...)",
    "controller": "steps=Adaptive(controller=...)",
    "eta": "method=ALF(eta=...)",
    "coupling": "method=CoupledRK(tableau, coupling=...)",
    "scheme": "method=<scheme>",
    "reconstruction_tol": "gradient=MALI(reconstruction_tol=...)",
    "fallback": "gradient=MALI(fallback=...)",
    "monitor": "gradient=MALI(monitor=...)",
    "checkpoints": "gradient=Checkpoint(budget=...)",
}
"""Each shorthand keyword and the object spelling it stands for."""

TORCHDIFFEQ = ("event_fn", "adjoint_params", "adjoint_rtol", "adjoint_atol", "adjoint_method",
               "adjoint_options")  # fmt: skip
"""torchdiffeq's keywords, accepted by :func:`mali_func.odeint` (:mod:`._compat`)."""

_FIXED = {"n_steps": "n", "step_size": "size", "unroll": "unroll"}
_ADAPTIVE = {"max_steps": "max_steps", "first_step": "first_step", "controller": "controller"}
_GRADIENT = {"reconstruction_tol": (MALI, "reconstruction_tol"), "fallback": (MALI, "fallback"),
             "monitor": (MALI, "monitor"), "checkpoints": (Checkpoint, "budget")}  # fmt: skip


def expand(
    caller: str,
    *,
    rtol: Any,
    atol: Any,
    method: Any,
    steps: Any,
    gradient: Any,
    keywords: Mapping[str, Any],
    torchdiffeq: bool = True,
) -> dict[str, Any]:
    """The engine's arguments: ``rtol``, ``atol``, ``method``, the scheme's keywords, ``steps``
    (an object or ``None``), ``gradient`` (an object), and torchdiffeq's keywords as given."""
    allowed = set(SHORTHANDS) | (set(TORCHDIFFEQ) if torchdiffeq else set())
    unknown = sorted(set(keywords) - allowed)
    if unknown:
        raise TypeError(f"{caller}() got an unexpected keyword argument {unknown[0]!r}")
    # None is "not given", except for reconstruction_tol, where it means "only non-finite".
    given = {k: v for k, v in keywords.items() if v is not None or k == "reconstruction_tol"}
    out: dict[str, Any] = {k: v for k, v in keywords.items() if k in TORCHDIFFEQ or
                           k in ("eta", "coupling", "scheme")}  # fmt: skip
    if isinstance(method, ReversibleScheme):
        if keywords.get("scheme") is not None:
            raise TypeError("the scheme is given twice: as method= and as scheme=; give it once")
        out["scheme"], method = method, None
    elif method is not None and not isinstance(method, str):
        raise TypeError(
            f"method must be a method name or a ReversibleScheme, got {type(method).__name__}"
        )
    out["method"] = method
    out["steps"], out["rtol"], out["atol"] = _steps(steps, rtol, atol, given)
    out["gradient"] = _gradient(gradient, given)
    return out


def _steps(steps: Any, rtol: Any, atol: Any, given: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    """The step object with its shorthands folded in, and ``rtol``, ``atol``."""
    if steps is not None and not isinstance(steps, (Fixed, Adaptive)):
        raise TypeError(f"steps must be Fixed(...) or Adaptive(...), got {type(steps).__name__}")
    fixed = {_FIXED[k]: v for k, v in given.items() if k in _FIXED}
    adaptive = {_ADAPTIVE[k]: v for k, v in given.items() if k in _ADAPTIVE}
    if isinstance(steps, Adaptive):
        grid = [k for k in given if k in _FIXED and _FIXED[k] in ("n", "size")]
        if grid:
            raise TypeError(
                f"{', '.join(grid)} asks for a fixed grid and steps=Adaptive(...) for adaptive "
                "steps: give one of them"
            )
        for name, value in (("rtol", rtol), ("atol", atol)):
            if value is not None and getattr(steps, name) is not None:
                raise TypeError(f"{name} is given twice: as {name}= and in steps=Adaptive(...)")
        rtol = steps.rtol if rtol is None else rtol
        atol = steps.atol if atol is None else atol
        steps = replaced(steps, rtol=None, atol=None)
    if steps is None:
        if "n" in fixed and "size" in fixed:
            raise ValueError("give either n_steps or step_size, not both")
        if "n" in fixed or "size" in fixed:
            steps = Fixed(n=fixed.get("n"), size=fixed.get("size"))
            fixed = {k: v for k, v in fixed.items() if k == "unroll"}
        elif adaptive:
            steps = Adaptive()
    if isinstance(steps, Fixed) and adaptive:
        raise ValueError(
            f"{', '.join(k for k in given if k in _ADAPTIVE)} apply to adaptive solves only; "
            "drop them or drop n_steps/step_size"
        )
    if "unroll" in fixed and not isinstance(steps, Fixed):
        if fixed["unroll"] != 1:
            raise ValueError(
                "unroll sets the steps per compiled loop iteration of a fixed grid "
                "(steps=Fixed(n=..., unroll=...)); adaptive steps take none"
            )
        fixed.pop("unroll")
    if isinstance(steps, (Fixed, Adaptive)):
        names = _FIXED if isinstance(steps, Fixed) else _ADAPTIVE
        options = fixed if isinstance(steps, Fixed) else adaptive
        steps = _merge(steps, options, {v: k for k, v in names.items()}, "steps")
    return steps, rtol, atol


def _gradient(gradient: Any, given: Mapping[str, Any]) -> MALI | Checkpoint | Backprop:
    """The strategy object with its shorthands folded in."""
    if isinstance(gradient, str) and gradient in GRADIENTS:
        named: Any = gradient
        gradient = GRADIENTS[gradient]
    elif isinstance(gradient, (MALI, Checkpoint, Backprop)):
        named = gradient
    else:
        raise ValueError(
            f"gradient must be MALI(), Checkpoint(), Backprop() or one of {tuple(GRADIENTS)}, "
            f"got {gradient!r}"
        )
    options = {k: v for k, v in given.items() if k in _GRADIENT}
    cls = gradient if isinstance(gradient, type) else type(gradient)
    for name in list(options):
        owner, field = _GRADIENT[name]
        if owner is not cls and options[name] == _default(owner, field):
            del options[name]  # another strategy's option at its default asks for nothing
        elif owner is not cls:
            what = "the budget" if name == "checkpoints" else "an option"
            raise ValueError(
                f"{name} is {what} of gradient={owner.name!r} ({SHORTHANDS[name]}); got "
                f"gradient={named!r}"
            )
    fields = {_GRADIENT[k][1]: v for k, v in options.items()}
    if isinstance(gradient, type):
        return gradient(**fields)
    return _merge(gradient, fields, {f: k for k, (_, f) in _GRADIENT.items()}, "gradient")


def _merge(obj: Any, fields: Mapping[str, Any], keyword: Mapping[str, str], where: str) -> Any:
    """``obj`` with ``fields`` set; a field the object already sets (away from its default)
    raises, naming the shorthand ``keyword[field]``."""
    for name in fields:
        current = getattr(obj, name)
        default = _default(type(obj), name)
        if current is not None and current != default:
            raise TypeError(
                f"{keyword[name]} is given twice: as {keyword[name]}= and in "
                f"{where}={type(obj).__name__}(...); give it once"
            )
    return replaced(obj, **fields) if fields else obj


# Read once here: dynamo cannot trace dataclasses.fields (nor dataclasses.replace).
_DEFAULTS: dict[type, dict[str, Any]] = {
    cls: {f.name: f.default for f in dataclasses.fields(cls)}
    for cls in (Fixed, Adaptive, MALI, Checkpoint, Backprop)
}


def _default(cls: type, name: str) -> Any:
    return _DEFAULTS[cls][name]


def replaced(obj: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` that traces under ``torch.compile``."""
    values = {name: getattr(obj, name) for name in _DEFAULTS[type(obj)]}
    return type(obj)(**{**values, **changes})
