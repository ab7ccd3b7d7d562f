"""One solve from checked keyword options: the scheme, the field and its checks, the dispatch.

The default scheme is damped asynchronous leapfrog (:class:`mali_func.schemes.ALF`), and the
default gradient is MALI (Zhuang et al., "MALI: A memory efficient and reverse accurate integrator
for Neural ODEs", ICLR 2021): the backward pass rebuilds the trajectory by inverting the steps,
so memory does not grow with the number of steps, while the gradient is the exact gradient of the
discrete forward computation. ``gradient="backprop"`` differentiates the same steps with ordinary
autograd instead: the reference, with memory linear in the number of steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ._checks import (
    check_adaptive,
    check_options,
    check_scheme,
    check_steps,
    check_t,
    check_unroll,
    check_y0,
)
from ._dispatch import dispatch
from .backends import _mode
from .backends._flat import unaliased
from .backends._traced_transforms import check_per_sample
from .field._captures import check_no_capture, guard_captures
from .field._field import autocast_field, bind_field, check_output, check_replayable
from .field._module_checks import (
    check_module_attributes,
    check_module_detached,
    check_module_inputs,
    module_attributes,
)
from .field._module_state import buffer_versions, check_buffers_kept, first_call
from .gradients._drift import DriftMonitor, Fallback, default_reconstruction_tol
from .gradients._solve import FIXED_BOUND
from .interop._compat import translate
from .schemes import Params, ReversibleScheme, State
from .schemes._methods import COUPLING_DEFAULT, scheme_for
from .stepping._control import SolveStats
from .stepping._controllers import Controller
from .stepping._parasitic import parasitic

TensorOrTuple = Tensor | tuple[Tensor, ...]

FIXED_ATOL = 1e-6
"""The absolute floor of a fixed-step solve's parasitic checks (the adaptive default ``atol``)."""


def integrate(
    func: Callable[..., Any],
    y0: TensorOrTuple,
    t: Tensor | Sequence[float],
    rtol: float | None = None,
    atol: float | None = None,
    method: str | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    eta: float | None = None,
    coupling: float | str | None = COUPLING_DEFAULT,
    n_steps: int | Sequence[int] | None = None,
    step_size: float | None = None,
    gradient: Literal["mali", "checkpoint", "backprop"] = "mali",
    checkpoints: int | None = None,
    unroll: int = 1,
    args: Sequence[Tensor] = (),
    scheme: ReversibleScheme | None = None,
    monitor: DriftMonitor | None = None,
    reconstruction_tol: float | Literal["auto"] | None = "auto",
    fallback: bool = True,
    max_steps: int | None = None,
    first_step: float | None = None,
    controller: Controller | None = None,
    stats: bool = False,
    event_fn: Any = None,
    adjoint_params: Iterable[Tensor] | None = None,
    adjoint_rtol: float | None = None,
    adjoint_atol: float | None = None,
    adjoint_method: str | None = None,
    adjoint_options: Mapping[str, Any] | None = None,
) -> Any:
    """:func:`mali_func.odeint` with every option as a keyword (the engine's form: what
    :func:`mali_func.interop._shorthands.expand` makes of the objects); documented there."""
    step_size, first_step, max_steps, controller = translate(
        method, options, n_steps=n_steps, step_size=step_size, first_step=first_step,
        max_steps=max_steps, controller=controller, event_fn=event_fn,
        adjoint_params=adjoint_params,
    )  # fmt: skip
    del adjoint_rtol, adjoint_atol, adjoint_method, adjoint_options  # nothing to configure
    state, tuple_state = check_y0(y0)
    t = check_t(t, state[0])
    steps = check_steps(n_steps, step_size, t)
    tol = check_adaptive(steps is None, rtol, atol, max_steps, first_step, controller)
    if not isinstance(stats, bool):
        raise TypeError(f"stats must be a bool, got {type(stats).__name__}")
    check_options(gradient, reconstruction_tol, monitor, DriftMonitor, checkpoints)
    if reconstruction_tol == "auto":
        reconstruction_tol = default_reconstruction_tol(state[0].dtype)
    check_unroll(unroll)
    if not isinstance(fallback, bool):
        raise TypeError(f"fallback must be a bool, got {type(fallback).__name__}")
    flag = torch.zeros((), dtype=torch.bool, device=t.device)
    checked_by = _fallback(fallback and gradient == "mali", steps=steps, flag=flag)
    scheme = scheme_for(method, scheme, eta=eta, coupling=coupling)
    check_scheme(scheme, adaptive=steps is None, gradient=None)

    check_per_sample(func)
    if isinstance(args, Tensor) or not isinstance(args, (tuple, list)):
        raise TypeError(
            f"args must be a tuple or list of tensors, got {type(args).__name__} (one tensor: "
            "args=(tensor,))"
        )
    bound = bind_field(func, tuple_state=tuple_state, n_state=len(state), args=tuple(args))
    if torch.is_grad_enabled() and any(x.requires_grad for x in (t, *state, *bound.params)):
        # Only when a gradient is asked for: the scheme's inverse, a replayable field.
        check_scheme(scheme, adaptive=steps is None, gradient=gradient)
        check_replayable(func, gradient)
    attributes: dict[str, Tensor] = {}
    n_checks = 0  # field evaluations made by the checks, counted in the stats
    engine = gradient != "backprop"  # the Function sees only the tensors passed to it
    if not isinstance(func, nn.Module):
        n_checks = check_no_capture(bound, t[0], state)
        if engine and _mode.current() is _mode.Mode.EAGER and torch.is_grad_enabled():
            if not _mode.under_transform():
                bound = dataclasses.replace(bound, field=guard_captures(bound.field))
    elif engine and _mode.current() is not _mode.Mode.EXPORT:
        # Python attributes and flags only, so compiled solves are checked too. Refused after
        # the first evaluation: attributes the field sets itself (weight_norm's weight) are not
        # inputs.
        attributes = module_attributes(func)
    device_type = state[0].device.type
    if torch.is_autocast_enabled(device_type):
        bound = dataclasses.replace(bound, field=autocast_field(bound.field, device_type))
    checked: list[bool] = []
    # A module reading a tensor that is none of the solve's inputs: seen in the autograd graph of
    # the first evaluation in eager code; while dynamo traces (no graph to read) by one detached
    # evaluation after the start (traced, its result unused; not counted in the stats).
    module_check = isinstance(func, nn.Module) and engine and torch.is_grad_enabled()
    module_check = module_check and not _mode.under_transform()
    graph_check = module_check and _mode.current() is _mode.Mode.EAGER
    # A module that changes a buffer in place as it runs: seen at its first evaluation.
    versions = buffer_versions(func) if module_check and not _mode.tracing() else None

    def field_checked(t_: Tensor, y_: State, p_: Params) -> State:
        if checked or _mode.tracing() or _mode.under_transform():
            out = bound.field(t_, y_, p_)
        else:  # on copies: a field never modifies the caller's y0
            y_ = tuple(x.clone() for x in y_)
            out = first_call(bound.field, t_, y_, p_)
        check_output(out, state)
        if not checked and attributes:
            check_module_attributes(func, attributes)
        if not checked and graph_check:
            check_module_inputs(func, out, (t, t_, *state, *y_, *bound.params, *p_))
        if not checked and versions is not None:
            check_buffers_kept(func, versions)
        checked.append(True)
        return out

    start = scheme.init(field_checked, t[0], state, bound.params)
    # One tensor twice among a solve's inputs (a field that returns its parameter as it is, kept
    # in the state): torch.compile refuses that, so each repeat becomes its own copy.
    start = tuple(unaliased(start, bound.params))
    if not checked:
        field_checked(t[0], state, bound.params)
    n_init = len(checked) + n_checks  # evaluations before the steps, counted in the stats
    if module_check and _mode.current() is _mode.Mode.COMPILE:
        check_module_detached(bound, t[0], state)
    probe = None if monitor is None or gradient != "mali" else monitor.probe(state[0])
    floor = FIXED_ATOL if tol is None else tol.atol
    with bound.frozen():  # one spectral-norm power iteration per solve: the first evaluation's
        trajectories, solve_stats, final = dispatch(
            _mode.current(), scheme, bound, t, start, len(state), steps, tol, gradient,
            reconstruction_tol, probe, checkpoints, unroll, checked_by,
        )  # fmt: skip
    if solve_stats is None:
        assert steps is not None
        count = torch.tensor(sum(steps), dtype=torch.long, device=t.device)
        n_evals = count * scheme.evaluations_per_step + n_init
        solve_stats = SolveStats(n_evals, count, torch.zeros_like(count), count < 0)
    else:
        solve_stats = solve_stats._replace(n_f_evals=solve_stats.n_f_evals + n_init)
    if _mode.current() is not _mode.Mode.EXPORT:
        measure, n_evals = parasitic(scheme, bound, t, steps, final, floor)
        solve_stats = solve_stats._replace(
            n_f_evals=solve_stats.n_f_evals + n_evals,
            parasitic=measure if measure is not None else torch.zeros_like(t[0]),
        )
    solve_stats = solve_stats._replace(fallback=flag)
    out = trajectories if tuple_state else trajectories[0]
    return (out, solve_stats) if stats else out


def _fallback(wanted: bool, *, steps: list[int] | None, flag: Tensor) -> Fallback | None:
    """How a MALI backward falls back: eagerly (warning, ``flag``), inside a compiled solve's
    graph (``torch.cond``; not under a traced transform, whose loops are Python loops, nor for a
    fixed grid of more than :data:`~mali_func.gradients._solve.FIXED_BOUND` steps), or not at all
    (export, other gradients)."""
    mode = _mode.current()
    if not wanted or mode is _mode.Mode.EXPORT:
        return None
    if mode is _mode.Mode.EAGER:
        return Fallback(flag)
    if _mode.under_transform() or (steps is not None and sum(steps) > FIXED_BOUND):
        return None
    return Fallback(flag, traced=True)
