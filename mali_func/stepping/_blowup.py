r"""Finite-time blow-up of an adaptive solve: detected from the growth of accepted steps.

A local error control alone walks into a singularity: ``y' = y^2, y(0) = 1`` has no solution past
``t = 1``, yet a method places its own numerical pole only to within its accuracy (adaptive ALF at
``rtol = 1e-3`` at ``t = 1.00065``), and a solve that ends before that pole returns a large,
finite, meaningless number. Near a pole the solution behaves as

.. math::

    \|y\| \sim (T - s)^{-p}, \qquad g = \frac{d \log \|y\|}{ds} = \frac{p}{T - s},

with ``s = |t - t0|`` the elapsed time: ``1/g`` falls linearly to 0 at ``T``. Perturbing ``y0``
moves the pole, so the relative condition number of ``y(s)`` with respect to ``y0`` is
``T / (T - s)``; once it exceeds ``1/rtol`` the tolerance cannot tell whether ``s`` lies before or
after the singularity, and the solve fails (eager code raises, naming the extrapolated ``T``).

Exponential growth (constant ``g``), decay and rotation (``g <= 0``, or a fitted ``p`` below
:data:`P_MIN`) are never flagged; a solution that is merely large is not either, nor one whose
norm grows steeply again after passing near zero (below the largest norm it had: a projectile
past the top of its flight).
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from ..schemes import State


def log_norm(y: State) -> Tensor:
    """``log ||y||`` over every element of the solution (``-inf`` at 0)."""
    total = y[0].square().sum()
    for x in y[1:]:
        total = total + x.square().sum()
    return 0.5 * total.log()


class Growth(NamedTuple):
    """The last accepted step's log-growth rate ``g = d log||y|| / ds`` (``s = |t - t0|``)."""

    log_norm: Tensor  # log ||y|| after it
    rate: Tensor  # g over it (0 before the first step)
    mid: Tensor  # its midpoint s
    pole: Tensor  # the blow-up time s = T it extrapolates to (meaningful when flagged)
    peak: Tensor  # the largest log ||y|| so far (y0's included)


P_MIN = 0.1
"""Weakest singularity ``||y|| ~ (T - s)^-p`` looked for (``y' = y^11`` has ``p = 0.1``)."""


def blow_up(
    last: Growth, log_norm_: Tensor, start: Tensor, size: Tensor, rtol: float
) -> tuple[Growth, Tensor]:
    """Extrapolate a finite-time singularity from two accepted steps; flag one too close to tell.

    Near a pole ``||y|| ~ (T - s)^-p`` the log-growth rate is ``g = p / (T - s)``: ``1/g`` falls
    linearly to 0 at ``T`` with slope ``-1/p``. Through the rates ``g_a < g_b`` of the last two
    steps at their midpoints ``m_a < m_b`` this gives ``T = m_b + g_a (m_b - m_a) / (g_b - g_a)``
    and ``p = g_a g_b (m_b - m_a) / (g_b - g_a)``. The relative condition number of ``y(s)``
    with respect to ``y0`` is then ``T / (T - s)`` (a perturbation moves the pole), so once
    ``T - s <= rtol * T`` the tolerance cannot place the singularity before or after ``s``:
    flagged. Exponential growth (constant ``g``), decay and rotation (``g_a <= 0``, or ``p`` below
    :data:`P_MIN`) are not. Branch-free: divisions by 0 only reach unflagged lanes.
    """
    rate = (log_norm_ - last.log_norm) / size
    mid = start + 0.5 * size
    ratio = (mid - last.mid) / (rate - last.rate)
    pole = mid + last.rate * ratio
    flagged = (
        (last.rate > 0)
        & (rate > last.rate)
        & (last.rate * rate * ratio >= P_MIN)
        & (pole - (start + size) <= rtol * pole)
        # An extrapolated pole inside a step much longer than its distance to the step's start
        # is two coarse secants of a smooth solution (a projectile's quadratic, which dopri5
        # steps exactly), not a singularity: steps shrink towards a pole.
        & (size <= pole - start)
        # A solution growing into a pole is at its largest so far; one rising again after a
        # minimum of its norm (a ball past the top of its flight) is not.
        & (log_norm_ >= last.peak)
    )
    return Growth(log_norm_, rate, mid, pole, last.peak.maximum(log_norm_)), flagged
