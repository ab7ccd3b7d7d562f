r"""Any explicit Runge-Kutta step made algebraically reversible by a coupled pair of states.

McCallum & Foster ("Efficient, Accurate and Stable Gradients for Neural ODEs", arXiv 2410.11648,
2024) carry a pair :math:`(y, z)` with :math:`z_0 = y_0` and, for a base increment
:math:`\Psi_h(t, \cdot)` (:class:`~mali_func.schemes.ButcherTableau`) and a coupling
:math:`\lambda \in (0, 1]`, step

.. math::

    y' = \lambda y + (1 - \lambda) z + \Psi_h(t, z), \qquad z' = z - \Psi_{-h}(t + h, y'),

which inverts exactly:

.. math::

    z = z' + \Psi_{-h}(t + h, y'), \qquad y = \big(y' - (1 - \lambda) z - \Psi_h(t, z)\big)/\lambda.

The output is :math:`y`; the method keeps the base method's order. On :math:`y' = \mu y` with
:math:`w = h \mu` and stability polynomial :math:`R`, the parasitic eigenvalue of the step map is
about :math:`\lambda / R(w)` forward and :math:`R(w) / \lambda` in the reverse reconstruction:
:math:`\lambda` near 1 lets the parasitic mode grow forward on contracting dynamics, a small
:math:`\lambda` amplifies round-off in the reverse pass (measured in the project's design notes,
section 5). The engine measures the reconstruction error of every MALI backward.

The reverse pass evaluates each base increment once, under a VJP: the inverse's
:math:`\Psi_{-h}(t + h, y')` and :math:`\Psi_h(t, z)` are exactly the forward step's, so their
pullbacks give the step's adjoint (:meth:`CoupledRK.reverse`): ``2 s`` field evaluations and
``2 s`` VJPs a step for an ``s``-stage tableau.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._scheme import VJP, Field, Params, Reverse, ReversibleScheme, State, add_optional
from ._tableau import ButcherTableau


class CoupledRK(ReversibleScheme):
    """The reversible coupling of an explicit Runge-Kutta tableau; the state is ``(*y, *z)``.

    Args:
        tableau: the base method.
        coupling: ``lambda`` in (0, 1].
    """

    def __init__(self, tableau: ButcherTableau, coupling: float = 0.9) -> None:
        if not isinstance(tableau, ButcherTableau):
            raise TypeError(f"tableau must be a ButcherTableau, got {type(tableau).__name__}")
        if isinstance(coupling, bool) or not isinstance(coupling, (int, float)):
            raise TypeError(f"coupling must be a real number in (0, 1], got {coupling!r}")
        if not 0.0 < coupling <= 1.0:
            raise ValueError(f"coupling must lie in (0, 1], got {coupling}")
        self.tableau, self.coupling = tableau, float(coupling)
        self.order = tableau.order
        if tableau.b_error is not None:
            self.error_order = tableau.error_order or tableau.order - 1

    def __repr__(self) -> str:
        return f"CoupledRK({self.tableau.name}, coupling={self.coupling})"

    def has(self, method: str) -> bool:
        if method == "step_with_error":
            return self.tableau.b_error is not None
        return super().has(method)

    def init(self, field: Field, t0: Tensor, y0: State, params: Params) -> State:
        # z0 = y0 as its own tensor: torch.compile refuses one tensor passed twice to a Function.
        return (*y0, *(y.clone() for y in y0))

    def _forward(
        self, field: Field, t: Tensor, h: Tensor, state: State, params: Params, error: bool
    ) -> tuple[State, State | None]:
        n, lam = len(state) // 2, self.coupling
        y, z = state[:n], state[n:]
        psi, err = self.tableau.increment(field, t, h, z, params, error=error)
        y_new = tuple(lam * a + (1 - lam) * b + p for a, b, p in zip(y, z, psi))
        back = self.tableau.increment(field, t + h, -h, y_new, params)[0]
        return (*y_new, *(b - p for b, p in zip(z, back))), err

    def step(self, field: Field, t: Tensor, h: Tensor, state: State, params: Params) -> State:
        return self._forward(field, t, h, state, params, False)[0]

    def step_with_error(
        self, field: Field, t: Tensor, h: Tensor, state: State, params: Params
    ) -> tuple[State, State]:
        """The step and the embedded estimate of its first base step."""
        new, err = self._forward(field, t, h, state, params, True)
        assert err is not None
        return new, err

    def inverse(self, field: Field, t: Tensor, h: Tensor, state: State, params: Params) -> State:
        n, lam = len(state) // 2, self.coupling
        y_new, z_new = state[:n], state[n:]
        back = self.tableau.increment(field, t + h, -h, y_new, params)[0]
        z = tuple(b + p for b, p in zip(z_new, back))
        psi = self.tableau.increment(field, t, h, z, params)[0]
        return (*((a - (1 - lam) * b - p) / lam for a, b, p in zip(y_new, z, psi)), *z)

    def reverse(
        self,
        field: Field,
        t: Tensor,
        h: Tensor,
        state: State,
        cotangent: State,
        params: Params,
        *,
        time_grad: bool,
        vjp: VJP = torch.func.vjp,
    ) -> Reverse:
        n, lam, tab = len(state) // 2, self.coupling, self.tableau
        y_new, z_new = state[:n], state[n:]
        a_y_new, a_z_new = cotangent[:n], cotangent[n:]

        def pulled(fn: Any, x: State) -> tuple[State, Any]:
            if time_grad:
                return vjp(lambda x_, t_, h_, p: fn(t_, h_, x_, p), x, t, h, params)
            return vjp(lambda x_, p: fn(t, h, x_, p), x, params)

        def psi_back(t_: Tensor, h_: Tensor, x: State, p: Params) -> State:
            return tab.increment(field, t_ + h_, -h_, x, p)[0]

        def psi_fwd(t_: Tensor, h_: Tensor, x: State, p: Params) -> State:
            return tab.increment(field, t_, h_, x, p)[0]

        back, pull_back = pulled(psi_back, y_new)
        z = tuple(b + p for b, p in zip(z_new, back))
        psi, pull_fwd = pulled(psi_fwd, z)
        y = tuple((a - (1 - lam) * b - p) / lam for a, b, p in zip(y_new, z, psi))

        # Adjoint of y' = lam y + (1 - lam) z + Psi_h(t, z), z' = z - Psi_{-h}(t + h, y').
        from_z = pull_back(tuple(-a for a in a_z_new))
        a_y_total = tuple(a + b for a, b in zip(a_y_new, from_z[0]))
        from_y = pull_fwd(a_y_total)
        a_y = tuple(lam * a for a in a_y_total)
        a_z = tuple(a + (1 - lam) * b + c for a, b, c in zip(a_z_new, a_y_total, from_y[0]))
        a_p = tuple(add_optional(u, v) for u, v in zip(from_z[-1], from_y[-1]))
        a_t = a_h = None
        if time_grad:
            a_t, a_h = from_z[1] + from_y[1], from_z[2] + from_y[2]
        return (*y, *z), (*a_y, *a_z), a_t, a_h, a_p
