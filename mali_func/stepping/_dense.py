r"""Dense output: the solution at output times between steps, by a step of the scheme itself.

With ``Adaptive(interpolate=True)`` the controller steps from :math:`t_0` to :math:`t_M` as if
there were no output times between them, so :math:`t_1, \dots, t_{M-1}` cost no steps: a solve
with 100 output times takes exactly the accepted steps of the same solve with 2. Output :math:`j`
lies in the first accepted step :math:`[t_k, t_k + h]` whose end reaches it, and is one step of the
scheme from that step's start, cut to end at :math:`t_j`:

.. math::

    u_j = \Phi_{t_j - t_k}(x_k)\big|_y .

This continuous extension has the scheme's own order and, being a step shorter than an accepted
one, an error below that step's (a cubic Hermite interpolant through the step's ends, tried
first, was 400 times the tolerance of tsit5 at ``rtol=1e-8``: its :math:`O(h^4)` error is of
lower order than the step's). It costs ``evaluations_per_step`` field evaluations per output,
batched over the outputs with :func:`torch.func.vmap` (eagerly, a field that vmap cannot batch
is stepped one output at a time), where landing on the output costs a step
and shortens the steps around it.

The solve returns, per interior output, the extended state :math:`x_k` at its step's start and
the step's fractions :math:`(c, \theta)` of :math:`t_M - t_0` (:class:`DenseRows`);
:func:`interpolate` takes the short steps after the solve in ordinary torch code. So every
gradient strategy differentiates it exactly: autograd pulls the cotangent of :math:`u_j` back to
the parameters, the times and :math:`x_k`, and the solve's backward adds :math:`x_k`'s cotangent
where its forward met it. The state after :math:`a` accepted steps is *anchor* :math:`a` (anchor 0
is the initial state); output :math:`j`'s is anchor ``slot[j]``
(:class:`mali_func.stepping._grid.DenseGrid`), so MALI (Zhuang, Dvornek, Tatikonda & Duncan, ICLR
2021) still equals backprop through the same computation.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..backends._mode import tracing, under_transform
from ..schemes import Field, Params, ReversibleScheme, State
from ._grid import buffers, where_rows


class DenseRows(NamedTuple):
    """Per interior output: the extended state at its step's start, the step's anchor and size."""

    starts: State  # x_k, shape (M - 1, *x.shape) per component of the extended state
    slot: Tensor  # int64: k, the accepted steps before the step; -1 until the step is met
    start: Tensor  # c: t_k = t_0 + c (t_M - t_0)
    size: Tensor  # theta: h = theta (t_M - t_0)


def dense(tol: Any, t: Tensor) -> bool:
    """Whether an adaptive solve over ``t`` interpolates (some output time lies inside)."""
    return tol is not None and bool(getattr(tol, "interpolate", False)) and t.shape[0] > 2


def empty_rows(x0: State, t: Tensor) -> DenseRows:
    """Rows for the interior times of ``t``, none met yet."""
    rows = t.shape[0] - 2
    slot = torch.full((rows,), -1, dtype=torch.long, device=t.device)
    return DenseRows(buffers(x0, rows), slot, torch.zeros_like(t[1:-1]), torch.ones_like(t[1:-1]))


def capture(
    rows: DenseRows,
    t: Tensor,
    step_end: Tensor,
    taken: Tensor,
    last: Tensor,
    before: State,
    accepted: Tensor,
    c: Tensor,
    theta: Tensor,
) -> DenseRows:
    """Give the outputs an accepted step reaches (``taken``), not met before, its start state
    and fractions; the step that ends the solve (``last``) takes every output left (round-off
    may put a time just past the computed end)."""
    direction = torch.sign(t[-1] - t[0])
    inner = t[1:-1]
    meets = taken & (rows.slot < 0) & ((direction * (inner - step_end) <= 0) | last)
    return DenseRows(
        tuple(where_rows(meets, y, r) for y, r in zip(before, rows.starts)),
        torch.where(meets, accepted, rows.slot),
        torch.where(meets, c, rows.start),
        torch.where(meets, theta, rows.size),
    )


def finished(rows: DenseRows, failed: Tensor) -> DenseRows:
    """The rows after the solve: NaN where it failed, as its outputs are."""
    return rows._replace(starts=tuple(torch.where(failed, float("nan"), y) for y in rows.starts))


def interpolate(scheme: ReversibleScheme, field: Field, params: Params, t: Tensor, ends: State,
                rows: DenseRows) -> State:  # fmt: skip
    """The solution at every time of ``t``: ``ends`` (the solve's rows at ``t_0`` and ``t_M``)
    around the interior rows, each one short step from its row (module docs)."""
    span = t[-1] - t[0]
    tk = t[0] + rows.start * span

    def short_step(time: Tensor, h: Tensor, x: State) -> State:
        return tuple(scheme.step(field, time, h, x, params)[: len(ends)])

    args = (tk, t[1:-1] - tk, rows.starts)
    try:
        inner = torch.func.vmap(short_step, randomness="different")(*args)
    except RuntimeError as error:
        # A field vmap cannot batch (Python control flow on a tensor, .item()): eagerly, one
        # output at a time; traced or under the caller's transform the error stands.
        if tracing() or under_transform() or not str(error).startswith("vmap:"):
            raise
        each = [short_step(a, b, tuple(x[j] for x in args[2])) for j, (a, b) in
                enumerate(zip(args[0], args[1]))]  # fmt: skip
        inner = tuple(torch.stack(column) for column in zip(*each))
    return tuple(torch.cat([y[:1], u, y[1:]]) for y, u in zip(ends, inner))
