"""Detecting a forward solve that its parasitic mode has taken over.

Both reversible families carry more than the solution, and the extra degree of freedom has a
non-physical (parasitic) mode (Zhuang et al., ICLR 2021, for ALF; McCallum & Foster 2024, for the
coupled Runge-Kutta pair; the project's design notes, sections 1 and 5):

* asynchronous leapfrog carries a velocity ``v ~ f(t, y)``. On contracting dynamics (real
  ``h lambda < 0``) the parasitic root of its step grows like ``1 + h |lambda|`` per step, whatever
  the step count, and alternates in sign. It enters the solution through the half steps
  ``(h/2) v``, so :meth:`mali_func.ALF.parasitic`, ``(|h|/2) max|v - f(t, y)| / (max|y| + atol)``,
  bounds its share of the solution from above;
* a coupled pair ``(y, z)`` starts with ``z = y``; their relative disagreement
  ``|y - z| / (|y| + |z| + atol)`` is the parasitic mode of the coupling.

Each is measured once at the end of a solve (ALF: two field evaluations, counted in the stats),
reported as ``stats.parasitic`` in every mode but export, and warned about in eager code
(:class:`ParasiticModeWarning`, :class:`CouplingWarning`). The absolute floor ``atol`` (the
solve's, or 1e-6 on fixed grids) keeps solutions that decay accurately toward 0 quiet.
Adaptive ALF needs no end check: its error estimate ``h (u - v)`` is this mismatch, held to the
tolerances at every step.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from ..backends._mode import host_view
from ..field._field import BoundField
from ..schemes import ALF, CoupledRK, ReversibleScheme, State


class ParasiticModeWarning(UserWarning):
    """A solve's parasitic (non-physical) mode grew to the size of its solution: the forward
    result is unreliable (ALF on contracting dynamics; a coupling too close to 1)."""


class CouplingWarning(ParasiticModeWarning):
    """The two states of a reversible Runge-Kutta coupling ended far apart: the forward solution
    is unreliable (the coupling let its parasitic mode grow)."""


COUPLING_TOL = 0.01
"""Largest relative disagreement of a coupled solve's final pair before :class:`CouplingWarning`
(healthy solves measure 1e-9 to 1e-3; README)."""

PARASITIC_TOL = 10.0
"""Largest parasitic estimate of a fixed-step ALF solve before :class:`ParasiticModeWarning`.
The estimate bounds the parasitic share of the solution from above (on ``y' = lambda y`` it
overestimates by about ``2 / (h |lambda|)``): oscillatory solves measure 1e-7 to 1e-1; the
README's quickstart reaches 4 mid-training, where its solution is within 3% of dopri5's; ALF's
garbage on ``y' = -5 y`` measures 12 to 614 at 4 to 400 steps (:meth:`ALF.parasitic` raises the
share where the field contracts fast along the mode), the README's contracting
accuracy problem at 100 steps 20 (an error of 4.1 on a solution of size 0.2)."""

STABLE = (
    "use method='tsit5', 'dopri5' or 'rk4' (the reversible coupling, MALI's constant memory), or "
    "coupling=None with gradient='checkpoint'"
)


ELEMENT_SLACK = 1000.0
"""An adaptive coupled solve is also measured element by element, against its own tolerance:
``|y_i - z_i| / (|y_i| + |z_i| + ELEMENT_SLACK atol)``, so that a component which the 2-norm
hides (one decayed to ``atol`` beside large ones) is flagged once its disagreement passes 1% of
its size or ``10 atol`` (``y' = diag(-1, -40) y`` by coupled tsit5 at 1e-6/1e-8: the fast
component ends 6e-6 off, 600 atol, where the 2-norm measure reads 1.5e-4)."""


def decoupling(pair: tuple[Tensor, Tensor], floor: float, *, per_element: bool = False) -> Tensor:
    """``|y - z| / (|y| + |z| + floor sqrt(n))`` of a coupled state's first components (2-norms;
    per sample under ``vmap``), out of the gradient; with ``per_element`` (adaptive solves,
    ``floor`` their ``atol``) at least the largest element's measure (:data:`ELEMENT_SLACK`)."""
    y, z = (x.detach() for x in pair)
    if y.numel() == 0:
        return y.new_zeros(())
    tiny = torch.finfo(y.dtype).tiny
    size = y.flatten().norm() + z.flatten().norm() + floor * math.sqrt(y.numel())
    value = (y - z).flatten().norm() / size.clamp_min(tiny)
    if per_element:
        scale = y.abs() + z.abs() + floor * ELEMENT_SLACK
        value = torch.maximum(value, ((y - z).abs() / scale.clamp_min(tiny)).max())
    return value


def parasitic(
    scheme: ReversibleScheme, bound: BoundField, t: Tensor, steps: tuple[int, ...] | None,
    final: State, floor: float,
) -> tuple[Tensor | None, int]:  # fmt: skip
    """The parasitic measure of a finished solve (``None`` where there is none) and the field
    evaluations it took; warns in eager code."""
    if isinstance(scheme, CoupledRK):
        value = decoupling(scheme.pair(final), floor, per_element=steps is None)
        _warn(value, COUPLING_TOL, CouplingWarning, lambda: (
            f"{scheme!r}: the coupled pair (y, z) ends more than {COUPLING_TOL:.0%} apart "
            "(relative, stats.parasitic; element by element an adaptive solve's 10 atol): the "
            "coupling's parasitic mode grew, so the solution "
            "is unreliable. The field contracts faster than the coupling allows: take more or "
            "smaller steps (a smaller rtol), set a fixed coupling such as 0.9, or use the plain "
            "step (coupling=None) with gradient='checkpoint'."
        ))  # fmt: skip
        return value, 0
    if isinstance(scheme, ALF) and steps is not None:
        with bound.replaying():  # no second update of batch statistics
            last = torch.full_like(t[-1], steps[-1])  # a tensor: a new count compiles once
            value = scheme.parasitic(bound.field, t[-1], (t[-1] - t[-2]) / last, final,
                                     bound.params, floor)  # fmt: skip
        _warn(value, PARASITIC_TOL, ParasiticModeWarning, lambda: (
            f"{scheme!r} with {sum(steps)} fixed steps: ALF's parasitic mode grew to {{worst:.3g}} "
            "times the size of the solution (stats.parasitic), so the result is unreliable. The "
            "field contracts (its Jacobian has eigenvalues with negative real parts), where "
            f"ALF's step is unstable whatever the step count: {STABLE}."
        ))  # fmt: skip
        return value, 2
    return None, 0


def _warn(value: Tensor, tol: float, category: type[Warning], message: Callable[[], str]) -> None:
    """One host read in eager code (the worst sample of a ``vmap``); nothing while tracing (where
    the message is not even built)."""
    seen = host_view(value)
    if seen is None:
        return
    worst = float(seen.detach().max())
    if not worst <= tol:
        warnings.warn(message().format(worst=worst), category, stacklevel=4)
