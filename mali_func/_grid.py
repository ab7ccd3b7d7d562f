r"""Time grids: where each step of a solve lies, the outputs at the grid's times, and ``dL/dt``.

A solve over output times :math:`t_0, \dots, t_M` runs steps numbered :math:`j = 0, \dots, N-1`.
Step :math:`j` belongs to interval :math:`i` and starts at the fraction :math:`c` of it, with size
:math:`\theta` of it:

.. math::

    t_j = t_i + c\,(t_{i+1} - t_i), \qquad h_j = \theta\,(t_{i+1} - t_i).

* :class:`UniformGrid`: :math:`n_i` equal steps in interval :math:`i` (``n_steps``,
  ``step_size``); step :math:`k` of the interval has :math:`c = k / n_i`, :math:`\theta = 1/n_i`
  and is computed as :math:`t_i + k h_i`, :math:`h_i = (t_{i+1} - t_i) / n_i`.
* :class:`RecordedGrid`: the steps an adaptive controller accepted, recorded as
  :math:`(i, c, \theta)` (five scalars a step: the only memory that grows with the steps).

Step sizes are constants of the gradient; the times are not. With :math:`a_t, a_h` the cotangents
of a step's start and size, the chain rule through the formula above gives (one function,
:meth:`Grid.add_time_grad`, for both grids)

.. math::

    \bar t_{i+1} \mathrel{+}= c\,a_t + \theta\,a_h, \qquad
    \bar t_i \mathrel{+}= a_t - (c\,a_t + \theta\,a_h).

The solution is recorded at every :math:`t_i`: row 0 is :math:`y_0`, row :math:`M` the final
state, and an interior row :math:`i + 1` is written after the step that ``ends`` interval
:math:`i`. Whether a step ends an interval is a Python ``bool`` when the grid is walked with Python
ints (eager uniform grids: outputs are a list), ``False`` when there is one interval, and a tensor
otherwise (outputs are buffers; steps that end nothing write to row :math:`M`, overwritten at the
end). The reverse pass adds each output's cotangent at the same step.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ._loops import Count, Index, take
from .schemes import State


class StepInfo(NamedTuple):
    i: Index  # the interval
    t: Tensor  # start time
    h: Tensor  # size
    fraction: Callable[[], tuple[Tensor | float, Tensor | float]]  # (c, theta), on demand
    ends: bool | Tensor  # an interior output t_{i+1} (i + 1 < M) follows this step
    active: Tensor | None  # the step is taken (recorded grids); None: always


class Records(NamedTuple):
    """One entry per recorded step of an adaptive solve."""

    interval: Tensor  # int64, the interval index i
    start: Tensor  # c
    size: Tensor  # theta
    accepted: Tensor  # bool: the step was taken (all True once rejected trials are dropped)
    ends: Tensor  # bool: the step ends its interval


def span(t: Tensor, i: Tensor) -> tuple[Tensor, Tensor]:
    """``t[i]`` and ``t[i + 1] - t[i]`` for a 0-dim index (batched under vmap too)."""
    pair = t.index_select(0, torch.stack([i, i + 1]))
    return pair[0], pair[1] - pair[0]


def write_row(outs: tuple[Tensor, ...], slot: Tensor, ys: State) -> tuple[Tensor, ...]:
    """Out-of-place ``outs[k][slot] = ys[k]`` (``slot`` a 0-dim index tensor)."""
    return tuple(o.index_copy(0, slot.reshape(1), y.unsqueeze(0)) for o, y in zip(outs, ys))


def _interval_of(offsets: list[int], j: int) -> int:
    """The ``i`` with ``offsets[i] <= j < offsets[i + 1]`` (plain Python: dynamo traces it)."""
    lo, hi = 0, len(offsets) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if offsets[mid] <= j else (lo, mid)
    return lo


class Grid:
    """What both grids share: outputs, output cotangents and the time gradient."""

    t: Tensor
    m: int
    count: Count
    python_ends: bool  # ``ends`` is a Python bool when walked with Python ints

    def at(self, j: Index) -> StepInfo:
        raise NotImplementedError

    def new_outputs(self, y0: State, python_ints: bool) -> Any:
        """Empty outputs: a list when walked with Python ints (eager), else buffers."""
        if self.m == 1:
            return ()
        if self.python_ends and python_ints:
            return []
        return tuple(y.unsqueeze(0).expand(self.m + 1, *y.shape).contiguous() for y in y0)

    def record(self, outs: Any, info: StepInfo, ys: State) -> Any:
        if info.ends is False:
            return outs
        if info.ends is True:
            return [*outs, ys]
        return write_row(outs, torch.where(info.ends, info.i + 1, self.m), ys)

    def finish(self, outs: Any, y0: State, final: State) -> State:
        """The solution at every ``t_i``, shape ``(M + 1, *y.shape)`` per component."""
        if self.m == 1:
            return tuple(torch.stack([a, b]) for a, b in zip(y0, final))
        if isinstance(outs, list):
            return tuple(torch.stack(rows) for rows in zip(y0, *outs, final))
        return tuple(torch.cat([o[:-1], y.unsqueeze(0)]) for o, y in zip(outs, final))

    def inject(self, cot: State, info: StepInfo, g_out: State) -> State:
        """Add the cotangent of the output that follows this step (reverse pass)."""
        if info.ends is False:
            return cot
        n = len(g_out)
        if info.ends is True:
            added = tuple(c + take(g, info.i + 1) for c, g in zip(cot, g_out))
        else:
            rows = tuple(take(g, info.i + 1) for g in g_out)
            added = tuple(c + torch.where(info.ends, r, 0) for c, r in zip(cot, rows))
        return (*added, *cot[n:])

    def add_time_grad(self, acc: Tensor, info: StepInfo, a_t: Tensor, a_h: Tensor) -> Tensor:
        """Chain a step's ``(a_t, a_h)`` to ``t_i`` and ``t_{i+1}`` (module docs)."""
        c, theta = info.fraction()
        d_end = c * a_t + theta * a_h
        d_start = a_t - d_end
        if info.active is not None:
            d_end, d_start = (
                torch.where(info.active, d_end, 0),
                torch.where(info.active, d_start, 0),
            )
        i = info.i if isinstance(info.i, Tensor) else torch.tensor(info.i, device=acc.device)
        return acc.index_add(0, torch.stack([i, i + 1]), torch.stack([d_start, d_end]))


class UniformGrid(Grid):
    """``counts[i]`` equal steps in interval ``i`` (a tuple), or ``n`` in each (a tensor).

    A tuple of counts is walked with Python ints (eager) or tensors (export); a tensor count,
    which keeps ``n_steps`` out of compiled graphs' guards, with tensors only.
    """

    def __init__(self, t: Tensor, counts: tuple[int, ...] | Tensor) -> None:
        self.t, self.m = t, t.shape[0] - 1
        self.counts = counts
        if isinstance(counts, tuple):
            self.count = sum(counts)
            self.offsets = list(itertools.accumulate(counts, initial=0))
            self.starts = [t[i] for i in range(self.m)]
            self.sizes = [(t[i + 1] - t[i]) / n for i, n in enumerate(counts)]
            self.python_ends = True
            if self.m > 1:  # for a walk with tensor indices (export), made outside the loop
                self.bounds = torch.tensor(self.offsets, device=t.device)
                self.sizes_t = torch.stack(self.sizes)
        else:
            self.count = counts * self.m
            self.sizes_t = (t[1:] - t[:-1]) / counts
            self.python_ends = False

    def at(self, j: Index) -> StepInfo:
        if isinstance(j, int):
            assert isinstance(self.counts, tuple)
            i = _interval_of(self.offsets, j)
            k, n = j - self.offsets[i], self.counts[i]
            tk = self.starts[i] + k * self.sizes[i]
            ends = k == n - 1 and i + 1 < self.m
            return StepInfo(i, tk, self.sizes[i], lambda: (k / n, 1 / n), ends, None)
        if self.m == 1:
            k, n = j, self.counts[0] if isinstance(self.counts, tuple) else self.counts
            h = self.sizes[0] if isinstance(self.counts, tuple) else self.sizes_t[0]
            kf, nf = k.to(h.dtype), (n if isinstance(n, int) else n.to(h.dtype))
            return StepInfo(0, self.t[0] + kf * h, h, lambda: (kf / nf, 1 / nf), False, None)
        if isinstance(self.counts, tuple):
            bounds = self.bounds
            i = (j >= bounds[1:-1]).long().sum()
            n_i = take(bounds, i + 1) - take(bounds, i)
            k = j - take(bounds, i)
            h = take(self.sizes_t, i)
        else:
            n_i = self.counts
            i = torch.div(j, n_i, rounding_mode="floor")
            k = j - i * n_i
            h = take(self.sizes_t, i)
        kf, nf = k.to(h.dtype), n_i.to(h.dtype)
        ends = (k == n_i - 1) & (i + 1 < self.m)
        return StepInfo(i, take(self.t, i) + kf * h, h, lambda: (kf / nf, 1 / nf), ends, None)


class RecordedGrid(Grid):
    """The recorded steps of an adaptive solve; ``count`` of them are valid."""

    python_ends = False

    def __init__(self, t: Tensor, records: Records, count: Index) -> None:
        self.t, self.m = t, t.shape[0] - 1
        self.records, self.count = records, count

    def at(self, j: Index) -> StepInfo:
        i, c, theta, ok, ends = (take(r, j) for r in self.records)
        ti, dt = span(self.t, i)
        interior: bool | Tensor = False if self.m == 1 else ends & ok & (i + 1 < self.m)
        return StepInfo(i, ti + c * dt, theta * dt, lambda: (c, theta), interior, ok)
