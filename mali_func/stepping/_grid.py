r"""Time grids: where each step of a solve lies, the outputs at the grid's times, and ``dL/dt``.

A solve over output times :math:`t_0, \dots, t_M` walks its steps in segments: segment :math:`s`
holds ``length(s)`` steps, and step :math:`k` of it belongs to interval :math:`i`, starting at the
fraction :math:`c` of the interval with size :math:`\theta` of it:

.. math::

    t_{s,k} = t_i + c\,(t_{i+1} - t_i), \qquad h_{s,k} = \theta\,(t_{i+1} - t_i).

* :class:`UniformGrid`: segment :math:`s` is interval :math:`s`, with :math:`n_s` equal steps
  (``n_steps``, ``step_size``): :math:`c = k / n_s`, :math:`\theta = 1/n_s`, computed as
  :math:`t_s + k h_s` with :math:`h_s = (t_{s+1} - t_s) / n_s`. The output at :math:`t_{s+1}` is
  recorded after the segment.
* :class:`RecordedGrid`: one segment, the steps an adaptive controller accepted, recorded as
  :math:`(i, c, \theta)` (five scalars a step: the only memory that grows with the steps). A step
  that ``ends`` an interval records the output that follows it.

Step sizes are constants of the gradient; the times are not. With :math:`a_t, a_h` the cotangents
of a step's start and size, the chain rule through the formula above gives (one function,
:meth:`Grid.add_time_grad`, for both grids)

.. math::

    \bar t_{i+1} \mathrel{+}= c\,a_t + \theta\,a_h, \qquad
    \bar t_i \mathrel{+}= a_t - (c\,a_t + \theta\,a_h).

Outputs: row 0 is :math:`y_0`, row :math:`M` the final state. When the segments are walked with
Python ints the rows are a list; otherwise they are buffers written with ``index_copy`` (a step
that ends nothing writes to row :math:`M`, which the final state overwrites). The reverse pass
adds each output's cotangent where the forward pass recorded it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..backends._flat import Count, Index, take
from ..schemes import State


class StepInfo(NamedTuple):
    i: Index  # the interval
    t: Tensor  # start time
    h: Tensor  # size
    fraction: Callable[[], tuple[Tensor | float, Tensor | float]]  # (c, theta), on demand
    ends: bool | Tensor  # an interior output t_{i+1} (i + 1 < M) follows this step
    active: Tensor | None  # the step is taken (recorded grids); None: always
    anchor: Tensor | None = None  # dense grids: the accepted steps up to this one (included)


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


def write_row(outs: tuple[Tensor, ...], slot: Index, ys: State) -> tuple[Tensor, ...]:
    """Out-of-place ``outs[k][slot] = ys[k]``."""
    index = torch.as_tensor(slot, device=outs[0].device).reshape(1)
    return tuple(o.index_copy(0, index, y.unsqueeze(0)) for o, y in zip(outs, ys))


def buffers(y0: State, rows: int) -> tuple[Tensor, ...]:
    """``rows`` copies of each ``y0`` component, stacked (row 0 is ``y0``)."""
    return tuple(y.unsqueeze(0).expand(rows, *y.shape).contiguous() for y in y0)


class Grid:
    """What both grids share: outputs, output cotangents and the time gradient."""

    t: Tensor
    m: int
    segments: int
    static_segments: bool  # walk the segments in Python (one segment, or unequal lengths)
    full_state = False  # outputs hold the extended state (the scheme's), not the solution's
    step_outputs: bool  # some steps record an output (carried through the inner loop)

    def length(self, s: Index) -> Count:
        raise NotImplementedError

    def segment(self, s: Index) -> Any:
        """What the steps of segment ``s`` share, computed once per segment."""
        return s

    def at(self, seg: Any, k: Index) -> StepInfo:
        """Step ``k`` of the segment ``seg = segment(s)``."""
        raise NotImplementedError

    def new_outputs(self, y0: State, python: bool) -> Any:
        """Empty outputs: a list when the segments are walked with Python ints, else buffers."""
        return [] if python else buffers(y0, self.m + 1)

    def record_step(self, outs: Any, info: StepInfo, ys: State) -> Any:
        if info.ends is False:
            return outs
        if info.ends is True:
            return write_row(outs, info.i + 1, ys)
        return write_row(outs, torch.where(info.ends, info.i + 1, self.m), ys)

    def record_segment(self, outs: Any, s: Index, ys: State) -> Any:
        return outs

    def finish(self, outs: Any, y0: State, final: State) -> State:
        """The solution at every ``t_i``, shape ``(M + 1, *y.shape)`` per component."""
        if isinstance(outs, list):
            return tuple(torch.stack(rows) for rows in zip(y0, *outs, final))
        return tuple(torch.cat([o[:-1], y.unsqueeze(0)]) for o, y in zip(outs, final))

    def injection(self, info: StepInfo, g_out: State) -> State | None:
        """The cotangent of the outputs recorded after a step (``None``: none is)."""
        if info.ends is False:
            return None
        rows = tuple(take(g, info.i + 1) for g in g_out)
        if info.ends is True:
            return rows
        return tuple(torch.where(info.ends, r, 0) for r in rows)

    def inject(self, cot: State, info: StepInfo, g_out: State) -> State:
        """Add the cotangent of the outputs recorded after a step (recorded grids)."""
        rows = self.injection(info, g_out)
        if rows is None:
            return cot
        return (*(c + r for c, r in zip(cot, rows)), *cot[len(rows) :])

    def at_start(self, cot: State, s: Index, g_out: State) -> State:
        """Add the cotangent of the output at segment ``s``'s start time."""
        return (*(c + take(g, s) for c, g in zip(cot, g_out)), *cot[len(g_out) :])

    def time_pair(self, info: StepInfo) -> Tensor:
        """The indices in ``t`` of the two times a step's start and size are made from."""
        i = torch.as_tensor(info.i, device=self.t.device)
        return torch.stack([i, i + 1])

    def add_time_grad(self, acc: Tensor, info: StepInfo, a_t: Tensor, a_h: Tensor) -> Tensor:
        """Chain a step's ``(a_t, a_h)`` to ``t_i`` and ``t_{i+1}`` (module docs)."""
        c, theta = info.fraction()
        d_end = c * a_t + theta * a_h
        d_start = a_t - d_end
        if info.active is not None:
            d_end = torch.where(info.active, d_end, 0)
            d_start = torch.where(info.active, d_start, 0)
        return acc.index_add(0, self.time_pair(info), torch.stack([d_start, d_end]))


class UniformGrid(Grid):
    """``counts[s]`` equal steps in interval ``s`` (a tuple), or ``n`` in each (a 0-dim tensor,
    which keeps ``n_steps`` out of compiled graphs' guards)."""

    step_outputs = False

    def __init__(self, t: Tensor, counts: tuple[int, ...] | Tensor) -> None:
        self.t, self.m = t, t.shape[0] - 1
        self.counts, self.segments = counts, self.m
        per = counts if isinstance(counts, tuple) else (counts,) * self.m
        self.sizes = [(t[s + 1] - t[s]) / n for s, n in enumerate(per)]
        self.static_segments = self.m == 1 or (isinstance(counts, tuple) and len(set(counts)) > 1)
        if not self.static_segments:  # indexed by a tensor in the loop: built outside it
            self.sizes_t = torch.stack(self.sizes)

    def length(self, s: Index) -> Count:
        if isinstance(self.counts, tuple):
            return self.counts[s] if isinstance(s, int) else self.counts[0]
        return self.counts

    def segment(self, s: Index) -> tuple[Index, Tensor, Tensor, Count]:
        """``(s, t_s, h_s, n_s)``."""
        if isinstance(s, int):
            return s, self.t[s], self.sizes[s], self.length(s)
        return s, take(self.t, s), take(self.sizes_t, s), self.length(s)

    def at(self, seg: tuple[Index, Tensor, Tensor, Count], k: Index) -> StepInfo:
        s, ts, h, n = seg
        if not isinstance(k, int):
            k = k.to(h.dtype)
            n = n if isinstance(n, int) else n.to(h.dtype)
        return StepInfo(s, ts + k * h, h, lambda: (k / n, 1 / n), False, None)

    def record_segment(self, outs: Any, s: Index, ys: State) -> Any:
        """The output at ``t_{s+1}``, after segment ``s`` (the last one is the final state)."""
        if isinstance(outs, list):
            return outs if s == self.m - 1 else [*outs, ys]
        return write_row(outs, s + 1, ys)


class RecordedGrid(Grid):
    """The recorded steps of an adaptive solve, one segment; ``count`` of them are valid."""

    segments, static_segments = 1, True

    @property
    def step_outputs(self) -> bool:  # type: ignore[override]
        return self.m > 1

    def __init__(self, t: Tensor, records: Records, count: Index) -> None:
        self.t, self.m = t, t.shape[0] - 1
        self.records, self.count = records, count

    def length(self, s: Index) -> Count:
        return self.count

    def at(self, seg: Any, k: Index) -> StepInfo:
        i, c, theta, ok, ends = (take(r, k) for r in self.records)
        ti, dt = span(self.t, i)
        interior: bool | Tensor = False if self.m == 1 else ends & ok & (i + 1 < self.m)
        return StepInfo(i, ti + c * dt, theta * dt, lambda: (c, theta), interior, ok)

    def new_outputs(self, y0: State, python: bool) -> Any:
        return [] if self.m == 1 else buffers(y0, self.m + 1)


class FlatGrid(Grid):
    """A :class:`UniformGrid`'s steps as one segment, step ``g`` counted across intervals (what
    checkpointed gradients index by); the output at ``t_{i+1}`` is recorded after the step that
    ends interval ``i``. ``counts`` are the steps of each interval, or one 0-dim integer tensor
    for every interval (a compiled grid's count, which a new ``n_steps`` does not recompile)."""

    segments, static_segments = 1, True

    @property
    def step_outputs(self) -> bool:  # type: ignore[override]
        return self.m > 1

    def __init__(self, t: Tensor, counts: tuple[int, ...] | Tensor) -> None:
        self.t, self.m, self.counts = t, t.shape[0] - 1, counts
        if isinstance(counts, Tensor):  # traced loops only: the tensors below are all they read
            n = counts.to(t.dtype)
            self.total: Count = counts * self.m
            index = torch.arange(self.m, dtype=t.dtype, device=t.device)
            self._tensors = ((t[1:] - t[:-1]) / n, index * n, n.expand(self.m))
            return
        self.total = sum(counts)
        self.sizes = [(t[s + 1] - t[s]) / n for s, n in enumerate(counts)]
        self.starts = [sum(counts[:s]) for s in range(self.m)]
        # For tensor step indices (traced loops): built here, outside the loop that reads them.
        like = t.new_tensor
        self._tensors = (torch.stack(self.sizes), like(self.starts), like(self.counts))

    def length(self, s: Index) -> Count:
        return self.total

    def at(self, seg: Any, g: Index) -> StepInfo:
        if isinstance(g, int):
            s = bisect.bisect_right(self.starts, g) - 1
            k, n = g - self.starts[s], self.counts[s]
            ends: bool | Tensor = k == n - 1 and s + 1 < self.m
            t0, h = self.t[s], self.sizes[s]
            return StepInfo(s, t0 + k * h, h, lambda: (k / n, 1 / n), ends, None)
        sizes, starts, counts = self._tensors
        # bisect_right - 1 as a count (ONNX has no searchsorted): the intervals started by step g
        i = (starts <= g.to(starts.dtype)).sum() - 1
        h, n = take(sizes, i), take(counts, i)
        k = g.to(h.dtype) - take(starts, i)
        ends = (k == n - 1) & (i + 1 < self.m)
        return StepInfo(i, take(self.t, i) + k * h, h, lambda: (k / n, 1 / n), ends, None)

    def new_outputs(self, y0: State, python: bool) -> Any:
        return [] if self.m == 1 else buffers(y0, self.m + 1)


def where_rows(mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """``new`` (one state, broadcast over the rows) in the rows of ``mask``, else ``old``."""
    return torch.where(mask.reshape(-1, *(1,) * new.ndim), new.unsqueeze(0), old)


def record(starts: State, slot: Tensor, anchor: Tensor, active: Tensor, x: State) -> State:
    """Replays: the state at ``anchor`` (after a step) into the rows whose step starts there."""
    at = active & (slot == anchor)
    return tuple(where_rows(at, y, r) for y, r in zip(x, starts))


def cotangent_at(anchor: Tensor | int, slot: Tensor, g_starts: State,
                 active: Tensor | None = None) -> State:  # fmt: skip
    """The cotangent the interpolated outputs give the state at ``anchor``."""
    at = slot == anchor
    if active is not None:
        at = at & active
    return tuple(torch.where(at.reshape(-1, *(1,) * (g.ndim - 1)), g, 0).sum(0) for g in g_starts)


class DenseGrid(RecordedGrid):
    """The recorded steps of an interpolating solve (:mod:`mali_func.stepping._dense`): they span
    ``[t_0, t_M]`` as one interval; the outputs are the rows at ``t_0`` and ``t_M`` and, per
    interior output, the extended state at its step's start (anchor ``slot``, counted in accepted
    steps). ``g_starts``: those states' cotangents, for the backward."""

    full_state = True

    def __init__(self, t: Tensor, records: Records, count: Index, slot: Tensor,
                 g_starts: State | None = None) -> None:  # fmt: skip
        super().__init__(t, records, count)
        self.slot, self.g_starts = slot, g_starts
        self.anchors = torch.cumsum(records.accepted.long(), 0)
        self.span_index = torch.tensor([0, self.m], device=t.device)  # every step spans [t_0, t_M]

    @property
    def step_outputs(self) -> bool:  # type: ignore[override]
        return True

    def at(self, seg: Any, k: Index) -> StepInfo:
        _, c, theta, ok, _ = (take(r, k) for r in self.records)
        t0, dt = self.t[0], self.t[-1] - self.t[0]
        return StepInfo(0, t0 + c * dt, theta * dt, lambda: (c, theta), False, ok,
                        take(self.anchors, k))  # fmt: skip

    def time_pair(self, info: StepInfo) -> Tensor:
        return self.span_index

    def new_outputs(self, y0: State, python: bool) -> Any:
        return buffers(y0, self.m - 1)  # y0: the extended state (``full_state``)

    def record_step(self, outs: Any, info: StepInfo, ys: State) -> Any:
        assert info.active is not None and info.anchor is not None
        return record(outs, self.slot, info.anchor, info.active, ys)

    def finish(self, outs: Any, y0: State, final: State) -> State:
        """``(*rows at t_0 and t_M, *starts)``."""
        return (*(torch.stack([a, b]) for a, b in zip(y0, final)), *outs)

    def injection(self, info: StepInfo, g_out: State) -> State | None:
        if self.g_starts is None:
            return None
        assert info.anchor is not None
        return cotangent_at(info.anchor, self.slot, self.g_starts, info.active)

    def at_start(self, cot: State, s: Index, g_out: State) -> State:
        cot = super().at_start(cot, s, g_out)
        if self.g_starts is None:
            return cot
        rows = cotangent_at(0, self.slot, self.g_starts)
        return tuple(c + r for c, r in zip(cot, rows))
