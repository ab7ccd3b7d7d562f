r"""The plain explicit Runge-Kutta step: not reversible, for ``gradient="backprop" | "checkpoint"``.

For a tableau (:class:`~mali_func.schemes.ButcherTableau`) with stages
:math:`k_i = f(t + c_i h, y + h \sum_{j<i} a_{ij} k_j)` the step is

.. math::

    y' = y + h \sum_i b_i k_i,

with, for a tableau that has an embedded row, the local error estimate
:math:`h \sum_i (b_i - \hat b_i) k_i`. One evaluation per stage and no second state: half the
work of the reversible coupling (:class:`~mali_func.schemes.CoupledRK`) and the base method's own
stability region, but no inverse, so MALI cannot rebuild the trajectory backwards; the exact
gradient comes from autograd through every step (``"backprop"``, memory linear in the steps) or
from recomputation out of a bounded set of stored states (``"checkpoint"``,
:mod:`mali_func.gradients._checkpoint`).
"""

from __future__ import annotations

from torch import Tensor

from ._scheme import Field, Params, ReversibleScheme, State
from ._tableau import ButcherTableau, tableau_named


class RungeKutta(ReversibleScheme):
    """The plain step of an explicit Runge-Kutta tableau (``odeint(method=..., coupling=None)``).

    Despite the base class it has no inverse: ``gradient="mali"`` refuses it, ``"checkpoint"``
    and ``"backprop"`` give its exact gradient.
    """

    def __init__(self, tableau: ButcherTableau | str) -> None:
        tableau = tableau_named(tableau)  # a name ("rk4") is a shorthand
        if not isinstance(tableau, ButcherTableau):
            raise TypeError(f"tableau must be a ButcherTableau, got {type(tableau).__name__}")
        self.tableau = tableau
        self.order = tableau.order
        self.evaluations_per_step = tableau.solution_stages
        self.evaluations_with_error = tableau.stages
        if tableau.b_error is not None:
            self.error_order = tableau.error_order or tableau.order - 1

    def __repr__(self) -> str:
        return f"RungeKutta({self.tableau.name})"

    def has(self, method: str) -> bool:
        if method == "step_with_error":
            return self.tableau.b_error is not None
        return super().has(method)

    def step(self, field: Field, t: Tensor, h: Tensor, state: State, params: Params) -> State:
        psi = self.tableau.increment(field, t, h, state, params)[0]
        return tuple(y + p for y, p in zip(state, psi))

    def step_with_error(
        self, field: Field, t: Tensor, h: Tensor, state: State, params: Params
    ) -> tuple[State, State]:
        psi, err = self.tableau.increment(field, t, h, state, params, error=True)
        assert err is not None
        return tuple(y + p for y, p in zip(state, psi)), err
