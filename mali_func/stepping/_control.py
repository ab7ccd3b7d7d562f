"""Adaptive step-size control, written once for every loop backend.

Each trial takes a step with the scheme's error estimate (:meth:`ReversibleScheme.step_with_error`),
measures it with the mixed RMS norm and lets the solve's controller accept or reject it and
propose the next size (:mod:`mali_func.stepping._controllers`). A step shortened to land on an
output time keeps the proposal it was cut from for the step after it, so an output time costs at
most the one step it splits in two, and a proposal less than 10% short of an output time is
stretched to land on it (no sliver step).

A solve fails when ``max_steps`` trials are not enough, when a rejected step is below 4 ulps of
the time (underflow; a non-finite trial has a NaN error and is rejected until then), or when the
solution blows up closer to a singularity than ``rtol`` resolves
(:func:`mali_func.stepping._blowup.blow_up`).

The trial step is branch-free: each trial is committed with ``torch.where``, so the same code runs
per sample under ``torch.func.vmap`` (each sample's norm, steps and termination are its own) and
inside a ``while_loop``. Each trial yields a record ``(i, c, theta, accepted, ends)``
(:class:`mali_func.stepping._grid.Records`); the loop backend keeps the accepted ones (all of them
under ``vmap``, where each sample's backward skips its own rejected trials).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..backends._loops import Loops
from ..backends._mode import is_concrete
from ..schemes import ALF, Field, Params, ReversibleScheme, State
from ._blowup import Growth, blow_up, log_norm
from ._controllers import Tolerances, checked_proposal, error_norm, initial_step
from ._dense import DenseRows, capture, dense, empty_rows, finished
from ._grid import Records, buffers, span, write_row

STRETCH = 1.1
"""A step within this factor of the next output time is stretched to land on it."""

ALF_HINT = (
    "ALF is stable only for oscillatory dynamics (where the field contracts, its parasitic "
    "mode grows and the steps shrink): for other fields use method='tsit5' or 'dopri5'"
)


class SolveStats(NamedTuple):
    """Counts of one solve, as tensors (per sample under ``vmap``).

    ``n_f_evals`` counts the field evaluations of the forward solve: the checks of the field at
    ``t0`` and the scheme's start (:meth:`~mali_func.schemes.ReversibleScheme.init`), the
    first-step estimate, and ``evaluations_with_error`` (else ``evaluations_per_step``) for every
    step tried (under ``vmap`` each sample's own): the same count in every mode. Not counted:
    the backward pass, the replay of the accepted steps with autograd by an eager
    ``gradient="backprop"`` adaptive solve, and the trials an eager solve runs past its end
    before it reads its stop flag (:meth:`mali_func.backends._loops.PythonLoops.while_`).

    ``fallback`` and ``parasitic`` report on the gradient's and the solution's trustworthiness.
    """

    n_f_evals: Tensor
    n_accepted: Tensor
    n_rejected: Tensor
    failed: Tensor
    fallback: Tensor | None = None
    """Set (in place) by the backward pass of an eager MALI solve whose reconstruction check
    failed and whose gradient was therefore recomputed by checkpointing; ``False`` until then
    (and always for other gradients, and for compiled solves, which fall back inside the graph
    without setting it)."""
    parasitic: Tensor | None = None
    """The size of the scheme's parasitic mode at the end of the solve against the solution's
    (:mod:`mali_func.stepping._parasitic`): the coupled pair's relative disagreement, or fixed-step
    ALF's velocity mismatch; 0 where nothing is measured (other schemes, adaptive ALF, whose error
    estimate holds it to the tolerances); not measured under export (``None``)."""


def trial_evaluations(scheme: ReversibleScheme) -> int:
    """Field evaluations of one adaptive trial (:meth:`~ReversibleScheme.step_with_error`)."""
    return scheme.evaluations_with_error or scheme.evaluations_per_step


def _select(cond: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``torch.where(cond, a, b)``; for booleans with logical operators (onnxruntime has no
    boolean ``Where``)."""
    if a.dtype == torch.bool:
        return (cond & a) | (~cond & b)
    return torch.where(cond, a, b)


class Carry(NamedTuple):
    state: State
    outputs: tuple[Tensor, ...]  # rows 0..M; row M takes the writes of steps that end nothing
    interval: Tensor
    c: Tensor
    hmag: Tensor
    memory: tuple[Tensor, ...]
    growth: Growth
    blew_up: Tensor
    stats: SolveStats
    rows: DenseRows | tuple[()]  # the interpolated outputs' rows (dense output), or ()


def control(
    loops: Loops,
    scheme: ReversibleScheme,
    field: Field,
    t: Tensor,
    state: State,
    params: Params,
    n_out: int,
    tol: Tolerances,
    hooks: Any = None,
    keep: Any = None,
) -> tuple[State, State, Records, Tensor | int, SolveStats, DenseRows | None]:
    """Solve adaptively: outputs at every ``t_i``, final state, records, their count, stats,
    and the rows of the interpolated outputs. ``hooks``: the field's step callbacks (eager only,
    :mod:`mali_func.field._callbacks`).

    With ``tol.interpolate`` (and interior output times) the steps land on ``t_0`` and ``t_M``
    only: the outputs are those two rows, and the interior ones come from the returned
    :class:`~mali_func.stepping._dense.DenseRows` (:func:`mali_func.stepping._dense.interpolate`);
    otherwise the rows are ``None``. ``keep``: an eager checkpointed solve's level 0
    (:class:`mali_func.gradients._checkpoint.Thinned`), given every accepted state.

    A failure (``max_steps`` trials, or the step size underflows) raises :class:`RuntimeError`
    in plain eager code; otherwise the outputs are NaN and ``stats.failed`` is set.
    """
    ctrl = tol.controller
    times = t
    if dense(tol, t):  # the steps ignore the interior output times
        t = torch.stack([times[0], times[-1]])
    m, order, eps = t.shape[0] - 1, scheme.error_order, torch.finfo(t.dtype).eps
    y0 = state[:n_out]
    hmag = initial_step(field, t[0], y0, params, tol, order).abs()
    hmag = hmag.clamp(tol.min_step, tol.max_step)
    n_first = 0 if tol.first_step is not None else 2  # the evaluations of initial_step
    zero = torch.zeros((), dtype=torch.long, device=t.device)
    zero_t = torch.zeros_like(t[0])
    start = Carry(
        state=state,
        outputs=buffers(y0, m + 1),
        interval=zero,
        c=torch.zeros_like(t[0]),
        hmag=hmag,
        memory=ctrl.init(hmag),
        growth=Growth(
            log_norm(y0), zero_t, zero_t, torch.full_like(zero_t, torch.inf), log_norm(y0)
        ),
        blew_up=torch.zeros_like(zero, dtype=torch.bool),
        stats=SolveStats(zero + n_first, zero, zero, torch.zeros_like(zero, dtype=torch.bool)),
        rows=empty_rows(state, times) if times is not t else (),
    )

    def running(carry: Carry) -> Tensor:
        return (carry.interval < m) & ~carry.stats.failed

    def trial(carry: Carry) -> tuple[Carry, tuple[Tensor, ...], Tensor]:
        i = carry.interval.clamp(max=m - 1)
        active = running(carry)
        ti, dt = span(t, i)
        remaining = 1 - carry.c
        # A proposal up to STRETCH short of the output time lands on it in one step instead of
        # leaving a sliver step (no cycle: after a rejection the proposal is below safety * h,
        # and STRETCH * safety < 1).
        reach = carry.hmag * STRETCH >= remaining * dt.abs()
        theta = torch.where(reach, remaining, carry.hmag / dt.abs())
        tk, h = ti + carry.c * dt, theta * dt
        live = hooks is not None and bool(active)  # not the trials run past the end
        if live:
            hooks.trial(tk, carry.state[:n_out], h)
        new, err = scheme.step_with_error(field, tk, h, carry.state, params)
        e = error_norm(tol, err, carry.state[:n_out], new[:n_out])
        h_tried = theta * dt.abs()
        accept, h_next, memory = checked_proposal(
            ctrl, ctrl.propose(carry.memory, e, h_tried, order), h_tried
        )
        # min_step: a step that small is taken whatever its error; the proposals are bounded.
        accept = accept | (h_tried <= tol.min_step)
        h_next = h_next.clamp(tol.min_step, tol.max_step)
        ok = active & accept
        if live:
            hooks.decided(tk, carry.state[:n_out], h, ok)
        tiny = h.abs() <= 4 * eps * torch.maximum(tk.abs(), dt.abs())
        growth, pole_near = blow_up(
            carry.growth, log_norm(new[:n_out]), (tk - t[0]).abs(), h.abs(), tol.rtol
        )
        growth = Growth(*(torch.where(ok, a, b) for a, b in zip(growth, carry.growth)))
        blew_up = ok & pole_near
        ends = ok & reach
        state = tuple(torch.where(ok, a, b) for a, b in zip(new, carry.state))
        if keep is not None and bool(ok):  # eager Python loops only (one host read a trial)
            keep.add(state)
        slot = torch.where(ends & (i + 1 < m), i + 1, m)
        rows = carry.rows
        if rows:  # dense output: the outputs this step reaches take its end states
            rows = capture(rows, times, tk + h, ok, ends, carry.state, carry.stats.n_accepted,
                           carry.c, theta)  # fmt: skip
        memory = tuple(_select(active, a, b) for a, b in zip(memory, carry.memory))
        stats = SolveStats(
            carry.stats.n_f_evals + active.long() * trial_evaluations(scheme),
            carry.stats.n_accepted + ok.long(),
            carry.stats.n_rejected + (active & ~ok).long(),
            # A proposal that is not finite and positive (checked_proposal made it NaN) ends
            # the solve at once.
            carry.stats.failed | (active & ~ok & tiny) | blew_up | (active & ~(h_next > 0)),
        )
        new_carry = Carry(
            state=state,
            outputs=write_row(carry.outputs, slot, state[:n_out]),
            interval=carry.interval + ends.long(),
            c=torch.where(ok, torch.where(reach, 0, carry.c + theta), carry.c),
            # A step shortened to land on t_{i+1} does not cost the controller its step size:
            # after it, the unclipped proposal stands (if the error allows more, more).
            hmag=torch.where(
                active,
                torch.where(ok & reach, torch.maximum(h_next, carry.hmag), h_next),
                carry.hmag,
            ),
            memory=memory,
            growth=growth,
            blew_up=carry.blew_up | blew_up,
            stats=stats,
            rows=rows,
        )
        return new_carry, (i, carry.c, theta, ok, ends), ok

    dtypes = (torch.int64, t.dtype, t.dtype, torch.bool, torch.bool)
    carry, columns, count = loops.while_(
        running, trial, start, max_steps=tol.max_steps, dtypes=dtypes, check_every=tol.check_every
    )
    unfinished = carry.interval < m
    stats = carry.stats._replace(failed=carry.stats.failed | unfinished)
    if is_concrete(stats.failed) and bool(stats.failed):
        _raise_failure(carry, t, tol, scheme)
    final = carry.state[:n_out]
    outputs = tuple(
        torch.where(stats.failed, float("nan"), torch.cat([o[:-1], y.unsqueeze(0)]))
        for o, y in zip(carry.outputs, final)
    )
    rows = carry.rows or None
    if rows is not None:  # the short steps' evaluations count as the solve's
        rows = finished(rows, stats.failed)
        extra = scheme.evaluations_per_step * (times.shape[0] - 2)
        stats = stats._replace(n_f_evals=stats.n_f_evals + extra)
    return outputs, carry.state, Records(*columns), count, stats, rows


def _raise_failure(carry: Carry, t: Tensor, tol: Tolerances, scheme: ReversibleScheme) -> None:
    """The :class:`RuntimeError` of a failed eager solve, naming where and why it stopped."""
    m = t.shape[0] - 1
    ti, dt = span(t, carry.interval.clamp(max=m - 1))
    reached = t[-1] if bool(carry.interval >= m) else ti + carry.c * dt
    if bool(carry.blew_up):
        pole = t[0] + torch.sign(t[-1] - t[0]) * carry.growth.pole
        cause = (
            f"the solution blows up near t = {float(pole):.6g}, closer than rtol={tol.rtol:g} "
            "can resolve (a smaller rtol resolves it further)"
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
    if isinstance(scheme, ALF) and not bool(carry.blew_up):
        cause += f"; {ALF_HINT}"
    raise RuntimeError(
        f"adaptive solve failed at t = {float(reached):.6g} of "
        f"[{float(t[0]):.6g}, {float(t[-1]):.6g}]: {cause}"
    )
