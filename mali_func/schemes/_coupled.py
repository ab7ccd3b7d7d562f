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

``coupling="auto"`` picks :math:`\lambda` per step from the step size and the contraction
:math:`\sigma` that the stages of the step's own forward increment :math:`\Psi_h(t, z)` see
(:func:`~mali_func.schemes._tableau.stage_contraction`: Rayleigh quotients of the field's
Jacobian along the stage differences, no extra evaluation, kept out of the gradient):

.. math::

    \lambda = \operatorname{clip}\big(R(-|h| \sigma)^{3/2},\ 1/2,\ 1\big),

so the forward parasitic factor :math:`\lambda / R` is :math:`R^{1/2} < 1` on the contracting
direction while the reverse amplification :math:`1/\lambda` per step stays within
:math:`e^{1.5 |h| \sigma}`, the same order as the physical contraction. On oscillatory dynamics
(:math:`\sigma = 0`) :math:`\lambda = 1`: no reverse amplification beyond the physics', where
any fixed :math:`\lambda < 1` multiplies round-off by :math:`\lambda^{-N}` over :math:`N` steps.
The estimate follows the field along the solve (``y' = y**3 A`` starts near rate 24 and ends near
0.1). The step stays exactly invertible: the inverse rebuilds :math:`z` first
(:math:`z = z' + \Psi_{-h}(t + h, y')`), then evaluates :math:`\Psi_h(t, z)` with the same stages
and so recomputes the same :math:`\lambda` before it solves for :math:`y`. A one-stage tableau
(Euler) has no stage differences: it carries an estimate made at ``t[0]`` by power iterations on
finite-difference Jacobian-vector products (:func:`contraction_rate`) as the state's last entry.

No coupling beats the physics: reconstructing a solve whose fastest mode decays like
:math:`e^{-r T}` amplifies round-off by about :math:`e^{r T}` (two decay rates 1 and 40 over
``T = 1``: 1e17). Such solves fail their reconstruction check and fall back to checkpointing
(:mod:`mali_func.gradients._solve`).

The reverse pass evaluates each base increment once, under a VJP: the inverse's
:math:`\Psi_{-h}(t + h, y')` and :math:`\Psi_h(t, z)` are exactly the forward step's, so their
pullbacks give the step's adjoint (:meth:`CoupledRK.reverse`): ``2 s`` field evaluations and
``2 s`` VJPs a step for an ``s``-stage tableau.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from ..backends._mode import tracing
from ._scheme import (
    VJP,
    Field,
    Params,
    Reverse,
    ReversibleScheme,
    State,
    add_optional,
    dot,
)
from ._tableau import ButcherTableau, tableau_named

MIN_COUPLING = 0.5
"""The smallest automatic ``lambda``: the reverse amplifies by at most ``1/lambda`` a step."""

AUTO_EXPONENT = 1.5
"""``lambda = R(-|h| rho)^AUTO_EXPONENT`` under ``coupling="auto"`` (module docs)."""

POWER_ITERATIONS = 8
"""Jacobian-vector products (field evaluations) per phase of the contraction estimate."""


def _norm(xs: State) -> Tensor:
    return torch.sqrt(dot(xs, xs))


def contraction_rate(field: Field, t0: Tensor, y0: State, params: Params) -> Tensor:
    """Estimate ``sigma = max(0, -Re mu)`` for the most contracting eigenvalue ``mu`` of
    ``d field / d y`` at ``(t0, y0)``, out of the gradient.

    Power iteration on Jacobian-vector products by forward differences (field evaluations only,
    so it runs the same eagerly, under ``torch.func`` transforms, compiled and exported): first on
    ``J`` for the spectral radius ``rho``, then on ``J - rho I``, whose dominant eigenvalues are
    the most negative real parts of ``J``'s; the Rayleigh quotient of the last vector gives their
    real part. A rotation (``J`` skew) gives ``sigma = 0``; a contraction at rate ``r`` gives
    ``sigma = r``.
    """
    y = tuple(x.detach() for x in y0)
    t, p = t0.detach(), tuple(q.detach() for q in params)
    f0 = field(t, y, p)
    eps = math.sqrt(torch.finfo(y[0].dtype).eps) * (1 + _norm(y))
    tiny = torch.finfo(eps.dtype).tiny

    def jvp(v: State) -> State:
        shifted = field(t, tuple(a + eps * b for a, b in zip(y, v)), p)
        return tuple((a - b) / eps for a, b in zip(shifted, f0))

    def unit(v: State) -> State:
        size = _norm(v).clamp_min(tiny)
        return tuple(x / size for x in v)

    # A fixed, generic start vector: the dominant direction is (almost surely) not missing.
    v = unit(tuple(torch.sin(torch.arange(x.numel(), dtype=x.dtype, device=x.device) * 1.618
                             + 0.5).reshape(x.shape) for x in y))  # fmt: skip
    start = v
    for _ in range(POWER_ITERATIONS):
        v = unit(jvp(v))
    rho = _norm(jvp(v))
    v = start
    for _ in range(POWER_ITERATIONS):
        v = unit(tuple(a - rho * b for a, b in zip(jvp(v), v)))
    return (-dot(v, jvp(v))).clamp_min(0.0).detach()


class CoupledRK(ReversibleScheme):
    """The reversible coupling of an explicit Runge-Kutta tableau; the state is ``(*y, *z)``.

    Args:
        tableau: the base method.
        coupling: ``lambda`` in (0, 1], or ``"auto"`` to choose it per step from the step size
            and an estimate of the field's contraction (module docs); then the state carries
            that estimate as a last entry, ``(*y, *z, rho)``.
    """

    def __init__(
        self, tableau: ButcherTableau | str, coupling: float | Literal["auto"] = "auto"
    ) -> None:
        tableau = tableau_named(tableau)  # a name ("rk4") is a shorthand
        if not isinstance(tableau, ButcherTableau):
            raise TypeError(f"tableau must be a ButcherTableau, got {type(tableau).__name__}")
        self.auto = coupling == "auto"
        if not self.auto:
            if isinstance(coupling, bool) or not isinstance(coupling, (int, float)):
                raise TypeError(
                    f"coupling must be a real number in (0, 1] or 'auto', got {coupling!r}"
                )
            if not 0.0 < coupling <= 1.0:
                raise ValueError(f"coupling must lie in (0, 1] or be 'auto', got {coupling}")
        self.tableau = tableau
        self.coupling: float | str = "auto" if self.auto else coupling
        # A one-stage tableau has no stage differences to read the contraction from: it carries
        # an estimate made at t[0] instead (the state's last entry).
        self.carries_rate = self.auto and tableau.stages < 2
        # Traced code (compile, export) multiplies by a 0-dim tensor: a coupling that changed
        # between compiled calls is a symbolic float, which while_loop does not take.
        self._lam: float | Tensor = 1.0
        if not self.auto:
            self._lam = torch.scalar_tensor(coupling) if tracing() else float(coupling)
        self.order = tableau.order
        # Two base steps; without an estimate each skips the stages after its last weight,
        # except the forward one of "auto", whose contraction reads them.
        first = tableau.stages if self.auto else tableau.solution_stages
        self.evaluations_per_step = first + tableau.solution_stages
        self.evaluations_with_error = 2 * tableau.stages
        if tableau.b_error is not None:
            self.error_order = tableau.error_order or tableau.order - 1

    def __repr__(self) -> str:
        return f"CoupledRK({self.tableau.name}, coupling={self.coupling!r})"

    def has(self, method: str) -> bool:
        if method == "step_with_error":
            return self.tableau.b_error is not None
        return super().has(method)

    def init(self, field: Field, t0: Tensor, y0: State, params: Params) -> State:
        # z0 = y0 as its own tensor: torch.compile refuses one tensor passed twice to a Function.
        pair = (*y0, *(y.clone() for y in y0))
        return (*pair, contraction_rate(field, t0, y0, params)) if self.carries_rate else pair

    def _split(self, state: State) -> tuple[State, State, State]:
        """``(y, z, extra)`` of a state; ``extra`` is ``(rho,)`` for a one-stage ``"auto"``."""
        n = (len(state) - (1 if self.carries_rate else 0)) // 2
        return state[:n], state[n : 2 * n], state[2 * n :]

    def _coupling(self, h: Tensor, sigma: Tensor | None, extra: State) -> Tensor | float:
        """``lambda`` of a step: fixed, or from the contraction its forward stages see."""
        if not self.auto:
            return self._lam
        rate = extra[0] if sigma is None else sigma
        r = self.tableau.stability(-(h.detach().abs() * rate))
        return r.clamp_min(0.0).pow(AUTO_EXPONENT).clamp(MIN_COUPLING, 1.0)

    def _psi(
        self, field: Field, t: Tensor, h: Tensor, z: State, params: Params, error: bool
    ) -> tuple[State, State | None, Tensor | None]:
        """The forward base step ``Psi_h(t, z)``, its estimate, and its stages' contraction."""
        return self.tableau.increment_and_rate(field, t, h, z, params, error=error, rate=self.auto)

    def pair(self, state: State) -> tuple[Tensor, Tensor]:
        """The first components of ``y`` and ``z`` of a state (the disagreement check)."""
        y, z, _ = self._split(state)
        return y[0], z[0]

    def _forward(
        self, field: Field, t: Tensor, h: Tensor, state: State, params: Params, error: bool
    ) -> tuple[State, State | None]:
        y, z, extra = self._split(state)
        psi, err, sigma = self._psi(field, t, h, z, params, error)
        lam = self._coupling(h, sigma, extra)
        y_new = tuple(lam * a + (1 - lam) * b + p for a, b, p in zip(y, z, psi))
        back, err_back = self.tableau.increment(field, t + h, -h, y_new, params, error=error)
        if err is not None and err_back is not None:
            # Both base steps' estimates: one that jumps a singularity shows in the second.
            err = tuple((a * a + b * b).sqrt() for a, b in zip(err, err_back))
        # A new tensor for rho: the engine saves the final state, never an input passed through.
        extra = tuple(x.clone() for x in extra)
        return (*y_new, *(b - p for b, p in zip(z, back)), *extra), err

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
        y_new, z_new, extra = self._split(state)
        back = self.tableau.increment(field, t + h, -h, y_new, params)[0]
        z = tuple(b + p for b, p in zip(z_new, back))
        psi, _, sigma = self._psi(field, t, h, z, params, False)
        lam = self._coupling(h, sigma, extra)
        y = tuple((a - (1 - lam) * b - p) / lam for a, b, p in zip(y_new, z, psi))
        return (*y, *z, *(x.clone() for x in extra))

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
        tab = self.tableau
        y_new, z_new, extra = self._split(state)
        n = len(y_new)
        a_y_new, a_z_new = cotangent[:n], cotangent[n : 2 * n]

        def pulled(fn: Any, x: State) -> tuple[State, Any]:
            if time_grad:
                return vjp(lambda x_, t_, h_, p: fn(t_, h_, x_, p), x, t, h, params)
            return vjp(lambda x_, p: fn(t, h, x_, p), x, params)

        def psi_back(t_: Tensor, h_: Tensor, x: State, p: Params) -> State:
            return tab.increment(field, t_ + h_, -h_, x, p)[0]

        def psi_fwd(t_: Tensor, h_: Tensor, x: State, p: Params) -> State:
            psi, _, sigma = self._psi(field, t_, h_, x, p, False)
            # The stages' contraction rides along as a last output (out of the gradient).
            return (*psi, *(() if sigma is None else (sigma,)))

        back, pull_back = pulled(psi_back, y_new)
        z = tuple(b + p for b, p in zip(z_new, back))
        psi_out, pull_fwd = pulled(psi_fwd, z)
        psi, rate = psi_out[:n], psi_out[n:]
        lam = self._coupling(h, rate[0] if rate else None, extra)
        y = tuple((a - (1 - lam) * b - p) / lam for a, b, p in zip(y_new, z, psi))

        # Adjoint of y' = lam y + (1 - lam) z + Psi_h(t, z), z' = z - Psi_{-h}(t + h, y').
        from_z = pull_back(tuple(-a for a in a_z_new))
        a_y_total = tuple(a + b for a, b in zip(a_y_new, from_z[0]))
        from_y = pull_fwd((*a_y_total, *(torch.zeros_like(r) for r in rate)))
        a_y = tuple(lam * a for a in a_y_total)
        a_z = tuple(a + (1 - lam) * b + c for a, b, c in zip(a_z_new, a_y_total, from_y[0]))
        a_p = tuple(add_optional(u, v) for u, v in zip(from_z[-1], from_y[-1]))
        a_t = a_h = None
        if time_grad:
            a_t, a_h = from_z[1] + from_y[1], from_z[2] + from_y[2]
        a_extra = tuple(torch.zeros_like(x) for x in extra)  # rho is kept out of the gradient
        extra = tuple(x.clone() for x in extra)  # while_loop refuses a carry passed through
        return (*y, *z, *extra), (*a_y, *a_z, *a_extra), a_t, a_h, a_p
