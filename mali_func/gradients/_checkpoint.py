r"""``gradient="checkpoint"``: the exact gradient of any solve from a bounded set of stored states.

A solve of :math:`N` steps :math:`x_{g+1} = \Phi_{h_g}(x_g)` needs, walking backwards, each
:math:`x_g` to pull the cotangent back through step :math:`g`. Backprop keeps every step's whole
graph; MALI rebuilds :math:`x_g` with the scheme's inverse. Checkpointing (Griewank & Walther,
"Algorithm 799: revolve", ACM TOMS 2000; the multi-level form here is Griewank's 1992 recursive
scheme with equal levels) stores a few states and recomputes the rest, so it needs only
``step``: plain Runge-Kutta tableaus (:class:`~mali_func.schemes.RungeKutta`), user schemes and
ALF alike, and its gradient is that of backprop through the same steps.

With ``L`` levels of ``m`` rows each (:func:`plan`: ``m^L >= N``), level 0 holds every
:math:`m^{L-1}`-th state, recorded by the forward pass. The backward walks level 0's blocks last
to first; a block of :math:`m^{L-1}` steps is re-run from its stored state recording every
:math:`m^{L-2}`-th state (level 1), and so on down to blocks of ``m`` steps. Such a block is
re-run once more under a VJP: eagerly (and under :mod:`torch.func` transforms) the whole block
under one VJP, so its graph of ``m`` steps is held for that moment; compiled (inside
``while_loop``, whose body must not grow with ``m``), its states are recorded and each step is
pulled back under its own VJP (:func:`mali_func.schemes._scheme.pull_back`).

Memory: at most ``L m`` stored states, and one block's graph eagerly (one step's compiled),
whatever ``N``. Time: the forward pass, ``L - 2`` recording re-runs (``L - 1`` compiled), and one
re-run of every step under its VJP. The controller of an adaptive solve does not know ``N`` in
advance: eagerly its forward keeps level 0 anyway, thinning the kept states as the steps grow
(:class:`Thinned`), so the backward re-runs each accepted step once; compiled solves (and those
under transforms or with a deeper plan) replay the accepted steps once more to record level 0.
With two levels that is backprop's work plus one forward pass.

``checkpoints`` is the budget ``L m`` of stored states. The default, ``2 ceil(sqrt(N))``, is the
least that keeps ``L = 2`` (measured in benchmarks/checkpoint.py); a fixed budget keeps memory
constant in ``N`` and adds a level (one more re-run) each time ``N`` passes ``m^L``.

All loops are the backends' ``fori`` (:mod:`mali_func.backends._loops`), so the same code runs
eagerly, under :mod:`torch.func` transforms and inside ``torch.compile`` (nested ``while_loop`` s,
one per level: compile time does not depend on ``N``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..backends._flat import Count, take
from ..backends._loops import Loops, PythonLoops
from ..schemes import Field, Params, ReversibleScheme, State
from ..schemes._scheme import pull_back
from ..stepping._grid import Grid, buffers, write_row


def default_budget(n_steps: int) -> int:
    """``2 ceil(sqrt(N))``: the smallest budget with one recomputation (two levels)."""
    return 2 * math.isqrt(max(n_steps - 1, 0)) + 2


@dataclass(frozen=True)
class Plan:
    """``levels`` levels of ``rows`` states; level ``l`` stores every ``stride(l)``-th state."""

    levels: int
    rows: int

    def stride(self, level: int) -> int:
        return self.rows ** (self.levels - 1 - level)


def plan(n_steps: int, budget: int | None) -> Plan:
    """The fewest levels whose rows fit ``budget`` states and cover ``n_steps`` steps."""
    n = max(n_steps, 1)
    budget = default_budget(n) if budget is None else budget
    levels = 1
    while True:
        rows = max(1, math.ceil(n ** (1.0 / levels) - 1e-9))
        while rows**levels < n:  # round-off of the root
            rows += 1
        if levels * rows <= budget or rows <= 2:
            return Plan(levels, rows)
        levels += 1


class Thinned:
    """Level 0 of an eager adaptive solve's checkpoints, recorded by its forward pass.

    The controller does not know the number of accepted steps ``N`` in advance, so the forward
    keeps the state after every ``stride``-th accepted step (the initial state first) and, when
    it holds more than the budget (by default ``2 ceil(sqrt(n)) + 2`` after ``n`` steps), drops
    every other one and doubles ``stride``. The backward then needs no replay to record level
    0: it re-runs each block of ``stride`` steps once, with its graph (two levels).
    """

    def __init__(self, budget: int | None) -> None:
        self.rows: list[State] | None = None
        self.stride, self.count, self.budget = 1, 0, budget

    def start(self, x0: State) -> None:
        """The initial state (a forward pass starts here)."""
        self.rows, self.stride, self.count = [tuple(y.detach() for y in x0)], 1, 0

    def add(self, x: State) -> None:
        """The state after one more accepted step."""
        assert self.rows is not None
        self.count += 1
        if self.count % self.stride:
            return
        self.rows.append(tuple(y.detach() for y in x))
        limit = default_budget(self.count) if self.budget is None else max(self.budget, 2)
        if len(self.rows) > limit:
            self.rows, self.stride = self.rows[::2], self.stride * 2

    def plan(self, n_steps: int, budget: int | None) -> Plan | None:
        """The plan over the kept rows (every state kept: one level; else two), when the
        strategy's own plan has at most two levels and blocks no shorter than these (the same
        memory bound); ``None``: level 0 is recorded by a replay, as for compiled solves."""
        own = plan(n_steps, budget)
        if self.rows is None or n_steps != self.count or own.levels > 2:
            return None
        if self.stride == 1:
            return Plan(1, max(n_steps, 1))
        if self.stride > 2 * own.rows:
            return None
        return Plan(2, self.stride)


MAX_TRACED_LEVELS = 6
"""Most levels (nested ``while_loop`` s) a compiled checkpointed solve may have; dynamo's tracing
recursion runs out at about twice that."""


def check_traced_plan(n_steps: int, budget: int | None, adaptive: bool) -> None:
    """Refuse a compiled plan with more than :data:`MAX_TRACED_LEVELS` levels, with the fix."""
    levels = plan(n_steps, budget).levels
    if levels > MAX_TRACED_LEVELS:
        bound = f"max_steps={n_steps}" if adaptive else f"{n_steps} steps"
        raise ValueError(
            f"checkpoints={budget} for {bound} needs {levels} levels of recomputation, more than "
            f"the {MAX_TRACED_LEVELS} nested loops torch.compile traces; give a larger budget "
            f"(e.g. checkpoints={default_budget(n_steps)}, one recomputation)"
            + (
                " or a smaller max_steps (compiled adaptive solves plan for max_steps)"
                if adaptive
                else ""
            )
        )


def _blocks(length: Count, stride: int) -> Count:
    """How many blocks of ``stride`` steps cover ``length`` steps."""
    return (length + stride - 1) // stride


def _block_length(length: Count, j: Any, stride: int) -> Count:
    """The length of block ``j``: ``min(stride, length - j stride)``."""
    rest = length - j * stride
    if isinstance(rest, int):
        return min(stride, rest)
    return torch.clamp(rest, max=stride)


@dataclass(frozen=True)
class Checkpointer:
    """Records and walks back the levels of one solve (module docs)."""

    loops: Loops
    scheme: ReversibleScheme
    field: Field
    grid: Grid
    params: Params
    plan: Plan
    hooks: Any = None  # the field's backward-step callbacks (eager only)

    @property
    def python(self) -> bool:
        return isinstance(self.loops, PythonLoops)

    def step(self, g: Any, x: State) -> State:
        info = self.grid.at(None, g)
        new = self.scheme.step(self.field, info.t, info.h, x, self.params)
        if info.active is None:
            return new
        return tuple(torch.where(info.active, a, b) for a, b in zip(new, x))

    def new_rows(self, x: State) -> Any:
        """Row 0 is ``x``; eager rows are a list, traced ones buffers with a spare last row."""
        return [x] if self.python else buffers(x, self.plan.rows + 1)

    def keep(self, rows: Any, k: Any, x: State, stride: int) -> Any:
        """Store ``x``, the state after step ``k`` of a block, when ``k + 1`` is a row's start."""
        if self.python:
            return [*rows, x] if (k + 1) % stride == 0 else rows
        slot = torch.where((k + 1) % stride == 0, (k + 1) // stride, self.plan.rows)
        return write_row(rows, slot, x)

    def record(self, x: State, start: Any, length: Count, stride: int) -> Any:
        """Re-run a block from ``x`` (its first step is ``start``) keeping every ``stride``-th
        state; stops at the last one kept."""
        n = (_blocks(length, stride) - 1) * stride

        def body(k: Any, c: tuple[State, Any]) -> tuple[State, Any]:
            y, rows = c
            y = self.step(start + k, y)
            return y, self.keep(rows, k, y, stride)

        return self.loops.fori(n, body, (x, self.new_rows(x)))[1]

    def row(self, rows: Any, j: Any) -> State:
        """State ``j`` of a level: eager lists, or buffers stacked per component."""
        return rows[j] if isinstance(rows, list) else tuple(take(r, j) for r in rows)

    def back(self, level: int, rows: Any, start: Any, length: Count, carry: Any, g_out: State,
             time_grad: bool) -> Any:  # fmt: skip
        """Pull ``carry = (a, acc, acc_t)`` back through ``length`` steps from ``start``, whose
        every ``stride(level)``-th state is in ``rows``."""
        stride = self.plan.stride(level)
        if stride == 1:
            vjp = self.loops.vjp((self.grid.t, *self.row(rows, 0), *self.params))

            def pull(k: Any, c: Any) -> Any:
                a, acc, acc_t = c
                info = self.grid.at(None, start + k)
                a = self.grid.inject(a, info, g_out)
                _, a_prev, a_t, a_h, a_p = pull_back(
                    self.scheme, self.field, info.t, info.h, self.row(rows, k), a, self.params,
                    time_grad=time_grad, vjp=vjp,
                )  # fmt: skip
                if self.hooks is not None:
                    self.hooks.backward_step(info.t, self.row(rows, k)[: len(g_out)], info.h)
                if info.active is not None:
                    a_prev = tuple(torch.where(info.active, p, q) for p, q in zip(a_prev, a))
                    a_p = tuple(None if d is None else torch.where(info.active, d, 0) for d in a_p)
                acc = tuple(self.loops.add(s, d) for s, d in zip(acc, a_p))
                if acc_t is not None and a_t is not None and a_h is not None:
                    acc_t = self.grid.add_time_grad(acc_t, info, a_t, a_h)
                return a_prev, acc, acc_t

            return self.loops.fori(length, pull, carry, reverse=True)

        def block(j: Any, c: Any) -> Any:
            first, size = start + j * stride, _block_length(length, j, stride)
            if self.python and self.plan.stride(level + 1) == 1:
                return self.block_vjp(self.row(rows, j), first, size, c, g_out, time_grad)
            sub = self.record(self.row(rows, j), first, size, self.plan.stride(level + 1))
            return self.back(level + 1, sub, first, size, c, g_out, time_grad)

        return self.loops.fori(_blocks(length, stride), block, carry, reverse=True)

    def block_vjp(self, x0: State, start: int, size: int, carry: Any, g_out: State,
                  time_grad: bool) -> Any:  # fmt: skip
        """The last level, eagerly: one VJP of the whole block (re-run with its graph) instead
        of storing its states and re-running each step under its own VJP. Saves one forward
        pass and the per-step autograd calls; memory is one block's graph (``rows`` steps)."""
        a, acc, acc_t = carry
        infos = [self.grid.at(None, start + k) for k in range(size)]
        n_out = len(g_out)
        pulls = [self.grid.injection(info, g_out) for info in infos]
        starts: list[State] = []  # for the backward-step callbacks

        def run(x: State, ts: Tensor, hs: Tensor, params: Params) -> tuple[Tensor, ...]:
            total = x[0].new_zeros(())
            for k, info in enumerate(infos):
                if self.hooks is not None:
                    starts.append(tuple(y.detach() for y in x[:n_out]))
                new = self.scheme.step(self.field, ts[k], hs[k], x, params)
                if info.active is not None:
                    new = tuple(torch.where(info.active, u, v) for u, v in zip(new, x))
                if pulls[k] is not None:
                    total = total + sum((c * y).sum() for c, y in zip(pulls[k], new))
                x = new
            return (*x, total)

        ts = torch.stack([info.t for info in infos])
        hs = torch.stack([torch.as_tensor(info.h) for info in infos])
        vjp = self.loops.vjp((self.grid.t, *x0, *self.params))
        if time_grad:
            _, pullback = vjp(run, x0, ts, hs, self.params)
        else:
            _, pullback = vjp(lambda x, p: run(x, ts, hs, p), x0, self.params)
        cots = pullback((*a, torch.ones((), dtype=x0[0].dtype, device=x0[0].device)))
        for info, y in zip(reversed(infos), reversed(starts)):
            self.hooks.backward_step(info.t, y, info.h)
        a, a_p = cots[0], cots[-1]
        acc = tuple(self.loops.add(s, d) for s, d in zip(acc, a_p))
        if time_grad and acc_t is not None:
            a_ts, a_hs = cots[1], cots[2]
            for k, info in enumerate(infos):
                acc_t = self.grid.add_time_grad(acc_t, info, a_ts[k], a_hs[k])
        return a, acc, acc_t


def reverse_checkpointed(
    ck: Checkpointer, top: Any, cot: State, g_out: State, time_grad: bool
) -> tuple[State, tuple[Tensor | None, ...], Tensor | None]:
    """The cotangents of the initial state, ``params`` and ``t``, from level 0's ``rows``."""
    acc_t = torch.zeros_like(ck.grid.t) if time_grad else None
    carry = (cot, ck.loops.accumulators(ck.params), acc_t)
    a, acc, acc_t = ck.back(0, top, 0, ck.grid.length(0), carry, g_out, time_grad)
    return ck.grid.at_start(a, 0, g_out), acc, acc_t
