"""Reversible one-step schemes: pure step and inverse functions, one scheme per module."""

from ._alf import ALF
from ._coupled import CoupledRK
from ._heun import ReversibleHeun
from ._methods import ADAPTIVE_METHODS, COUPLING_DEFAULT, DEFAULT_COUPLING, METHODS, scheme_for
from ._plain import RungeKutta
from ._scheme import VJP, Field, Params, ReversibleScheme, State
from ._tableau import TABLEAUS, ButcherTableau

__all__ = [
    "ADAPTIVE_METHODS",
    "ALF",
    "COUPLING_DEFAULT",
    "DEFAULT_COUPLING",
    "METHODS",
    "TABLEAUS",
    "VJP",
    "ButcherTableau",
    "CoupledRK",
    "Field",
    "Params",
    "ReversibleHeun",
    "ReversibleScheme",
    "RungeKutta",
    "State",
    "scheme_for",
]
