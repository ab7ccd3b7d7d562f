r"""The reversible Heun method: one field evaluation per step, algebraically reversible.

Kidger, Foster, Li & Lyons ("Efficient and Accurate Gradients for Neural SDEs", NeurIPS 2021)
carry the solution :math:`y`, a second state :math:`\hat y` and the field value
:math:`f = f(t, \hat y)` at it, :math:`\hat y_0 = y_0`. One step of size :math:`h` from :math:`t`:

.. math::

    \hat y' = 2 y - \hat y + h f, \qquad f' = f(t + h, \hat y'), \qquad
    y' = y + \tfrac h2 (f + f'),

and its inverse, from :math:`(y', \hat y', f')`:

.. math::

    \hat y = 2 y' - \hat y' - h f', \qquad f = f(t, \hat y), \qquad y = y' - \tfrac h2 (f + f').

Second order on ODEs, one evaluation forward and two in the reverse (one to rebuild :math:`f`,
one under the VJP of the step). Its linear stability set, like undamped ALF's, is a segment of
the imaginary axis: on contracting dynamics the parasitic mode :math:`y - \hat y` is not damped,
so prefer the coupled Runge-Kutta methods there (README, "Choosing a method").
"""

from __future__ import annotations

from torch import Tensor

from ._scheme import Field, Params, ReversibleScheme, State


class ReversibleHeun(ReversibleScheme):
    """Reversible Heun; the state is ``(*y, *y_hat, *f)``."""

    order = 2

    def __repr__(self) -> str:
        return "ReversibleHeun()"

    def init(self, field: Field, t0: Tensor, y0: State, params: Params) -> State:
        # y_hat0 = y0 as its own tensor: torch.compile refuses one tensor passed twice.
        return (*y0, *(y.clone() for y in y0), *field(t0, y0, params))

    def step(self, field: Field, t: Tensor, h: Tensor, state: State, params: Params) -> State:
        n = len(state) // 3
        y, y_hat, f = state[:n], state[n : 2 * n], state[2 * n :]
        y_hat_new = tuple(2 * a - b + h * c for a, b, c in zip(y, y_hat, f))
        f_new = field(t + h, y_hat_new, params)
        y_new = tuple(a + (h / 2) * (b + c) for a, b, c in zip(y, f, f_new))
        return (*y_new, *y_hat_new, *f_new)

    def inverse(self, field: Field, t: Tensor, h: Tensor, state: State, params: Params) -> State:
        n = len(state) // 3
        y_new, y_hat_new, f_new = state[:n], state[n : 2 * n], state[2 * n :]
        y_hat = tuple(2 * a - b - h * c for a, b, c in zip(y_new, y_hat_new, f_new))
        f = field(t, y_hat, params)
        y = tuple(a - (h / 2) * (b + c) for a, b, c in zip(y_new, f, f_new))
        return (*y, *y_hat, *f)
