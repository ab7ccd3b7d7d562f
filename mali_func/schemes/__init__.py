"""Reversible one-step schemes: pure step and inverse functions, one scheme per module.

Public: the schemes (:class:`ALF`, :class:`CoupledRK`, :class:`RungeKutta`,
:class:`ReversibleHeun`), the :class:`ReversibleScheme` base for one's own, the Butcher tableaus
(:data:`TABLEAUS`, :class:`ButcherTableau`), the method names and the type aliases a scheme is
written with (``Field``, ``Params``, ``State``). ``scheme_for`` (a method name to its scheme) and
the coupling default are the library's own, importable from :mod:`._methods`.
"""

from ._alf import ALF
from ._coupled import CoupledRK
from ._heun import ReversibleHeun
from ._methods import ADAPTIVE_METHODS, METHODS
from ._plain import RungeKutta
from ._scheme import Field, Params, ReversibleScheme, State
from ._tableau import TABLEAUS, ButcherTableau

__all__ = [
    "ADAPTIVE_METHODS",
    "ALF",
    "METHODS",
    "TABLEAUS",
    "ButcherTableau",
    "CoupledRK",
    "Field",
    "Params",
    "ReversibleHeun",
    "ReversibleScheme",
    "RungeKutta",
    "State",
]
