"""Adaptive step-size control without a host sync per step.

Error estimate (as in the MALI paper's package): the ALF step's ``e = h (u - v)``, measured with
the mixed RMS norm over every element of the solution,

    err = sqrt(mean((e / (atol + rtol * max(|z|, |z'|)))^2)),

accepted when ``err <= 1``. Order-1 controller: the next step is ``h * clip(safety * err^(-1/2),
0.2, 10)``, with no growth right after a rejection. The first step is the Hairer-Wanner estimate
(Hairer, Norsett & Wanner, *Solving ODEs I*, II.4) unless given.

The loop body is branch-free: every iteration makes one trial step and commits it with
``torch.where`` (``accepted``), so the same code runs per sample under ``torch.func.vmap`` (each
sample's norm, step sizes and termination are its own; finished samples idle) and never needs the
host inside a step. The eager driver reads one flag every ``check_every`` iterations to stop.

Steps are recorded as fractions of their interval: a step of interval ``i`` starts at
``t_i + c (t_{i+1} - t_i)`` and has size ``theta (t_{i+1} - t_i)``; the MALI backward and the
backprop replay recompute times from ``(i, c, theta)`` with the same arithmetic, and gradients
reach ``t`` through them. Only these records grow with the number of steps (five scalars a step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from .solvers import Field, Params, ReversibleScheme, State


@dataclass(frozen=True)
class Tolerances:
    rtol: float
    atol: float
    max_steps: int
    first_step: float | None
    safety: float = 0.9
    check_every: int = 8


class Records(NamedTuple):
    """One entry per trial step (only accepted ones once compacted)."""

    interval: Tensor  # int64, the interval index i
    start: Tensor  # c, the start as a fraction of the interval
    size: Tensor  # theta, the size as a fraction of the interval
    accepted: Tensor  # bool
    ends: Tensor  # bool: the step ends its interval (an output follows it)


class SolveStats(NamedTuple):
    """Counts of one solve, as tensors (per sample under ``vmap``)."""

    n_f_evals: Tensor
    n_accepted: Tensor
    n_rejected: Tensor
    failed: Tensor


def rms_norm(err: State, before: State, after: State, rtol: float, atol: float) -> Tensor:
    total: Tensor | None = None
    count = 0
    for e, a, b in zip(err, before, after):
        scaled = e / (atol + rtol * torch.maximum(a.abs(), b.abs()))
        s = scaled.square().sum()
        total = s if total is None else total + s
        count += e.numel()
    assert total is not None
    return (total / max(count, 1)).sqrt()


def span(t: Tensor, i: Tensor) -> tuple[Tensor, Tensor]:
    """``t[i]`` and ``t[i + 1] - t[i]`` for a 0-dim index (batched under vmap too)."""
    pair = t.index_select(0, torch.stack([i, i + 1]))
    return pair[0], pair[1] - pair[0]


def interval_times(t: Tensor, i: Tensor, c: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
    """Start time and size of a step recorded as ``(i, c, theta)``."""
    ti, dt = span(t, i)
    return ti + c * dt, theta * dt


def initial_step(
    field: Field, t0: Tensor, y0: State, f0: State, params: Params, tol: Tolerances
) -> Tensor:
    """Hairer-Wanner first step for an order-1 error estimate (one extra field evaluation)."""
    if tol.first_step is not None:
        return torch.full_like(t0, tol.first_step)
    scale = tuple(tol.atol + tol.rtol * y.abs() for y in y0)
    d0 = rms_norm(tuple(y / s for y, s in zip(y0, scale)), y0, y0, 0.0, 1.0)
    d1 = rms_norm(tuple(f / s for f, s in zip(f0, scale)), y0, y0, 0.0, 1.0)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
    y1 = tuple(y + h0 * f for y, f in zip(y0, f0))
    f1 = field(t0 + h0, y1, params)
    diff = tuple((a - b) / s for a, b, s in zip(f1, f0, scale))
    d2 = rms_norm(diff, y0, y0, 0.0, 1.0) / h0
    dmax = torch.maximum(d1, d2)
    h1 = torch.where(
        dmax <= 1e-15, torch.clamp(h0 * 1e-3, min=1e-6), (0.01 / dmax.clamp_min(1e-300)).sqrt()
    )
    return torch.minimum(100 * h0, h1)


def _host_all(flag: Tensor) -> bool:
    """``flag.all()`` read on the host, across a vmapped batch too (one sync)."""
    x = flag
    while torch._C._functorch.is_functorch_wrapped_tensor(x):
        x = torch._C._functorch.get_unwrapped(x)
    return bool(x.all())


class _Carry(NamedTuple):
    state: State
    outputs: tuple[Tensor, ...]
    interval: Tensor
    c: Tensor
    hmag: Tensor
    rejected_last: Tensor
    stats: SolveStats


def _iterate(
    scheme: ReversibleScheme,
    field: Field,
    t: Tensor,
    params: Params,
    n_out: int,
    tol: Tolerances,
    carry: _Carry,
) -> tuple[_Carry, tuple[Tensor, ...]]:
    """One branch-free trial step; returns the new carry and its record entry."""
    m = t.shape[0] - 1
    i = carry.interval.clamp(max=m - 1)
    active = (carry.interval < m) & ~carry.stats.failed
    dt = span(t, i)[1]
    remaining = 1 - carry.c
    reach = carry.hmag >= remaining * dt.abs()
    theta = torch.where(reach, remaining, carry.hmag / dt.abs())
    tk, h = interval_times(t, i, carry.c, theta)
    new, err = scheme.step_with_error(field, tk, h, carry.state, params)
    e = rms_norm(err, carry.state[:n_out], new[:n_out], tol.rtol, tol.atol)
    ok = active & (e <= 1)
    ends = ok & reach
    tiny = h.abs() <= 16 * torch.finfo(t.dtype).eps * torch.maximum(tk.abs(), dt.abs())
    state = tuple(torch.where(ok, a, b) for a, b in zip(new, carry.state))
    slot = torch.where(ends, i + 1, torch.full_like(i, m + 1)).reshape(1)
    outputs = tuple(
        out.index_copy(0, slot, z.unsqueeze(0)) for out, z in zip(carry.outputs, state[:n_out])
    )
    factor = tol.safety * e.clamp_min(1e-10).rsqrt()
    cap = torch.where(
        carry.rejected_last | ~ok, torch.ones_like(factor), torch.full_like(factor, 10.0)
    )
    factor = torch.where(torch.isfinite(e), torch.minimum(factor.clamp(min=0.2), cap), 0.2)
    used = theta * dt.abs()
    hmag = torch.where(active, used * factor, carry.hmag)
    stats = SolveStats(
        carry.stats.n_f_evals + active.long(),
        carry.stats.n_accepted + ok.long(),
        carry.stats.n_rejected + (active & ~ok).long(),
        carry.stats.failed | (active & ~ok & tiny),
    )
    new_carry = _Carry(
        state=state,
        outputs=outputs,
        interval=carry.interval + ends.long(),
        c=torch.where(ok, torch.where(reach, torch.zeros_like(carry.c), carry.c + theta), carry.c),
        hmag=hmag,
        rejected_last=active & ~ok,
        stats=stats,
    )
    return new_carry, (i, carry.c, theta, ok, ends)


def initial_carry(
    field: Field, t: Tensor, state: State, params: Params, n_out: int, tol: Tolerances
) -> _Carry:
    """The controller's start: first step size, outputs (``y0``, then NaN rows, then a spare
    row for steps that end no interval), zero counters (two field evaluations already made)."""
    m = t.shape[0] - 1
    y0 = state[:n_out]
    f0 = field(t[0], y0, params)
    hmag = initial_step(field, t[0], y0, f0, params, tol).abs()
    outputs = tuple(
        torch.cat([y.unsqueeze(0), torch.full((m + 1, *y.shape), float("nan")).to(y)]) for y in y0
    )
    zero = torch.zeros((), dtype=torch.long, device=t.device)
    return _Carry(
        state=state,
        outputs=outputs,
        interval=zero,
        c=torch.zeros_like(t[0]),
        hmag=hmag,
        rejected_last=torch.zeros((), dtype=torch.bool, device=t.device),
        stats=SolveStats(zero + 2, zero, zero, torch.zeros_like(zero, dtype=torch.bool)),
    )


def run_controller(
    scheme: ReversibleScheme,
    field: Field,
    t: Tensor,
    state: State,
    params: Params,
    n_out: int,
    tol: Tolerances,
    *,
    eager: bool,
) -> tuple[tuple[Tensor, ...], State, Records, SolveStats]:
    """Solve adaptively; return outputs at every ``t_i``, the final state, records and stats.

    ``eager`` (unbatched eager solves) keeps only the accepted steps in the records, so rejected
    trials cost the backward nothing, and raises :class:`RuntimeError` on failure; both read the
    host once more. Otherwise a failed solve returns NaN outputs and ``stats.failed``.
    """
    m = t.shape[0] - 1
    carry = initial_carry(field, t, state, params, n_out, tol)
    entries: list[tuple[Tensor, ...]] = []
    for it in range(1, tol.max_steps + 1):
        carry, entry = _iterate(scheme, field, t, params, n_out, tol, carry)
        entries.append(entry)
        if (it % tol.check_every == 0 or it == tol.max_steps) and _host_all(
            (carry.interval >= m) | carry.stats.failed
        ):
            break
    unfinished = carry.interval < m
    stats = carry.stats._replace(failed=carry.stats.failed | unfinished)
    records = Records(*(torch.stack(column) for column in zip(*entries)))
    if eager:
        if bool(stats.failed):
            reached = interval_times(t, carry.interval.clamp(max=m - 1), carry.c, carry.c)[0]
            cause = (
                f"max_steps={tol.max_steps} trial steps were not enough"
                if bool(unfinished) and not bool(carry.stats.failed)
                else "the step size underflowed (the problem may be stiff or singular there)"
            )
            raise RuntimeError(
                f"adaptive solve failed at t = {float(reached):.6g} of "
                f"[{float(t[0]):.6g}, {float(t[-1]):.6g}]: {cause}"
            )
        keep = records.accepted.nonzero().squeeze(-1)
        records = Records(*(r.index_select(0, keep) for r in records))
    outputs = tuple(
        torch.where(stats.failed, torch.full_like(out[:-1], float("nan")), out[:-1])
        for out in carry.outputs
    )
    return outputs, carry.state, records, stats
