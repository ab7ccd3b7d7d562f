"""The keyword forms of :func:`mali_func.odeint`'s options, expanded from its objects.

``odeint`` takes one object per concept: ``method`` (a name or a
:class:`~mali_func.ReversibleScheme`), ``steps`` (:class:`~mali_func.Fixed` or
:class:`~mali_func.Adaptive`) and ``gradient`` (a name, or :class:`~mali_func.MALI`,
:class:`~mali_func.Checkpoint`, :class:`~mali_func.Backprop`). The keywords that configured them
before (``n_steps``, ``eta``, ``checkpoints``, ...) stay accepted as documented shorthands: a
keyword is the short way to set one option, so nothing written against the earlier signature
breaks. :func:`expand` turns both spellings into one set of keywords for the engine, and refuses
an option given twice or a keyword nobody takes, naming it. torchdiffeq's own keywords
(``event_fn``, ``adjoint_*``) pass through to :mod:`._compat`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..gradients._strategies import MALI, Backprop, Checkpoint
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

# The value an object's field has when the user left it alone (it then sets nothing).
_UNSET = {"unroll": 1, "fallback": True, "reconstruction_tol": "auto"}


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
    """The engine's keywords from ``odeint``'s objects and shorthand ``keywords``."""
    allowed = set(SHORTHANDS) | (set(TORCHDIFFEQ) if torchdiffeq else set())
    unknown = sorted(set(keywords) - allowed)
    if unknown:
        raise TypeError(f"{caller}() got an unexpected keyword argument {unknown[0]!r}")
    out: dict[str, Any] = dict(keywords)
    given = set(keywords) | {k for k, v in (("rtol", rtol), ("atol", atol)) if v is not None}
    out["rtol"], out["atol"] = rtol, atol
    if isinstance(method, ReversibleScheme):
        if keywords.get("scheme") is not None:
            raise TypeError("the scheme is given twice: as method= and as scheme=; give it once")
        out["scheme"], method = method, None
    elif method is not None and not isinstance(method, str):
        raise TypeError(
            f"method must be a method name or a ReversibleScheme, got {type(method).__name__}"
        )
    out["method"] = method
    if steps is not None:
        if not isinstance(steps, (Fixed, Adaptive)):
            raise TypeError(
                f"steps must be Fixed(...) or Adaptive(...), got {type(steps).__name__}"
            )
        _merge(out, given, steps.keywords(), f"steps={type(steps).__name__}(...)")
    if isinstance(gradient, (MALI, Checkpoint, Backprop)):
        options = gradient.keywords()
        out["gradient"] = options.pop("gradient")
        _merge(out, given, options, f"gradient={type(gradient).__name__}(...)")
    else:
        out["gradient"] = gradient
    return out


def _merge(out: dict[str, Any], given: set[str], options: Mapping[str, Any], where: str) -> None:
    for name, value in options.items():
        if value is None or (name in _UNSET and value == _UNSET[name]):
            continue
        if name in given:
            raise TypeError(f"{name} is given twice: as {name}= and in {where}; give it once")
        out[name] = value
