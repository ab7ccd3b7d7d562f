r"""The damped asynchronous leapfrog (ALF) step, its exact inverse and its fused reverse.

ALF (Zhuang et al., "MALI: A memory efficient and reverse accurate integrator for Neural ODEs",
ICLR 2021) carries the solution ``z`` and a velocity ``v ~ dz/dt``. With damping
``eta`` in (0, 1], ``eta != 1/2`` (``eta = 1`` is the plain method), one step of size ``h`` from
``t`` is

.. math::

    s = t + h/2,\quad k = z + \tfrac h2 v,\quad u = f(s, k),\quad
    v' = v + 2\eta (u - v),\quad z' = k + \tfrac h2 v'.

It is second order in ``z`` for ``eta = 1`` and first order otherwise (the damped velocity lags
behind ``f``; measured in the test suite). It inverts algebraically from ``(z', v')``:

.. math::

    k = z' - \tfrac h2 v',\quad u = f(s, k),\quad
    v = \frac{v' - 2\eta u}{1 - 2\eta},\quad z = k - \tfrac h2 v.

The inverse evaluates ``f`` at the forward step's own midpoint ``(s, k)``, so one
:func:`torch.func.vjp` of ``f`` there both rebuilds the previous state and gives the pullback of
the step; the rest of the step is linear and its adjoint is written out in :meth:`ALF.reverse`.
Backward thus costs one field evaluation and one VJP per step.

The inverse multiplies the parasitic (non-physical) mode by ``1 / |1 - 2 eta|`` per step, so a
damped step (``eta < 1``) amplifies round-off in the reverse pass; the engine measures the drift.
The initial velocity is ``v_0 = f(t_0, z_0)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..backends._mode import tracing
from ._scheme import VJP, Field, Params, Reverse, ReversibleScheme, State, dot


def _largest(x: Tensor) -> Tensor:
    """``max |x|``, 0 for an empty tensor (an empty batch)."""
    return x.abs().amax() if x.numel() else x.new_zeros(())


class ALF(ReversibleScheme):
    """Damped asynchronous leapfrog; the state is ``(*z, *v)``.

    Args:
        eta: damping in (0, 1], not 0.5. ``eta = 1`` (the default) is undamped ALF.
    """

    def __init__(self, eta: float = 1.0) -> None:
        if isinstance(eta, bool) or not isinstance(eta, (int, float, torch.SymFloat)):
            raise TypeError(f"eta must be a real number in (0, 1], got {type(eta).__name__}")
        if not 0.0 < eta <= 1.0 or eta == 0.5:
            raise ValueError(f"eta must lie in (0, 1] and differ from 0.5, got {eta}")
        self.eta = eta
        # torch.compile makes a float argument that changed between calls symbolic; while_loop
        # takes tensors, not symbolic floats, so compiled steps use 2 eta as a 0-dim tensor.
        self._c: float | Tensor = torch.scalar_tensor(2 * eta) if tracing() else 2 * float(eta)
        # Damping lets the velocity lag behind f, which costs an order of accuracy (measured).
        self.order = 2 if eta == 1.0 else 1

    def __repr__(self) -> str:
        return f"ALF(eta={self.eta})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ALF) and other.eta == self.eta

    def __hash__(self) -> int:
        return hash(("ALF", self.eta))

    def init(self, field: Field, t0: Tensor, y0: State, params: Params) -> State:
        return (*y0, *field(t0, y0, params))

    def parasitic(
        self, field: Field, t: Tensor, h: Tensor, state: State, params: Params, floor: float
    ) -> Tensor:
        """How large the parasitic mode is against the solution at ``(t, state)`` after steps of
        size ``h``: two field evaluations, out of the gradient,

        ``(|h|/2) max|v - f(t, z)| / (max|z| + floor) * max(1, 6 |h| sigma)^2``.

        An accurate solve keeps ``v`` within ``O(h^2)`` of ``f``. On contracting dynamics the
        parasitic root of the step grows like ``1 + h |lambda|`` per step and alternates in sign;
        it enters ``z`` through the half steps ``(h/2) v``, so the first factor bounds its share
        of the solution from above (by about ``2 / (h |lambda|)`` too much where ``h |lambda|``
        is small). Once the mode has taken over, ``z`` is mostly the mode and that share reads a
        few units however wrong the solution (``y' = -5 y``, 10 steps over [0, 2]: 2.6 for a
        result of -204), as a trained oscillatory field may mid-training while within 3% of
        dopri5 (up to 4). What tells them apart is how fast the field contracts along the mode:
        ``sigma``, the Rayleigh quotient of its Jacobian along ``v - f`` (a forward difference),
        ``|h| sigma`` 0.2 to 2.5 on ``-5 y`` at 4 to 50 steps; from ``|h| sigma = 1/6`` on the
        share is raised by ``(6 |h| sigma)^2``. Healthy oscillatory solves measure 1e-7 to 4 (the
        quickstart's training stays below 10 throughout), ``-5 y`` 12 to 614 at 4 to 400 steps.
        ``floor`` is the absolute part of the solution's scale (the tolerances' ``atol``).
        """
        with torch.no_grad():
            n = len(state) // 2
            z, v = tuple(x.detach() for x in state[:n]), tuple(x.detach() for x in state[n:])
            t = t.detach()
            # The parameters as they are (no_grad): a module holding them is called directly.
            f = tuple(x.detach() for x in field(t, z, params))
            mode = tuple(a - b for a, b in zip(v, f))
            gap = torch.stack([_largest(d) for d in mode]).amax()
            size = torch.stack([_largest(a) for a in z]).amax() + floor
            tiny = torch.finfo(size.dtype).tiny
            share = (h.detach().abs() / 2) * gap / size.clamp_min(tiny)
            length = torch.sqrt(dot(mode, mode)).clamp_min(tiny)
            eps = (torch.finfo(size.dtype).eps ** 0.5) * (1 + size) / length
            moved = field(t, tuple(a + eps * d for a, d in zip(z, mode)), params)
            pull = dot(tuple(b.detach() - a for a, b in zip(f, moved)), mode) / (eps * length**2)
            sigma = torch.nan_to_num(-pull, nan=0.0).clamp_min(0.0)
            return share * (6 * h.detach().abs() * sigma).clamp_min(1.0) ** 2

    def _advance(
        self, field: Field, t: Tensor, h: Tensor, state: State, params: Params
    ) -> tuple[State, State]:
        n = len(state) // 2
        z, v = state[:n], state[n:]
        half = h / 2
        k = tuple(torch.addcmul(zi, half, vi) for zi, vi in zip(z, v))
        u = field(t + half, k, params)
        c = self._c
        if isinstance(c, Tensor):
            v_next = tuple(vi + c.to(vi.dtype) * (ui - vi) for vi, ui in zip(v, u))
        else:
            v_next = tuple(torch.lerp(vi, ui, c) for vi, ui in zip(v, u))
        z_next = tuple(torch.addcmul(ki, half, vi) for ki, vi in zip(k, v_next))
        return (*z_next, *v_next), u

    def step(self, field: Field, t: Tensor, h: Tensor, state: State, params: Params) -> State:
        return self._advance(field, t, h, state, params)[0]

    def step_with_error(
        self, field: Field, t: Tensor, h: Tensor, state: State, params: Params
    ) -> tuple[State, State]:
        """The step and the paper's local error estimate ``e = h (u - v)`` for each ``z``."""
        new, u = self._advance(field, t, h, state, params)
        v = state[len(state) // 2 :]
        return new, tuple(h * (ui - vi) for ui, vi in zip(u, v))

    def _undo(self, k: State, u: State, v_next: State, half: Tensor) -> tuple[State, State]:
        c = self._c
        if isinstance(c, Tensor):
            v = tuple((vi - c * ui) / (1 - c) for vi, ui in zip(v_next, u))
        else:
            v = tuple(torch.sub(vi, ui, alpha=c) / (1 - c) for vi, ui in zip(v_next, u))
        z = tuple(torch.addcmul(ki, -half, vi) for ki, vi in zip(k, v))
        return z, v

    def inverse(self, field: Field, t: Tensor, h: Tensor, state: State, params: Params) -> State:
        n = len(state) // 2
        z_next, v_next = state[:n], state[n:]
        half = h / 2
        k = tuple(torch.addcmul(zi, -half, vi) for zi, vi in zip(z_next, v_next))
        z, v = self._undo(k, field(t + half, k, params), v_next, half)
        return (*z, *v)

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
        n = len(state) // 2
        z_next, v_next = state[:n], state[n:]
        a_z_next, a_v_next = cotangent[:n], cotangent[n:]
        half = h / 2
        s = t + half
        k = tuple(torch.addcmul(zi, -half, vi) for zi, vi in zip(z_next, v_next))
        if time_grad:
            u, pullback = vjp(field, s, k, params)
        else:

            def at_s(k_: State, p: Params) -> State:
                return field(s, k_, p)

            u, pullback = vjp(at_s, k, params)
        z, v = self._undo(k, u, v_next, half)

        # Adjoint of the linear part: v' = (1-2 eta) v + 2 eta u, z' = k + (h/2) v'.
        c = self._c
        a_v_total = tuple(torch.addcmul(av, half, az) for av, az in zip(a_v_next, a_z_next))
        a_u = tuple(c * a for a in a_v_total)
        pulled = pullback(a_u)
        a_s: Tensor | None = None
        if time_grad:
            a_s, a_k_field, a_params = pulled
        else:
            a_k_field, a_params = pulled
        a_k = tuple(az + ak for az, ak in zip(a_z_next, a_k_field))
        a_v = tuple(torch.addcmul((1 - c) * av, half, ak) for av, ak in zip(a_v_total, a_k))
        a_t: Tensor | None = None
        a_h: Tensor | None = None
        if a_s is not None:
            a_t = a_s
            a_h = (dot(a_z_next, v_next) + dot(a_k, v) + a_s) / 2
        return (*z, *v), (*a_k, *a_v), a_t, a_h, a_params
