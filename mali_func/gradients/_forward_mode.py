"""Forward-mode differentiation of a solve, and the entry point that picks the Function.

:class:`ForwardModeSolve` adds a ``jvp`` rule to :class:`mali_func.gradients._solve.Solve`: the
solve is re-run with tangents carried through every step (memory constant in the steps, like the
reverse pass), with :func:`torch.func.jvp` under transforms and ``torch.autograd.forward_ad``
eagerly. Dynamo refuses an ``autograd.Function`` with a custom ``jvp`` in torch 2.13, so traced
solves use
:class:`~mali_func.gradients._solve.Solve`, which has none.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from ..backends._loops import PYTHON
from ..backends._mode import tracing, under_transform
from ..schemes import Params, State
from ..stepping._dense import DenseRows, interpolate
from ..stepping._grid import DenseGrid, Grid, RecordedGrid, Records, UniformGrid
from ..stepping._stats import SolveStats
from ._passes import forward
from ._solve import N_RECORDS, N_STATS, Solve, Spec


class ForwardModeSolve(Solve):
    """:class:`Solve` with a forward-mode rule, for eager code and :mod:`torch.func` transforms
    (dynamo refuses an ``autograd.Function`` with a custom ``jvp`` in torch 2.13, so compiled
    solves use :class:`Solve`)."""

    @staticmethod
    def jvp(ctx: Any, *tangents: Any) -> tuple[Tensor | None, ...]:
        """Forward mode: the solve re-run under :func:`torch.func.jvp`, tangents carried along
        every step (memory constant in the steps, like the reverse pass)."""
        spec: Spec = ctx.spec
        if getattr(spec.field, "declared", False):
            raise NotImplementedError(
                "forward-mode AD (jvp, jacfwd) of a solve whose plain function reads its "
                "adjoint_params from its closure: the tangents cannot reach them; pass them as "
                "odeint(..., args=(...)) or make func an nn.Module"
            )
        t, *saved = ctx.saved_tensors  # inputs, then the outputs (Solve.setup_context)
        n = saved.pop(0) if ctx.has_n else None
        tensors, outputs = saved[: ctx.n_tensors], saved[ctx.n_tensors :]
        records = outputs[spec.n_state :] if spec.tol is not None else []
        _, t_dot, _, _, *dots = tangents
        count = None
        if spec.tol is not None:
            count = records[N_RECORDS] if spec.loops is not PYTHON else records[0].shape[0]

        def run(t_: Tensor, *tensors_: Tensor) -> tuple[Tensor, ...]:
            grid_: Grid
            if count is None:
                grid_ = UniformGrid(t_, spec.counts if n is None else n)
            elif spec.dense:
                grid_ = DenseGrid(t_, Records(*records[:N_RECORDS]), count, records[N_RECORDS + 1])
            else:
                grid_ = RecordedGrid(t_, Records(*records[:N_RECORDS]), count)
            state0, params = tensors_[: spec.n_state], tensors_[spec.n_state :]
            trajs, final, _ = forward(
                spec.loops, spec.scheme, spec.field, grid_, state0, params, spec.n_out
            )
            # A dense grid's outputs: the two rows, then the interpolated outputs' rows.
            ends, rows = trajs[: spec.n_out], trajs[spec.n_out :]
            return (*ends, *final[spec.n_out :], *rows)

        primals = (t, *tensors)
        dots_ = tuple(
            torch.zeros_like(x) if d is None else d for x, d in zip(primals, (t_dot, *dots))
        )
        if under_transform():
            _, out_dots = torch.func.jvp(run, primals, dots_)
        else:  # torch.autograd.forward_ad, whose dual level does not nest.
            # Re-run on fresh duals of the given tangents, with forward AD on (it is off while a
            # jvp rule runs); some saved inputs may still carry their tangents: strip them.
            with fwAD._set_fwd_grad_enabled(True):
                plain = (fwAD.unpack_dual(x).primal for x in primals)
                out = run(*(fwAD.make_dual(x, d) for x, d in zip(plain, dots_)))
                out_dots = tuple(
                    torch.zeros_like(y) if d is None else d
                    for y, d in ((y, fwAD.unpack_dual(y).tangent) for y in out)
                )
        if spec.tol is None:
            return (*out_dots, *(None for _ in range(spec.n_keep())))
        return (*out_dots, *(None for _ in range(N_RECORDS + 1 + spec.n_meta() + N_STATS)))


def solve(spec: Spec, t: Tensor, n: Tensor | None, probe: Tensor | None, state0: State,
          params: Params) -> tuple[State, SolveStats | None, State]:  # fmt: skip
    """Differentiate with MALI or checkpointing; return the trajectories, (adaptive) stats and
    the final extended state (out of the gradient: for the solve's checks).

    The backward starts from the saved trajectories, so the caller gets copies: an in-place layer
    after the solve (``ReLU(inplace=True)``) cannot change what the backward reads.
    """
    function = Solve if tracing() else ForwardModeSolve
    out = function.apply(spec, t, n, probe, *state0, *params)
    ns, n_out = spec.n_state, spec.n_out
    final = tuple(x.detach() for x in (*(y[-1] for y in out[:n_out]), *out[n_out:ns]))
    trajs = tuple(x.clone() for x in out[:n_out])
    if spec.tol is None:
        return trajs, None, final
    if spec.dense:  # the interior outputs by short steps, differentiated by autograd
        meta = 2 * ns + N_RECORDS + 1
        rows = DenseRows(out[ns : 2 * ns], *out[meta : meta + 3])
        trajs = interpolate(spec.scheme, spec.field, params, t, trajs, rows)
    return trajs, SolveStats(*out[len(out) - N_STATS :]), final
