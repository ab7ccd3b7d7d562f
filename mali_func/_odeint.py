"""``odeint``: solve ``dy/dt = func(t, y)`` on a fixed grid with a reversible scheme.

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


def odeint(
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
    """Integrate ``dy/dt = func(t, y, *args)`` and return ``y`` at every time in ``t``.

    Args:
        func: the vector field, called as ``func(t, y, *args)`` with a 0-dim tensor ``t``. An
            :class:`~torch.nn.Module` has its parameters and buffers differentiated (also those
            substituted by :func:`torch.func.functional_call`). A plain callable must receive
            every tensor that needs a gradient through ``args``; capturing one raises, and so
            does, with ``gradient="mali"`` or ``"checkpoint"``, a module attribute that requires
            grad but is neither a parameter nor a buffer. Under ``torch.autocast`` the field runs
            in the autocast dtype (in the backward's re-evaluations too) and its output is cast
            back to ``y0``'s dtype, so the state keeps its own precision.
        y0: initial state at ``t[0]``: a floating-point tensor of any shape, or a tuple of them
            (e.g. ``(z, logp)``).
        t: 1-D, at least two strictly increasing or strictly decreasing times on ``y0``'s
            device (a list, tuple or numpy array of floats is converted; a floating tensor of
            another dtype is cast to ``y0``'s, as torchdiffeq does).
        method: the scheme by name: ``"alf"`` (the default), ``"reversible_heun"``, or
            ``"euler"``, ``"midpoint"``, ``"heun"``, ``"adaptive_heun"``, ``"heun3"``,
            ``"bosh3"``, ``"rk4"``, ``"dopri5"``, ``"tsit5"``: the *reversible coupling* of that
            Runge-Kutta tableau (:class:`~mali_func.CoupledRK`; McCallum & Foster 2024), or
            with ``coupling=None`` the plain step (:class:`~mali_func.RungeKutta`).
        eta: ALF damping in (0, 1], not 0.5; 1 (the default) is undamped ALF. Damped steps make
            the reverse reconstruction amplify round-off by ``1/|1 - 2 eta|`` per step.
        coupling: ``lambda`` of the Runge-Kutta methods: ``"auto"`` (the default; chosen per
            step from the step size and a contraction estimate) or a number in (0, 1]: near 1
            the forward pass is unstable on contracting dynamics, small values amplify round-off
            in the reverse reconstruction; ``None``: the plain Runge-Kutta step, which has no
            inverse (``gradient="checkpoint"`` or ``"backprop"``).
        n_steps: equal steps in every interval ``[t[i], t[i+1]]``: one int for all, or one per
            interval.
        step_size: alternatively, split each interval into ``ceil(|dt| / step_size)`` equal steps
            (needs the values of ``t``: eager code only). With neither, the steps are chosen
            adaptively (see :mod:`mali_func.stepping._control`) and land on every ``t[i]``.
        gradient: ``"mali"`` (constant memory, exact gradient of the discrete solve; needs an
            inverse), ``"checkpoint"`` (the same exact gradient from at most ``checkpoints``
            stored states and recomputation, any scheme: :mod:`mali_func.gradients._checkpoint`) or
            ``"backprop"`` (autograd through every step, memory linear in the steps).
        checkpoints: the state budget of ``gradient="checkpoint"``, an int >= 1; by default
            ``2 ceil(sqrt(N))`` for ``N`` steps (one recomputation).
        unroll: under ``torch.compile``, fixed-grid steps per iteration of the compiled forward
            and MALI reverse loops (an int >= 1; the rest run one at a time): fewer loop round
            trips for ``unroll + 1`` traced copies of the step, i.e. a faster compiled step for
            a longer compile (README, *With torch.compile*). Eager solves ignore it.
        args: extra tensors passed to ``func`` and differentiated.
        scheme: any :class:`~mali_func.schemes.ReversibleScheme` instead of ``method`` (then
            without ``eta`` or ``coupling``).
        monitor: a :class:`DriftMonitor` that receives the reconstruction error of the backward.
        reconstruction_tol: the largest relative reconstruction error a MALI backward accepts
            (one host read per backward, eager only); ``"auto"`` (the default): ``1e-7`` for a
            float64 state, ``1e-3`` otherwise (healthy solves rebuild to about ten ulps);
            ``None``: only a non-finite reconstruction fails the check.
        fallback: what a MALI backward does when its reconstruction fails the check (error above
            ``reconstruction_tol``, or non-finite): ``True`` (the default) recomputes the exact
            gradient by checkpointing the forward's own steps (fixed grid, or the accepted steps
            of an adaptive solve), warns once with :class:`FallbackWarning` and sets
            ``stats.fallback``; under ``vmap`` only the failing samples take the recomputed
            gradient. ``False`` returns the raw MALI gradient and warns with
            :class:`ReconstructionWarning` (for studying the reconstruction). Compiled solves
            fall back inside the graph (``torch.cond``; no warning or flag there, a
            :class:`DriftMonitor` reports the error), fixed grids up to 65,536 steps.
        rtol: relative adaptive error tolerance (default 1e-3), mixed RMS norm.
        atol: absolute adaptive error tolerance (default 1e-6).
        max_steps: most trial steps of an adaptive solve (default 10,000).
        first_step: the first adaptive step size; by default the Hairer-Wanner estimate.
        controller: what accepts adaptive steps and proposes the next size: any object with
            ``init(h0)`` and ``propose(memory, err, h, order)`` (:class:`Controller`); by default
            ``IntegralController()`` (:class:`IntegralController` sets its safety factor and
            step-ratio bounds).
        stats: also return a :class:`SolveStats` (field evaluations, accepted and rejected
            steps, failure flag).
        options: torchdiffeq's options (:mod:`mali_func.interop._compat`): keys
            ``step_size``, ``first_step``, ``max_num_steps``, and the controller's ``safety``,
            ``dfactor``, ``ifactor``.
        event_fn: torchdiffeq's event function: raises :class:`NotImplementedError`.
        adjoint_params: torchdiffeq's adjoint parameters: checked and otherwise unneeded (every
            tensor the field receives is differentiated, also one ``adjoint_params`` leaves out).
        adjoint_rtol: accepted and unused (MALI's backward replays the forward steps).
        adjoint_atol: accepted and unused.
        adjoint_method: accepted and unused.
        adjoint_options: accepted and unused.

    Returns:
        A tensor of shape ``(len(t), *y0.shape)``, or a tuple of such tensors for a tuple ``y0``;
        with ``stats=True`` the pair ``(ys, stats)``.

    Raises:
        TypeError: ``func`` reads a tensor that requires grad and that the solve would not
            differentiate (a capture of a plain callable, a module attribute under MALI or
            checkpointing); the message names it and how to pass it.
        RuntimeError: an eager adaptive solve that exceeds ``max_steps``, whose step size
            underflows, or whose solution blows up closer to a singularity than ``rtol`` resolves
            (:func:`mali_func.stepping._blowup.blow_up`); under ``vmap`` or ``torch.compile`` the
            outputs are NaN instead and ``stats.failed`` is set.
    """
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
