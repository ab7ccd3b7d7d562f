"""Former name of :mod:`mali_func.schemes`, kept so that existing imports keep working."""

from ..schemes import ALF, VJP, Field, Params, ReversibleScheme, State

__all__ = ["ALF", "VJP", "Field", "Params", "ReversibleScheme", "State"]
