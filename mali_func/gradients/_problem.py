"""One solve as the gradient strategies see it: a :class:`Problem`, and the plain autograd path.

The engine (:mod:`mali_func._dispatch`) fixes the loop backend, the grid and the inputs; a
strategy (:mod:`._strategies`) then differentiates the solve its own way. The simplest way,
:func:`through_steps`, runs the steps under ordinary autograd: for adaptive steps the accepted
step sizes are chosen first without a graph and then replayed with one, so the gradient is that of
the discrete solve with the step sizes held constant, as for every strategy here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..backends._loops import PYTHON, Loops
from ..schemes import Field, Params, ReversibleScheme, State
from ..stepping._control import control
from ..stepping._controllers import Tolerances
from ..stepping._dense import DenseRows, dense, interpolate
from ..stepping._grid import DenseGrid, RecordedGrid, Records, UniformGrid
from ..stepping._stats import SolveStats
from ._drift import Fallback
from ._passes import forward
from ._solve import Spec


@dataclass(frozen=True, eq=False)
class Problem:
    """The inputs of one differentiated solve, after the engine chose its loops and grid."""

    loops: Loops
    scheme: ReversibleScheme
    field: Field
    t: Tensor
    start: State
    params: Params
    n_out: int
    counts: tuple[int, ...] | None  # a fixed grid walked with Python ints
    n: Tensor | None  # or a compiled uniform grid's tensor count; both None: adaptive
    tol: Tolerances | None
    unroll: int = 1
    replay: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext
    probe: Tensor | None = None
    fallback: Fallback | None = None
    hooks: Any = None  # the field's step callbacks (eager only)

    def spec(self, **strategy: Any) -> Spec:
        """The solve Function's configuration, with the strategy's own fields."""
        strategy.setdefault("reconstruction_tol", None)
        return Spec(
            loops=self.loops, scheme=self.scheme, field=self.field, n_state=len(self.start),
            n_out=self.n_out, counts=self.counts, tol=self.tol, replay=self.replay,
            unroll=self.unroll, hooks=self.hooks, dense=dense(self.tol, self.t), **strategy,
        )  # fmt: skip


def through_steps(p: Problem) -> tuple[State, SolveStats | None, State]:
    """Plain autograd through Python-loop steps: trajectories, adaptive stats, final state."""
    if p.tol is None:
        assert p.counts is not None
        grid = UniformGrid(p.t, p.counts)
        trajs, final, _ = forward(
            PYTHON, p.scheme, p.field, grid, p.start, p.params, p.n_out, hooks=p.hooks
        )
        return trajs, None, final
    with torch.no_grad():
        _, _, records, count, stats, rows = control(
            PYTHON, p.scheme, p.field, p.t, p.start, p.params, p.n_out, p.tol, hooks=p.hooks
        )
    # Step sizes are constants of the gradient (no_grad does not stop forward-mode AD).
    records = Records(*(r.detach() for r in records))
    if rows is None:
        grid_ = RecordedGrid(p.t, records, count)
        trajs, final, _ = forward(PYTHON, p.scheme, p.field, grid_, p.start, p.params, p.n_out)
    else:  # replayed with a graph: the interpolated outputs' rows, then the interpolant
        grid_ = DenseGrid(p.t, records, count, rows.slot)
        out, final, _ = forward(PYTHON, p.scheme, p.field, grid_, p.start, p.params, p.n_out)
        rows = DenseRows(out[p.n_out :], *(x.detach() for x in rows[1:]))
        trajs = interpolate(p.scheme, p.field, p.params, p.t, out[: p.n_out], rows)
    return tuple(torch.where(stats.failed, float("nan"), y) for y in trajs), stats, final
