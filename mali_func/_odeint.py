"""``odeint``: solve ``dy/dt = func(t, y)`` on a fixed grid with a reversible scheme.

The default scheme is damped asynchronous leapfrog (:class:`mali_func.solvers.ALF`), and the
default gradient is MALI (Zhuang et al., "MALI: A memory efficient and reverse accurate integrator
for Neural ODEs", ICLR 2021): the backward pass rebuilds the trajectory by inverting the steps,
so memory does not grow with the number of steps, while the gradient is the exact gradient of the
discrete forward computation. ``gradient="backprop"`` differentiates the same steps with ordinary
autograd instead: the reference, with memory linear in the number of steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ._adaptive import AdaptiveChain, replay, solve_adaptive
from ._checks import check_adaptive, check_options, check_steps, check_t, check_y0, is_concrete
from ._compiled import odeint_loop
from ._compiled_adaptive import adaptive_loop
from ._controller import SolveStats, Tolerances, run_controller
from ._drift import DriftMonitor
from ._engine import Chain, integrate, solve_reversible
from ._field import bind_field, check_no_capture, check_output
from ._scan import integrate_scan
from .solvers import ALF, Field, Params, ReversibleScheme, State

TensorOrTuple = Tensor | tuple[Tensor, ...]


def odeint(
    func: Callable[..., Any],
    y0: TensorOrTuple,
    t: Tensor | Sequence[float],
    *,
    eta: float = 1.0,
    n_steps: int | None = None,
    step_size: float | None = None,
    gradient: Literal["mali", "backprop"] = "mali",
    args: Sequence[Tensor] = (),
    scheme: ReversibleScheme | None = None,
    monitor: DriftMonitor | None = None,
    reconstruction_tol: float | None = 1e-3,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int | None = None,
    first_step: float | None = None,
    stats: bool = False,
) -> Any:
    """Integrate ``dy/dt = func(t, y, *args)`` and return ``y`` at every time in ``t``.

    Args:
        func: the vector field, called as ``func(t, y, *args)`` with a 0-dim tensor ``t``. An
            :class:`~torch.nn.Module` has its parameters and buffers differentiated (also those
            substituted by :func:`torch.func.functional_call`). A plain callable must receive
            every tensor that needs a gradient through ``args``; capturing one raises.
        y0: initial state at ``t[0]``: a floating-point tensor of any shape, or a tuple of them
            (e.g. ``(z, logp)``).
        t: 1-D, at least two strictly increasing or strictly decreasing times, same dtype and
            device as ``y0`` (a list of floats is converted).
        eta: ALF damping in (0, 1], not 0.5; 1 is undamped ALF. Damped steps make the reverse
            reconstruction amplify round-off by ``1/|1 - 2 eta|`` per step.
        n_steps: equal steps in every interval ``[t[i], t[i+1]]``.
        step_size: alternatively, split each interval into ``ceil(|dt| / step_size)`` equal steps
            (needs the values of ``t``: eager code only). With neither, the steps are chosen
            adaptively (see :mod:`mali_func._controller`) and land on every ``t[i]``.
        gradient: ``"mali"`` (constant memory, exact gradient of the discrete solve) or
            ``"backprop"`` (autograd through every step, memory linear in the steps).
        args: extra tensors passed to ``func`` and differentiated.
        scheme: a :class:`~mali_func.solvers.ReversibleScheme` other than ALF; ``eta`` must then
            stay at its default.
        monitor: a :class:`DriftMonitor` that receives the reconstruction error of the backward.
        reconstruction_tol: warn with :class:`ReconstructionWarning` when the relative
            reconstruction error of a MALI backward exceeds it (one host read per backward, eager
            only); ``None`` disables the check.
        rtol, atol: adaptive error tolerances (default 1e-3 and 1e-6), mixed RMS norm.
        max_steps: most trial steps of an adaptive solve (default 10,000).
        first_step: the first adaptive step size; by default the Hairer-Wanner estimate.
        stats: also return a :class:`SolveStats` (field evaluations, accepted and rejected
            steps, failure flag).

    Returns:
        A tensor of shape ``(len(t), *y0.shape)``, or a tuple of such tensors for a tuple ``y0``;
        with ``stats=True`` the pair ``(ys, stats)``.

    Raises:
        RuntimeError: an eager adaptive solve that exceeds ``max_steps`` or whose step size
            underflows; under ``vmap`` or ``torch.compile`` the outputs are NaN instead and
            ``stats.failed`` is set.
    """
    state, tuple_state = check_y0(y0)
    t = check_t(t, state[0])
    steps = check_steps(n_steps, step_size, t)
    rtol_, atol_, max_steps_, first_step_ = check_adaptive(
        steps is None, rtol, atol, max_steps, first_step
    )
    if not isinstance(stats, bool):
        raise TypeError(f"stats must be a bool, got {type(stats).__name__}")
    check_options(gradient, reconstruction_tol, monitor, DriftMonitor)
    if scheme is None:
        scheme = ALF(eta)
    elif not isinstance(scheme, ReversibleScheme):
        raise TypeError(f"scheme must be a ReversibleScheme, got {type(scheme).__name__}")
    elif eta != 1.0:
        raise ValueError("eta configures the default ALF scheme; set it on the scheme instead")

    bound = bind_field(func, tuple_state=tuple_state, n_state=len(state), args=tuple(args))
    if not isinstance(func, nn.Module):
        check_no_capture(bound, t[0], state)
    checked: list[bool] = []

    def field_checked(t_: Tensor, y_: State, p_: Params) -> State:
        out = bound.field(t_, y_, p_)
        check_output(out, state)
        checked.append(True)
        return out

    start = scheme.init(field_checked, t[0], state, bound.params)
    if not checked:
        check_output(bound.field(t[0], state, bound.params), state)
    n_out = len(state)
    probe = None if monitor is None or gradient == "backprop" else monitor.probe(state[0])
    if steps is None:
        if torch.compiler.is_exporting():
            raise ValueError(
                "export needs a fixed grid: pass n_steps (adaptive solves do not export)"
            )
        tol = Tolerances(rtol=rtol_, atol=atol_, max_steps=max_steps_, first_step=first_step_)
        if torch.compiler.is_compiling():
            # The controller and the MALI backward as while_loops: no host sync, no graph break.
            trajectories, solve_stats = adaptive_loop(
                scheme,
                bound.field,
                t,
                start,
                bound.params,
                n_out,
                tol,
                gradient=gradient,
                probe=probe,
            )
        else:
            trajectories, solve_stats = _solve_adaptive(
                scheme,
                bound.field,
                t,
                start,
                bound.params,
                n_out,
                tol,
                gradient,
                reconstruction_tol,
                probe,
            )
    else:
        trajectories = _solve_fixed(
            scheme,
            bound.field,
            t,
            start,
            bound.params,
            n_out,
            steps,
            gradient,
            reconstruction_tol,
            probe,
        )
        solve_stats = _fixed_stats(sum(steps), t)
    out = trajectories if tuple_state else trajectories[0]
    return (out, solve_stats) if stats else out


def _solve_fixed(
    scheme: ReversibleScheme,
    field: Field,
    t: Tensor,
    start: State,
    params: Params,
    n_out: int,
    steps: tuple[int, ...],
    gradient: str,
    reconstruction_tol: float | None,
    probe: Tensor | None,
) -> State:
    if torch.compiler.is_exporting():
        # Export captures the forward only: one scan loop, no gradient machinery.
        return integrate_scan(scheme, field, t, start, params, steps, n_out)[0]
    if gradient == "mali" and torch.compiler.is_compiling() and all(s == steps[0] for s in steps):
        # Loops that torch.compile keeps as loops: compile time does not grow with the steps.
        # (Comparing, not hashing, the counts keeps n_steps symbolic: no recompiles.)
        loop = odeint_loop(
            scheme, field, t, start, params, steps[0], n_out, gradient=gradient, probe=probe
        )
        return loop[0]
    if gradient == "backprop":
        return integrate(scheme, field, t, start, params, steps, n_out)[0]
    chain = Chain(
        scheme=scheme,
        field=field,
        steps=steps,
        n_state=len(start),
        n_out=n_out,
        n_params=len(params),
        reconstruction_tol=reconstruction_tol,
    )
    return solve_reversible(chain, t, start, params, probe)[0]


def _solve_adaptive(
    scheme: ReversibleScheme,
    field: Field,
    t: Tensor,
    start: State,
    params: Params,
    n_out: int,
    tol: Tolerances,
    gradient: str,
    reconstruction_tol: float | None,
    probe: Tensor | None,
) -> tuple[State, SolveStats]:
    if gradient == "backprop":
        eager = all(is_concrete(x) for x in (t, *start, *params))
        with torch.no_grad():
            _, _, records, solve_stats = run_controller(
                scheme, field, t, start, params, n_out, tol, eager=eager
            )
        outputs = replay(scheme, field, t, start, params, records, n_out)
        nan_if_failed = tuple(
            torch.where(solve_stats.failed, torch.full_like(o, float("nan")), o) for o in outputs
        )
        return nan_if_failed, solve_stats
    chain = AdaptiveChain(
        scheme=scheme,
        field=field,
        tol=tol,
        n_state=len(start),
        n_out=n_out,
        n_params=len(params),
        reconstruction_tol=reconstruction_tol,
    )
    return solve_adaptive(chain, t, start, params, probe)


def _fixed_stats(n_steps: int, t: Tensor) -> SolveStats:
    count = torch.tensor(n_steps, dtype=torch.long, device=t.device)
    return SolveStats(count + 1, count, torch.zeros_like(count), torch.zeros_like(count).bool())
