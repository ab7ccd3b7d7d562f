"""The error of an eager adaptive solve that failed: where it stopped and why (a blow-up, a field
that is not finite there, a controller's bad proposal, ``max_steps``, or an underflowing step),
with what to use instead where ALF was the cause."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..schemes import ALF, ReversibleScheme
from ._controllers import Tolerances
from ._grid import span

ALF_HINT = (
    "ALF is stable only for oscillatory dynamics (where the field contracts, its parasitic "
    "mode grows and the steps shrink): for other fields use method='tsit5' or 'dopri5'"
)


def stop_time(t: Tensor, carry: Any) -> Tensor:
    """Where a solve stopped: its position in the interval it was in, or ``t[-1]``."""
    m = t.shape[0] - 1
    ti, dt = span(t, carry.interval.clamp(max=m - 1))
    return t[-1] if bool(carry.interval >= m) else ti + carry.c * dt


def raise_failure(
    carry: Any, t: Tensor, tol: Tolerances, scheme: ReversibleScheme, field_finite: bool
) -> None:
    """The :class:`RuntimeError` of a failed eager solve, naming where and why it stopped."""
    m = t.shape[0] - 1
    reached = stop_time(t, carry)
    if bool(carry.blew_up):
        pole = t[0] + torch.sign(t[-1] - t[0]) * carry.growth.pole
        cause = (
            f"the solution blows up near t = {float(pole):.6g}, closer than rtol={tol.rtol:g} "
            "can resolve (a smaller rtol resolves it further)"
        )
    elif not field_finite:
        cause = (
            "func returned a non-finite value (NaN or inf) there, so no step's error can be "
            "measured; check func at that time and state"
        )
    elif not bool(torch.isfinite(carry.hmag)):
        cause = (
            f"the controller {type(tol.controller).__name__} proposed a step size that is not "
            "finite and positive (NaN, infinite, zero or negative)"
        )
    elif bool(carry.interval < m) and not bool(carry.stats.failed):
        cause = f"max_steps={tol.max_steps} trial steps were not enough"
    else:
        cause = "the step size underflowed (the problem may be stiff or singular there)"
    if isinstance(scheme, ALF) and not bool(carry.blew_up) and field_finite:
        cause += f"; {ALF_HINT}"
    raise RuntimeError(
        f"adaptive solve failed at t = {float(reached):.6g} of "
        f"[{float(t[0]):.6g}, {float(t[-1]):.6g}]: {cause}"
    )
