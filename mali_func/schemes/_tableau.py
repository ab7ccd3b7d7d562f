r"""Explicit Runge-Kutta steps from Butcher tableaus.

A tableau :math:`(A, b, c)` with :math:`s` stages gives the increment

.. math::

    k_i = f\Big(t + c_i h,\ y + h \sum_{j<i} a_{ij} k_j\Big), \qquad
    \Psi_h(t, y) = h \sum_i b_i k_i,

so that one step is :math:`y' = y + \Psi_h(t, y)`. An embedded row :math:`\hat b` gives the
local error estimate :math:`e = h \sum_i (b_i - \hat b_i) k_i` of order ``error_order``. The stage
loop is a Python loop over the (few, static) stages, so it traces under ``torch.compile`` and
export like any other code. Coefficients are the published ones: Runge's midpoint and Heun's
method (also with Euler's as an embedded estimate; ``heun2`` is torchdiffeq's name for it),
Fehlberg's RK1(2) pair (1969), Heun's third-order method, Euler's method, Bogacki & Shampine
(1989), the classic fourth-order method and Kutta's 3/8 rule, Dormand & Prince (1980),
Tsitouras (2011), and Dormand & Prince's eighth-order DOP853 (``"dopri8"``, :mod:`._dop853`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import _dop853
from ._scheme import Field, Params, State, dot


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge-Kutta method.

    Args:
        name: for messages.
        a: the strictly lower triangular stage matrix, row ``i`` holding ``i`` entries.
        b: the weights (sum 1).
        c: the nodes (``c_i = sum_j a_ij``).
        order: order of the solution.
        b_error: optional ``b - b_hat`` of an embedded pair (sums to 0).
        error_order: order of the embedded estimate (``order - 1`` if not given).
        perturb: evaluate the stages at a step's ends one ulp inside the step (``c_i = 0`` just
            after ``t``, ``c_i = 1`` just before ``t + h``), so a field with a jump at a grid
            time is evaluated on the correct side of it (torchdiffeq's ``perturb`` option).
    """

    name: str
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    order: int
    b_error: tuple[float, ...] | None = None
    error_order: int | None = None
    perturb: bool = False
    _stability: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        s = len(self.b)
        if len(self.c) != s or len(self.a) != s:
            raise ValueError(f"tableau {self.name}: a, b and c must have {s} stages each")
        for i, row in enumerate(self.a):
            if len(row) != i:
                raise ValueError(f"tableau {self.name}: row {i} of a must hold {i} entries")
            if not math.isclose(sum(row), self.c[i], abs_tol=1e-12):
                raise ValueError(
                    f"tableau {self.name}: row {i} of a sums to {sum(row)}, not to c[{i}] = "
                    f"{self.c[i]}"
                )
        if not math.isclose(sum(self.b), 1.0, abs_tol=1e-12):
            raise ValueError(f"tableau {self.name}: the weights b sum to {sum(self.b)}, not 1")
        if self.b_error is not None:
            if len(self.b_error) != s:
                raise ValueError(f"tableau {self.name}: b_error must have {s} entries")
            if not math.isclose(sum(self.b_error), 0.0, abs_tol=1e-12):
                raise ValueError(f"tableau {self.name}: b_error must sum to 0")
        coeffs, v = [1.0], [1.0] * self.stages
        for _ in range(self.stages):
            coeffs.append(sum(b * x for b, x in zip(self.b, v)))
            v = [sum(a * x for a, x in zip(row, v)) for row in self.a]
        object.__setattr__(self, "_stability", tuple(coeffs))

    @property
    def stages(self) -> int:
        return len(self.b)

    @property
    def solution_stages(self) -> int:
        """The stages the solution needs: up to the last nonzero weight. Those after it (the last
        stage of dopri5, tsit5, bosh3 and dopri8: ``f`` at the step's end, for the error estimate
        and the next step) are evaluated only for an estimate or a contraction rate."""
        return 1 + max(i for i, b in enumerate(self.b) if b != 0.0)

    @property
    def stability_coefficients(self) -> tuple[float, ...]:
        """``(1, b^T 1, b^T A 1, b^T A^2 1, ...)``: the coefficients of ``R(w)`` in powers of
        ``w`` (``A`` is strictly lower triangular, so there are at most ``s + 1``). Computed at
        construction: a lazy (cached) property would first be read inside a compiled loop body,
        where dynamo cannot trace ``cached_property``'s lock."""
        return self._stability

    def stability(self, w: Tensor) -> Tensor:
        """The stability function ``R(w) = 1 + w b^T (I - w A)^{-1} 1`` (one step of ``y' = mu
        y`` from ``y = 1`` with ``w = h mu``), elementwise in ``w`` (real or complex), by Horner's
        rule."""
        *rest, last = self.stability_coefficients
        r = torch.full_like(w, last)
        for c in reversed(rest):
            r = r * w + c
        return r

    def _stage_time(self, t: Tensor, h: Tensor, c: float) -> Tensor:
        """``t + c h``; with ``perturb``, one ulp inside the step at its ends (the offset is a
        constant of the gradient)."""
        at = t + c * h
        if self.perturb and c in (0.0, 1.0):
            toward = t + h if c == 0.0 else t
            at = at + (torch.nextafter(at, toward) - at).detach()
        return at

    def increment(
        self, field: Field, t: Tensor, h: Tensor, y: State, params: Params, *, error: bool = False
    ) -> tuple[State, State | None]:
        """``Psi_h(t, y)`` and, with ``error``, the embedded error estimate."""
        psi, err, _ = self.increment_and_rate(field, t, h, y, params, error=error, rate=False)
        return psi, err

    def increment_and_rate(
        self, field: Field, t: Tensor, h: Tensor, y: State, params: Params, *,
        error: bool = False, rate: bool = True,
    ) -> tuple[State, State | None, Tensor | None]:  # fmt: skip
        """:meth:`increment` and, with ``rate``, the contraction seen by its stages
        (:func:`stage_contraction`; ``None`` for a one-stage tableau), out of the gradient."""
        ks: list[State] = []
        points: list[State] = []
        for i in range(self.stages if error or rate else self.solution_stages):
            sums = _weighted(self.a[i], ks)
            yi = y if sums is None else tuple(x + h * u for x, u in zip(y, sums))
            points.append(yi)
            ks.append(field(self._stage_time(t, h, self.c[i]), yi, params))
        psi = _combine(self.b, ks, h)
        sigma = stage_contraction(points, ks, self.c) if rate and self.stages > 1 else None
        if not error:
            return psi, None, sigma
        assert self.b_error is not None
        return psi, _combine(self.b_error, ks, h), sigma


def stage_contraction(points: list[State], ks: list[State], c: tuple[float, ...]) -> Tensor:
    r"""The contraction rate the stages of one step see, out of the gradient:

    .. math::

        \sigma = \max\Big(0,\ \min_i -\frac{\langle k_{i+1} - k_i,\ Y_{i+1} - Y_i\rangle}
        {\|Y_{i+1} - Y_i\|^2}\Big)

    over consecutive stages (points :math:`Y_i`, slopes :math:`k_i = f(t + c_i h, Y_i)`): the
    Rayleigh quotient of the field's Jacobian along each stage difference, the real part of the
    local rate in the direction the step explores. It costs no evaluation (stiffness detection
    in explicit codes reads the same differences: Hairer & Wanner, *Solving ODEs II*, section
    IV.2). Only the pairs at equal nodes (``c_i = c_{i+1}``: RK4's two midpoints, the last two
    stages of dopri5 and tsit5) are used where the tableau has them: elsewhere the difference of
    the slopes also holds the field's change in time, which near a slowly moving equilibrium of
    a time-dependent field hides its contraction (measured: a gradient 30x less accurate at 40
    RK4 steps). The minimum over the pairs, not the maximum: a non-normal Jacobian
    (``y**3 @ A``) shows transient contraction along single directions (its numerical range)
    that its eigenvalues do not have.
    """
    with torch.no_grad():
        best: Tensor | None = None
        same = [i for i in range(len(ks) - 1) if c[i] == c[i + 1]]
        for i in same or range(len(ks) - 1):
            dy = tuple((a - b).detach() for a, b in zip(points[i + 1], points[i]))
            dk = tuple((a - b).detach() for a, b in zip(ks[i + 1], ks[i]))
            size = dot(dy, dy)
            quotient = -dot(dk, dy) / size.clamp_min(torch.finfo(size.dtype).tiny)
            quotient = torch.where(size > 0, quotient, torch.zeros_like(quotient))
            best = quotient if best is None else torch.minimum(best, quotient)
        assert best is not None
        return best.clamp_min(0.0)


def _weighted(weights: tuple[float, ...], ks: list[State]) -> State | None:
    """``sum_i w_i k_i`` per component, skipping zero weights (``None`` if all are zero); ``h``
    multiplies the sum once, not every term (small fields are bound by the kernel count). No
    ``add(..., alpha=w)``: its fused kernels round differently with the memory layout, and a
    batched sample must get its unbatched result bit for bit."""
    terms = [(w, k) for w, k in zip(weights, ks) if w != 0.0]
    if not terms:
        return None
    out: list[Tensor] = []
    for n in range(len(terms[0][1])):
        (w0, k0), *rest = terms
        total = k0[n] * w0
        for w, k in rest:
            total = total + k[n] * w
        out.append(total)
    return tuple(out)


def _combine(weights: tuple[float, ...], ks: list[State], h: Tensor) -> State:
    """``h * sum_i w_i k_i`` per component, skipping zero weights."""
    total = _weighted(weights, ks)
    assert total is not None
    return tuple(h * x for x in total)


def _embedded(b: tuple[float, ...], b_hat: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(x - y for x, y in zip(b, b_hat))


EULER = ButcherTableau("euler", ((),), (1.0,), (0.0,), order=1)
MIDPOINT = ButcherTableau("midpoint", ((), (0.5,)), (0.0, 1.0), (0.0, 0.5), order=2)
HEUN = ButcherTableau("heun", ((), (1.0,)), (0.5, 0.5), (0.0, 1.0), order=2)
HEUN2 = ButcherTableau("heun2", HEUN.a, HEUN.b, HEUN.c, order=2)  # torchdiffeq's name for it
# Heun's method with Euler's as the embedded estimate (first order): torchdiffeq's adaptive_heun.
ADAPTIVE_HEUN = ButcherTableau(
    "adaptive_heun", ((), (1.0,)), (0.5, 0.5), (0.0, 1.0), order=2,
    b_error=_embedded((0.5, 0.5), (1.0, 0.0)), error_order=1,
)  # fmt: skip
# Heun's third-order method (Heun 1900).
HEUN3 = ButcherTableau(
    "heun3", ((), (1 / 3,), (0.0, 2 / 3)), (1 / 4, 0.0, 3 / 4), (0.0, 1 / 3, 2 / 3), order=3
)
BOSH3 = ButcherTableau(
    "bosh3",
    ((), (1 / 2,), (0.0, 3 / 4), (2 / 9, 1 / 3, 4 / 9)),
    (2 / 9, 1 / 3, 4 / 9, 0.0),
    (0.0, 1 / 2, 3 / 4, 1.0),
    order=3,
    b_error=_embedded((2 / 9, 1 / 3, 4 / 9, 0.0), (7 / 24, 1 / 4, 1 / 3, 1 / 8)),
    error_order=2,
)
RK4 = ButcherTableau(
    "rk4",
    ((), (1 / 2,), (0.0, 1 / 2), (0.0, 0.0, 1.0)),
    (1 / 6, 1 / 3, 1 / 3, 1 / 6),
    (0.0, 1 / 2, 1 / 2, 1.0),
    order=4,
)
# Kutta's 3/8 rule (1901): torchdiffeq's rk4_alt.
RK4_ALT = ButcherTableau(
    "rk4_alt",
    ((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),
    (1 / 8, 3 / 8, 3 / 8, 1 / 8),
    (0.0, 1 / 3, 2 / 3, 1.0),
    order=4,
)
# Fehlberg's RK1(2) pair (NASA TR R-315, 1969), propagating the second-order solution with the
# first-order one as the embedded estimate, as torchdiffeq's fehlberg2.
FEHLBERG2 = ButcherTableau(
    "fehlberg2",
    ((), (1 / 2,), (1 / 256, 255 / 256)),
    (1 / 512, 255 / 256, 1 / 512),
    (0.0, 1 / 2, 1.0),
    order=2,
    b_error=_embedded((1 / 512, 255 / 256, 1 / 512), (1 / 256, 255 / 256, 0.0)),
    error_order=1,
)
_DOPRI_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
DOPRI5 = ButcherTableau(
    "dopri5",
    (
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        _DOPRI_B[:6],
    ),
    _DOPRI_B,
    (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    order=5,
    b_error=_embedded(
        _DOPRI_B, (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
    ),
    error_order=4,
)

_TSIT_B = (
    0.09646076681806523,
    0.01,
    0.4798896504144996,
    1.379008574103742,
    -3.290069515436081,
    2.324710524099774,
    0.0,
)
TSIT5 = ButcherTableau(
    "tsit5",
    (
        (),
        (0.161,),
        (-0.008480655492356989, 0.335480655492357),
        (2.8971530571054935, -6.359448489975075, 4.3622954328695815),
        (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
        (
            5.86145544294642,
            -12.92096931784711,
            8.159367898576159,
            -0.071584973281401,
            -0.028269050394068383,
        ),
        _TSIT_B[:6],
    ),
    _TSIT_B,
    (0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0),
    order=5,
    b_error=(
        -0.00178001105222577714,
        -0.0008164344596567469,
        0.007880878010261995,
        -0.1447110071732629,
        0.5823571654525552,
        -0.45808210592918697,
        0.015151515151515152,
    ),
    error_order=4,
)

# Dormand & Prince's DOP853 (Hairer, Norsett & Wanner 1993) with its fifth-order embedded estimate.
DOPRI8 = ButcherTableau(
    "dopri8", _dop853.A, _dop853.B, _dop853.C, order=8, b_error=_dop853.B_ERROR, error_order=5
)

_ALL = (EULER, MIDPOINT, HEUN, HEUN2, ADAPTIVE_HEUN, FEHLBERG2, HEUN3, BOSH3, RK4, RK4_ALT,
        DOPRI5, TSIT5, DOPRI8)  # fmt: skip
TABLEAUS = {tab.name: tab for tab in _ALL}


def tableau_named(tableau: object) -> object:
    """``TABLEAUS[tableau]`` for a name, anything else unchanged (the caller checks it)."""
    if not isinstance(tableau, str):
        return tableau
    if tableau not in TABLEAUS:
        raise ValueError(f"unknown tableau {tableau!r}; known: {sorted(TABLEAUS)}")
    return TABLEAUS[tableau]
