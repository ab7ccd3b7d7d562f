"""Reversible one-step schemes: pure step and inverse functions, one scheme per module."""

from ._alf import ALF
from ._scheme import VJP, Field, Params, ReversibleScheme, State

__all__ = ["ALF", "VJP", "Field", "Params", "ReversibleScheme", "State"]
