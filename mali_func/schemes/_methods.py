"""``odeint(method=...)``: scheme names and the options that configure them.

``"alf"`` is the asynchronous leapfrog scheme (its option is ``eta``), ``"reversible_heun"`` the
reversible Heun method (no option); every Runge-Kutta name means the reversible coupling
(:class:`CoupledRK`) of that tableau (its option is ``coupling``: a number in (0, 1] or
``"auto"``, the default), and with ``coupling=None`` the plain Runge-Kutta step
(:class:`RungeKutta`: no inverse, for ``gradient="checkpoint"`` or ``"backprop"``).
"""

from __future__ import annotations

import dataclasses

from ._alf import ALF
from ._coupled import CoupledRK
from ._heun import ReversibleHeun
from ._plain import RungeKutta
from ._scheme import ReversibleScheme
from ._tableau import TABLEAUS

DEFAULT_COUPLING = "auto"
"""``lambda`` of the coupled schemes unless given: chosen per step (:mod:`._coupled`). Measured
(README, "Reversible Runge-Kutta methods"): on a contracting problem it beats the best fixed value
at equal steps, and on a long oscillatory solve it keeps the reconstruction at round-off where a
fixed 0.9 lets it explode."""


class _Default(str):
    """The default of ``coupling``: equal to ``"auto"``, but told apart from a given ``"auto"``."""

    __slots__ = ()


COUPLING_DEFAULT: str = _Default(DEFAULT_COUPLING)
"""``odeint``'s default ``coupling`` (``"auto"``), which ALF and reversible Heun ignore."""

METHODS = ("alf", "reversible_heun", *TABLEAUS)
ADAPTIVE_METHODS = ("alf", *(name for name, tab in TABLEAUS.items() if tab.b_error is not None))


def scheme_for(
    method: str | None,
    scheme: ReversibleScheme | None,
    *,
    eta: float | None,
    coupling: float | str | None,
) -> ReversibleScheme:
    """The scheme that ``method``/``scheme`` and their options ask for (ALF by default)."""
    if scheme is not None:
        if method is not None:
            raise ValueError("give either method or scheme, not both")
        if not isinstance(scheme, ReversibleScheme):
            raise TypeError(f"scheme must be a ReversibleScheme, got {type(scheme).__name__}")
        if eta is not None or not _unset(coupling):
            raise ValueError(
                "eta and coupling configure a method; with scheme=, set it on the scheme instead"
            )
        return scheme
    method = "alf" if method is None else method
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if method in ("alf", "reversible_heun") and not (_unset(coupling) or coupling is None):
        raise ValueError(f"coupling applies to the Runge-Kutta methods, not to method={method!r}")
    if method == "alf":
        return ALF(1.0 if eta is None else eta)
    if eta is not None:
        raise ValueError(f"eta is ALF's damping; method={method!r} does not take it")
    if method == "reversible_heun":
        return ReversibleHeun()
    if coupling is None:
        return RungeKutta(TABLEAUS[method])
    return CoupledRK(TABLEAUS[method], coupling)


def _unset(coupling: object) -> bool:
    return isinstance(coupling, _Default)


def perturbed(scheme: ReversibleScheme) -> ReversibleScheme:
    """``scheme`` with its stages at a step's ends evaluated one ulp inside the step
    (torchdiffeq's ``options={"perturb": True}``): Runge-Kutta steps, plain or coupled."""
    if isinstance(scheme, RungeKutta):
        return RungeKutta(dataclasses.replace(scheme.tableau, perturb=True))
    if isinstance(scheme, CoupledRK):
        return CoupledRK(dataclasses.replace(scheme.tableau, perturb=True), scheme.coupling)
    raise ValueError(
        f"options['perturb'] applies to the Runge-Kutta methods, not to {scheme!r}; put the "
        "discontinuity on the grid instead (a time of t)"
    )
