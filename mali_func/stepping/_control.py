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

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..backends._loops import Loops
from ..backends._mode import is_concrete
from ..schemes import Field, Params, ReversibleScheme, State
from ._blowup import Growth, blow_up, log_norm
from ._controllers import Tolerances, checked_proposal, error_norm, initial_step
from ._dense import DenseRows, capture, dense, empty_rows, finished
from ._failure import raise_failure, stop_time
from ._grid import Records, buffers, span, write_row
from ._stats import SolveStats

STRETCH = 1.1
"""A step within this factor of the next output time is stretched to land on it."""


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
    # The steps ignore the interior output times under dense output.
    steps_t = torch.stack([t[0], t[-1]]) if dense(tol, t) else t
    solve = _Solve(scheme, field, params, steps_t, t, n_out, tol, hooks, keep)
    dtypes = (torch.int64, t.dtype, t.dtype, torch.bool, torch.bool)
    carry, columns, count = loops.while_(
        solve.running, solve.trial, solve.start(state), max_steps=tol.max_steps, dtypes=dtypes,
        check_every=tol.check_every,
    )  # fmt: skip
    return solve.finish(carry, Records(*columns), count)


class _Trial(NamedTuple):
    """Where one trial step goes: interval ``i`` (``t_i``, ``dt``), from ``tk`` by ``h`` (the
    fraction ``theta`` of the interval), whether it reaches ``t_{i+1}``, and whether the solve
    was still running."""

    i: Tensor
    dt: Tensor
    tk: Tensor
    h: Tensor
    theta: Tensor
    reach: Tensor
    active: Tensor


class _Outcome(NamedTuple):
    """What a trial computed and how the controller judged it."""

    new: State
    ok: Tensor
    h_next: Tensor
    memory: tuple[Tensor, ...]
    tiny: Tensor


@dataclass(frozen=True)
class _Solve:
    """One adaptive solve's constants and its loop's pieces (``running``, ``trial``): the steps
    go over ``t`` (``t_0, t_M`` only under dense output), the outputs are at ``times``."""

    scheme: ReversibleScheme
    field: Field
    params: Params
    t: Tensor
    times: Tensor
    n_out: int
    tol: Tolerances
    hooks: Any
    keep: Any

    @property
    def m(self) -> int:
        return self.t.shape[0] - 1

    def start(self, state: State) -> Carry:
        """The carry before the first trial: the first step size is the Hairer-Wanner estimate
        (two evaluations) or ``first_step``."""
        t, tol, y0 = self.t, self.tol, state[: self.n_out]
        hmag = initial_step(self.field, t[0], y0, self.params, tol, self.scheme.error_order)
        hmag = hmag.abs().clamp(tol.min_step, tol.max_step)
        zero = torch.zeros((), dtype=torch.long, device=t.device)
        zero_t, no = torch.zeros_like(t[0]), torch.zeros_like(zero, dtype=torch.bool)
        growth = Growth(log_norm(y0), zero_t, zero_t, torch.full_like(zero_t, torch.inf),
                        log_norm(y0))  # fmt: skip
        n_first = 0 if tol.first_step is not None else 2  # the evaluations of initial_step
        return Carry(
            state=state, outputs=buffers(y0, self.m + 1), interval=zero,
            c=torch.zeros_like(t[0]), hmag=hmag,
            memory=tol.controller.init(hmag), growth=growth, blew_up=no,
            stats=SolveStats(zero + n_first, zero, zero, no),
            rows=empty_rows(state, self.times) if self.times is not t else (),
        )  # fmt: skip

    def running(self, carry: Carry) -> Tensor:
        return (carry.interval < self.m) & ~carry.stats.failed

    def trial(self, carry: Carry) -> tuple[Carry, tuple[Tensor, ...], Tensor]:
        """One trial step, committed branch-free; its record and whether it was accepted."""
        where = self._where(carry)
        out = self._attempt(carry, where)
        record = (where.i, carry.c, where.theta, out.ok, out.ok & where.reach)
        return self._advance(carry, where, out), record, out.ok

    def _where(self, carry: Carry) -> _Trial:
        i = carry.interval.clamp(max=self.m - 1)
        ti, dt = span(self.t, i)
        remaining = 1 - carry.c
        # A proposal up to STRETCH short of the output time lands on it in one step instead of
        # leaving a sliver step (no cycle: after a rejection the proposal is below safety * h,
        # and STRETCH * safety < 1).
        reach = carry.hmag * STRETCH >= remaining * dt.abs()
        theta = torch.where(reach, remaining, carry.hmag / dt.abs())
        return _Trial(i, dt, ti + carry.c * dt, theta * dt, theta, reach, self.running(carry))

    def _attempt(self, carry: Carry, where: _Trial) -> _Outcome:
        """Take the step with its error estimate and let the controller judge it."""
        tol, n, ctrl = self.tol, self.n_out, self.tol.controller
        tk, h = where.tk, where.h
        live = self.hooks is not None and bool(where.active)  # not the trials past the end
        if live:
            self.hooks.trial(tk, carry.state[:n], h)
        new, err = self.scheme.step_with_error(self.field, tk, h, carry.state, self.params)
        e = error_norm(tol, err, carry.state[:n], new[:n])
        h_tried = where.theta * where.dt.abs()
        proposal = ctrl.propose(carry.memory, e, h_tried, self.scheme.error_order)
        accept, h_next, memory = checked_proposal(ctrl, proposal, h_tried)
        # min_step: a step that small is taken whatever its error; the proposals are bounded.
        ok = where.active & (accept | (h_tried <= tol.min_step))
        if live:
            self.hooks.decided(tk, carry.state[:n], h, ok)
        eps = torch.finfo(self.t.dtype).eps
        tiny = h.abs() <= 4 * eps * torch.maximum(tk.abs(), where.dt.abs())
        h_next = h_next.clamp(tol.min_step, tol.max_step)
        return _Outcome(new, ok, h_next, memory, tiny)

    def _advance(self, carry: Carry, where: _Trial, out: _Outcome) -> Carry:
        """The carry after a trial: its state, outputs, position and step size where accepted,
        the controller's memory and the counts where the solve was running."""
        ok, active, reach, n = out.ok, where.active, where.reach, self.n_out
        growth, pole_near = blow_up(
            carry.growth, log_norm(out.new[:n]), (where.tk - self.t[0]).abs(), where.h.abs(),
            self.tol.rtol,
        )  # fmt: skip
        growth = Growth(*(torch.where(ok, a, b) for a, b in zip(growth, carry.growth)))
        blew_up, ends = ok & pole_near, ok & reach
        state = tuple(torch.where(ok, a, b) for a, b in zip(out.new, carry.state))
        if self.keep is not None and bool(ok):  # eager Python loops only (one host read a trial)
            self.keep.add(state)
        slot = torch.where(ends & (where.i + 1 < self.m), where.i + 1, self.m)
        rows = carry.rows
        if rows:  # dense output: the outputs this step reaches take its end states
            rows = capture(rows, self.times, where.tk + where.h, ok, ends, carry.state,
                           carry.stats.n_accepted, carry.c, where.theta)  # fmt: skip
        stats = SolveStats(
            carry.stats.n_f_evals + active.long() * trial_evaluations(self.scheme),
            carry.stats.n_accepted + ok.long(),
            carry.stats.n_rejected + (active & ~ok).long(),
            # A proposal that is not finite and positive (checked_proposal made it NaN) ends
            # the solve at once.
            carry.stats.failed | (active & ~ok & out.tiny) | blew_up | (active & ~(out.h_next > 0)),
        )  # fmt: skip
        # A step shortened to land on t_{i+1} does not cost the controller its step size: after
        # it, the unclipped proposal stands (if the error allows more, more).
        landed = torch.where(ok & reach, torch.maximum(out.h_next, carry.hmag), out.h_next)
        return Carry(
            state=state,
            outputs=write_row(carry.outputs, slot, state[:n]),
            interval=carry.interval + ends.long(),
            c=torch.where(ok, torch.where(reach, 0, carry.c + where.theta), carry.c),
            hmag=torch.where(active, landed, carry.hmag),
            memory=tuple(_select(active, a, b) for a, b in zip(out.memory, carry.memory)),
            growth=growth,
            blew_up=carry.blew_up | blew_up,
            stats=stats,
            rows=rows,
        )

    def _field_finite(self, carry: Carry) -> bool:
        """Whether the field is finite where the solve stopped (eager: for the error message)."""
        value = self.field(stop_time(self.t, carry), carry.state[: self.n_out], self.params)
        return all(bool(torch.isfinite(v).all()) for v in value)

    def finish(
        self, carry: Carry, records: Records, count: Tensor | int
    ) -> tuple[State, State, Records, Tensor | int, SolveStats, DenseRows | None]:
        """``control``'s results from the last carry; raises for a failed eager solve."""
        stats = carry.stats._replace(failed=carry.stats.failed | (carry.interval < self.m))
        if is_concrete(stats.failed) and bool(stats.failed):
            raise_failure(carry, self.t, self.tol, self.scheme, self._field_finite(carry))
        final = carry.state[: self.n_out]
        outputs = tuple(
            torch.where(stats.failed, float("nan"), torch.cat([o[:-1], y.unsqueeze(0)]))
            for o, y in zip(carry.outputs, final)
        )
        rows = carry.rows or None
        if rows is not None:  # the short steps' evaluations count as the solve's
            rows = finished(rows, stats.failed)
            extra = self.scheme.evaluations_per_step * (self.times.shape[0] - 2)
            stats = stats._replace(n_f_evals=stats.n_f_evals + extra)
        return outputs, carry.state, records, count, stats, rows
