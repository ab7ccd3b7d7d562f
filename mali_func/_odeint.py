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

from torch import Tensor, nn

from ._checks import check_options, check_steps, check_t, check_y0
from ._drift import DriftMonitor
from ._engine import Chain, integrate, solve_reversible
from ._field import bind_field, check_no_capture, check_output
from .solvers import ALF, Params, ReversibleScheme, State

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
) -> TensorOrTuple:
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
            (needs the values of ``t``: eager code only).
        gradient: ``"mali"`` (constant memory, exact gradient of the discrete solve) or
            ``"backprop"`` (autograd through every step, memory linear in the steps).
        args: extra tensors passed to ``func`` and differentiated.
        scheme: a :class:`~mali_func.solvers.ReversibleScheme` other than ALF; ``eta`` must then
            stay at its default.
        monitor: a :class:`DriftMonitor` that receives the reconstruction error of the backward.
        reconstruction_tol: warn with :class:`ReconstructionWarning` when the relative
            reconstruction error of a MALI backward exceeds it (one host read per backward, eager
            only); ``None`` disables the check.

    Returns:
        A tensor of shape ``(len(t), *y0.shape)``, or a tuple of such tensors for a tuple ``y0``.
    """
    state, tuple_state = check_y0(y0)
    t = check_t(t, state[0])
    steps = check_steps(n_steps, step_size, t)
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
    if gradient == "backprop":
        trajectories, _ = integrate(scheme, bound.field, t, start, bound.params, steps, n_out)
    else:
        chain = Chain(
            scheme=scheme,
            field=bound.field,
            steps=steps,
            n_state=len(start),
            n_out=n_out,
            n_params=len(bound.params),
            reconstruction_tol=reconstruction_tol,
        )
        probe = None if monitor is None else monitor.probe(state[0])
        trajectories, _ = solve_reversible(chain, t, start, bound.params, probe)
    return trajectories if tuple_state else trajectories[0]
