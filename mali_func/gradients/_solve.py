"""The autograd.Function of a solve: MALI's backward (or checkpointing) behind one ``apply``.

:class:`Solve` runs the forward pass (:func:`mali_func.gradients._passes.forward`, or the adaptive
controller, :func:`mali_func.stepping._control.control`) without a graph and keeps only the inputs,
the outputs and, adaptively, the records of the accepted steps. Its backward walks the same steps
back: by inverting them (:func:`mali_func.gradients._passes.reverse`: MALI, Zhuang, Dvornek,
Tatikonda & Duncan, "MALI: A memory efficient and reverse accurate integrator for Neural ODEs",
ICLR 2021), which gives the exact gradient of the discrete forward computation up to the round-off
of the reconstruction, measured against the kept initial state (:mod:`mali_func.gradients._drift`);
or, for ``gradient="checkpoint"``, from stored states (:mod:`mali_func.gradients._checkpoint`).

It is written for :mod:`torch.func`: ``forward`` takes no ctx, ``setup_context`` saves only
inputs and outputs, ``generate_vmap_rule`` lets ``vmap`` batch it, and the backward
differentiates with :func:`torch.func.vjp` under transforms, so ``vmap(grad(...))`` and
``jacrev`` see through the solve.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..backends._flat import flatten, unaliased
from ..backends._loops import PYTHON, Loops
from ..backends._mode import is_concrete
from ..schemes import Field, Params, ReversibleScheme, State
from ..stepping._control import control
from ..stepping._controllers import Tolerances
from ..stepping._grid import DenseGrid, FlatGrid, Grid, RecordedGrid, Records, UniformGrid
from ._checkpoint import Checkpointer, Plan, Thinned, plan, reverse_checkpointed
from ._drift import Fallback, check_reconstruction, failed, reconstruction_error
from ._passes import forward, reverse

N_RECORDS = len(Records._fields)
FIXED_BOUND = 2**16
"""Most steps of a compiled fixed grid with a tensor step count whose MALI gradient falls back:
its checkpoint plan must be static, so it is made for this bound."""
FIXED_BUDGET = 123
"""States that plan keeps: three levels of 41 (two recording re-runs). Four levels of 16 would
keep 64, but inductor then compiles the nested loops for minutes (measured: three levels add
12 s to a first compiled call of 8 s, two levels 9 s)."""
N_STATS = 4  # the SolveStats fields the Function returns (not fallback, parasitic)
N_DENSE = 3  # slot, start, size of the interpolated outputs (mali_func.stepping._dense)


@dataclass(frozen=True, eq=False)
class Spec:
    """Everything about a solve that is not a tensor."""

    loops: Loops
    scheme: ReversibleScheme
    field: Field
    n_state: int
    n_out: int
    counts: tuple[int, ...] | None  # fixed grid walked with Python ints; None: ``n`` or adaptive
    tol: Tolerances | None  # adaptive solves only
    reconstruction_tol: float | None
    replay: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext
    checkpoint: bool = False  # gradient="checkpoint" (fixed grids need ``counts``)
    budget: int | None = None  # its ``checkpoints``; None: the default of ``plan``
    unroll: int = 1  # steps per iteration of a compiled loop (``odeint(unroll=)``)
    fallback: Fallback | None = None  # MALI: recompute by checkpointing when the check fails
    hooks: Any = None  # the field's step callbacks (eager only: mali_func.field._callbacks)
    dense: bool = False  # adaptive, interpolating interior output times (DenseGrid)
    level0: Thinned | None = None  # eager adaptive checkpointing: level 0 kept by the forward

    def checkpointer(
        self, grid: Grid, params: Params, n_steps: int, budget: int | None = None,
        plan_: Plan | None = None,
    ) -> Checkpointer:  # fmt: skip
        """The checkpointer of ``gradient="checkpoint"`` (with the backward's callbacks) or, given
        a ``budget``, of a fallback; ``plan_``: a plan made already."""
        plan_ = plan_ or plan(n_steps, self.budget if budget is None else budget)
        hooks = self.hooks if self.checkpoint else None
        return Checkpointer(self.loops, self.scheme, self.field, grid, params, plan_, hooks)

    def fixed(
        self, t: Tensor, n: Tensor | None, params: Params
    ) -> tuple[Grid, Checkpointer | None]:
        """A fixed grid, with its checkpointer under ``gradient="checkpoint"``."""
        if not self.checkpoint:
            return UniformGrid(t, self.counts if n is None else n), None
        assert self.counts is not None
        grid = FlatGrid(t, self.counts)
        return grid, self.checkpointer(grid, params, grid.total)

    def n_rows(self) -> int:
        """How many differentiable outputs the interpolated outputs' rows add (after ``aux``)."""
        return self.n_state if self.dense else 0

    def n_meta(self) -> int:
        """Non-differentiable outputs after the records and their count (adaptive solves)."""
        return N_DENSE if self.dense else 0

    def n_keep(self) -> int:
        """How many state components level 0 adds to a checkpointed fixed grid's outputs."""
        return self.n_state if self.checkpoint and self.tol is None else 0


class Solve(torch.autograd.Function):
    """``apply(spec, t, n, probe, *state0, *params)``.

    Returns ``(*trajectories, *aux_final)`` on a fixed grid (``counts``, or ``n`` steps per
    interval as a 0-dim tensor) and ``(*trajectories, *aux_final, *records, count, *stats)``
    adaptively (records and stats are not differentiable); an interpolating solve
    (``spec.dense``) returns the rows at ``t_0`` and ``t_M`` as trajectories, and the extended
    ``starts`` after ``aux_final`` and ``(slot, start, size)`` after ``count``
    (:class:`~mali_func.stepping._dense.DenseRows`). ``probe`` is a
    :class:`~mali_func.DriftMonitor` leaf (or ``None``) whose gradient is the relative
    reconstruction error of the backward pass.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(  # type: ignore[override]
        spec: Spec, t: Tensor, n: Tensor | None, probe: Tensor | None, *tensors: Tensor
    ) -> tuple[Tensor, ...]:
        state0, params = tensors[: spec.n_state], tensors[spec.n_state :]
        if spec.tol is None:
            grid, keep = spec.fixed(t, n, params)
            unroll = spec.unroll if keep is None else 1
            trajs, final, rows = forward(
                spec.loops, spec.scheme, spec.field, grid, state0, params, spec.n_out, keep, unroll,
                hooks=spec.hooks,
            )  # fmt: skip
            if isinstance(rows, list):
                rows = tuple(torch.stack(column) for column in zip(*rows))
            return (*trajs, *unaliased(final[spec.n_out :], tensors), *(rows or ()))
        if spec.level0 is not None:
            spec.level0.start(state0)
        trajs, final, records, count, stats, rows = control(
            spec.loops, spec.scheme, spec.field, t, state0, params, spec.n_out, spec.tol,
            hooks=spec.hooks, keep=spec.level0,
        )  # fmt: skip
        count_t = count if isinstance(count, Tensor) else torch.tensor(count, device=t.device)
        return (
            *trajs,
            *unaliased(final[spec.n_out :], tensors),
            *(() if rows is None else rows.starts),
            *records,
            count_t,
            *(() if rows is None else (rows.slot, rows.start, rows.size)),
            *stats[:N_STATS],
        )

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        spec, t, n, probe, *tensors = inputs
        ctx.spec, ctx.has_probe, ctx.has_n = spec, probe is not None, n is not None
        ctx.n_tensors = len(tensors)
        if spec.tol is not None:
            nr = spec.n_rows()
            ctx.mark_non_differentiable(*output[spec.n_state + nr :])
            # The rows of interpolated outputs are not needed by the backward: not saved.
            output = (*output[: spec.n_state], *output[spec.n_state + nr : len(output) - N_STATS])
        elif spec.n_keep():
            ctx.mark_non_differentiable(*output[spec.n_state :])
        saved = (t, *((n,) if n is not None else ()), *tensors, *output)
        ctx.save_for_backward(*saved)
        # Forward mode recomputes the solve from its inputs (and recorded steps). It is given the
        # same tensors: torch's generated vmap rule keeps one list of batch dims for both, and a
        # different list broke vmap(solve) followed by .backward() ("flat_bdims must not be None").
        ctx.save_for_forward(*saved)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        spec: Spec = ctx.spec
        t, *saved = ctx.saved_tensors
        n = saved.pop(0) if ctx.has_n else None
        ns, n_out = spec.n_state, spec.n_out
        n_extra = spec.n_keep() if spec.tol is None else N_RECORDS + 1 + spec.n_meta()
        n_p = len(saved) - ns - ns - n_extra
        state0, params = tuple(saved[:ns]), tuple(saved[ns : ns + n_p])
        trajs, aux = saved[ns + n_p : ns + n_p + n_out], saved[ns + n_p + n_out : ns + n_p + ns]
        extra = tuple(saved[ns + n_p + ns :])
        g_out = tuple(g.contiguous() for g in grads[:n_out])
        cot = (*(g[-1] for g in g_out), *grads[n_out:ns])
        time_grad = bool(ctx.needs_input_grad[1])
        g_rows = None
        if spec.dense:  # the cotangents of the interpolated outputs' step starts
            g_rows = tuple(g.contiguous() for g in grads[ns : 2 * ns])
        grid, ck, top = _grid_of(spec, t, n, params, extra, g_rows)
        if ck is not None:
            cot, acc, grad_t = _checkpointed(spec, ck, top, state0, cot, g_out, time_grad)
            return (None, grad_t, None, None, *cot, *acc)
        final = (*(y[-1] for y in trajs), *aux)
        with spec.replay():
            state, cot_m, acc, grad_t = reverse(
                spec.loops, spec.scheme, spec.field, grid, final, cot, g_out, params, time_grad,
                unroll=spec.unroll, hooks=spec.hooks,
            )  # fmt: skip
        error = reconstruction_error(state, state0)
        fallback = spec.fallback
        if fallback is not None and fallback.traced:
            cot_m, acc, grad_t = _traced_fallback(
                spec, grid, t, n, params, state0, cot, g_out, time_grad, error,
                (cot_m, acc, grad_t),
            )  # fmt: skip
        else:
            mask = check_reconstruction(error, spec.reconstruction_tol, fallback is not None)
            if mask is not None:
                # The verified gradient: the reconstruction failed (for some samples, under
                # vmap), so the exact gradient is recomputed from the forward's own grid by
                # checkpointing.
                assert fallback is not None
                ck = _fallback_checkpointer(spec, grid, t, params)
                exact = _checkpointed(spec, ck, None, state0, cot, g_out, time_grad)
                cot_m, acc, grad_t = _select_where(mask, exact, (cot_m, acc, grad_t))
                fallback.report(error, spec.reconstruction_tol, _describe(spec, t, grid))
        return (None, grad_t, None, error if ctx.has_probe else None, *cot_m, *acc)


def _traced_fallback(
    spec: Spec, grid: Grid, t: Tensor, n: Tensor | None, params: Params, state0: State,
    cot: State, g_out: State, time_grad: bool, error: Tensor, raw: Any,
) -> Any:  # fmt: skip
    """The fallback of a compiled solve: ``torch.cond`` on the check, the checkpointed backward
    over the forward's steps (:func:`_traced_checkpointer`) in its taken branch. The branches get
    no two operands that alias (``cot`` holds views of ``g_out``: copied)."""
    if spec.tol is not None:
        assert isinstance(grid, RecordedGrid)
        steps: tuple[Any, ...] = (tuple(grid.records), grid.count)
        if isinstance(grid, DenseGrid):
            steps = (*steps, grid.slot, grid.g_starts)
    else:
        steps = () if n is None else (n,)
    inputs = (t, params, state0, tuple(c.clone() for c in cot), tuple(g.clone() for g in g_out),
              steps)  # fmt: skip
    operands, rebuild_inputs = flatten(inputs)
    results, rebuild_results = flatten(raw)

    def exact(*ops: Tensor) -> tuple[Tensor, ...]:
        t_, p_, s_, c_, g_, steps_ = rebuild_inputs(list(ops[: len(operands)]))
        ck = _traced_checkpointer(spec, t_, p_, steps_)
        out = _checkpointed(spec, ck, None, s_, c_, g_, time_grad)
        return tuple(x.clone() for x in flatten(out)[0])

    def keep(*ops: Tensor) -> tuple[Tensor, ...]:
        return tuple(x.clone() for x in ops[len(operands) :])

    chosen = torch.cond(failed(error, spec.reconstruction_tol), exact, keep, (*operands, *results))
    return rebuild_results(list(chosen))


def _traced_checkpointer(spec: Spec, t: Tensor, params: Params, steps: Any) -> Checkpointer:
    """The checkpointer of a compiled fallback: the recorded accepted steps (planned for
    ``max_steps``), a fixed grid of static counts, or one of a tensor count (planned for
    :data:`FIXED_BOUND` steps with :data:`FIXED_BUDGET` states: three levels of 41)."""
    if spec.tol is not None:
        records, count, *dense = steps
        grid = _recorded(t, Records(*records), count, *dense)
        return spec.checkpointer(grid, params, spec.tol.max_steps)
    if not steps:
        assert spec.counts is not None
        flat = FlatGrid(t, spec.counts)
        return spec.checkpointer(flat, params, flat.total)
    return spec.checkpointer(FlatGrid(t, steps[0]), params, FIXED_BOUND, FIXED_BUDGET)


def _recorded(t: Tensor, records: Records, count: Any, slot: Tensor | None = None,
              g_rows: Any = None) -> RecordedGrid:  # fmt: skip
    """An adaptive solve's grid: its records, and the interpolated outputs' ``slot``."""
    if slot is None:
        return RecordedGrid(t, records, count)
    return DenseGrid(t, records, count, slot, g_rows)


def _grid_of(spec: Spec, t: Tensor, n: Tensor | None, params: Params, extra: tuple[Tensor, ...],
             g_rows: Any = None) -> tuple[Grid, Checkpointer | None, Any]:  # fmt: skip
    """The forward's grid for the backward and, under ``gradient="checkpoint"``, its
    checkpointer and the level 0 the forward kept (``None``: the backward records it)."""
    if spec.tol is None:
        grid, ck = spec.fixed(t, n, params)
        return grid, ck, extra
    python = spec.loops is PYTHON
    records = Records(*extra[:N_RECORDS])
    count = records.start.shape[0] if python else extra[N_RECORDS]
    slot = extra[N_RECORDS + 1] if spec.dense else None
    grid = _recorded(t, records, count, slot, g_rows)
    if not spec.checkpoint:
        return grid, None, None
    if python and spec.level0 is not None:  # the forward kept level 0: its plan
        kept = spec.level0.plan(count, spec.budget)
        if kept is not None:
            return grid, spec.checkpointer(grid, params, count, plan_=kept), spec.level0.rows
    return grid, spec.checkpointer(grid, params, count if python else spec.tol.max_steps), None


def _checkpointed(spec: Spec, ck: Checkpointer, top: Any, state0: State, cot: State,
                  g_out: State, time_grad: bool) -> Any:  # fmt: skip
    """Cotangents of the initial state, the parameters and ``t`` by checkpointing.

    Level 0 is the forward's own (``top``, fixed grids) only for a first-order backward: when the
    backward itself is differentiated (``create_graph``, nested :mod:`torch.func` transforms),
    level 0 is re-recorded from the initial state so that every stored state stays a function of
    ``y0`` and the parameters (the forward's rows are outputs without a graph)."""
    with spec.replay():
        if top is None or torch.is_grad_enabled():
            top = ck.record(state0, 0, ck.grid.length(0), ck.plan.stride(0))
        return reverse_checkpointed(ck, top, cot, g_out, time_grad)


def _fallback_checkpointer(spec: Spec, grid: Grid, t: Tensor, params: Params) -> Checkpointer:
    """The checkpointer that replays a MALI solve's own steps (its fixed grid, flattened, or the
    accepted steps an adaptive solve recorded)."""
    if spec.tol is None:
        assert spec.counts is not None
        grid = FlatGrid(t, spec.counts)
        return spec.checkpointer(grid, params, grid.total)
    assert isinstance(grid, RecordedGrid)
    return spec.checkpointer(grid, params, grid.records.start.shape[0])


def _describe(spec: Spec, t: Tensor, grid: Grid) -> str:
    """``"CoupledRK(dopri5, ...) over [0, 25], 57 accepted steps"``, for the fallback warning."""
    if spec.tol is None:
        steps = f"{sum(spec.counts or ())} fixed steps"
    else:
        assert isinstance(grid, RecordedGrid)
        accepted = grid.records.accepted
        # Under vmap each sample has its own count, which no host read can give.
        steps = f"{int(accepted.sum())} accepted steps" if is_concrete(accepted) else "its steps"
    return f"{spec.scheme!r} over [{float(t[0]):.6g}, {float(t[-1]):.6g}], {steps}"


def _select_where(failed: Tensor, exact: Any, raw: Any) -> Any:
    """``exact`` where ``failed`` (per sample under vmap), else ``raw``; ``None`` stays."""
    if isinstance(exact, (tuple, list)):
        return tuple(_select_where(failed, e, r) for e, r in zip(exact, raw))
    if exact is None or raw is None:
        return exact if raw is None else raw
    return torch.where(failed, exact, raw)
