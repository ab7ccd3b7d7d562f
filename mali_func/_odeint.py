"""``odeint``: solve ``dy/dt = func(t, y)`` with a reversible scheme and an exact gradient.

The front door: one object per concept (the scheme as ``method``, the step choice as ``steps``,
the gradient strategy as ``gradient``), the older keywords kept as documented shorthands
(:mod:`mali_func.interop._shorthands`), torchdiffeq's first seven parameters in its order. The
default scheme is asynchronous leapfrog (:class:`mali_func.ALF`), the default gradient MALI
(Zhuang et al., "MALI: A memory efficient and reverse accurate integrator for Neural ODEs", ICLR
2021): the backward pass rebuilds the trajectory by inverting the steps, so memory does not grow
with the number of steps, and the gradient is the exact gradient of the discrete forward solve.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor

from ._integrate import integrate
from .gradients._strategies import Gradient
from .interop._shorthands import expand
from .schemes import ReversibleScheme
from .stepping._steps import Steps

TensorOrTuple = Tensor | tuple[Tensor, ...]


def odeint(
    func: Callable[..., Any],
    y0: TensorOrTuple,
    t: Tensor | Sequence[float],
    rtol: float | None = None,
    atol: float | None = None,
    method: str | ReversibleScheme | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    steps: Steps | None = None,
    gradient: str | Gradient = "mali",
    args: Sequence[Tensor] = (),
    stats: bool = False,
    **shorthands: Any,
) -> Any:
    """Integrate ``dy/dt = func(t, y, *args)`` and return ``y`` at every time in ``t``.

    Args:
        func: the vector field, called as ``func(t, y, *args)`` with a 0-dim tensor ``t``. An
            :class:`~torch.nn.Module` has its parameters and buffers differentiated (also those
            substituted by :func:`torch.func.functional_call`). A plain callable must receive every
            tensor that needs a gradient through ``args``; capturing one raises, and so does, with
            ``gradient="mali"`` or ``"checkpoint"``, a module attribute that requires grad but is
            neither a parameter nor a buffer. Under ``torch.autocast`` the field runs in the
            autocast dtype (in the backward's re-evaluations too) and its output is cast back to
            ``y0``'s dtype, so the state keeps its own precision.
        y0: initial state at ``t[0]``: a floating-point tensor of any shape, or a tuple of them
            (e.g. ``(z, logp)``).
        t: 1-D, at least two strictly increasing or strictly decreasing times on ``y0``'s device (a
            list, tuple or numpy array of floats is converted; a floating tensor of another dtype is
            cast to ``y0``'s, as torchdiffeq does).
        rtol: relative tolerance of adaptive steps (default 1e-3; also ``Adaptive(rtol=...)``).
        atol: absolute tolerance of adaptive steps (default 1e-6; also ``Adaptive(atol=...)``).
        method: the scheme: a :class:`~mali_func.ReversibleScheme` (``ALF(eta=0.9)``,
            ``CoupledRK("rk4", coupling=0.9)``, ``RungeKutta("tsit5")``, one of your own) or its
            name: ``"alf"`` (the default), ``"reversible_heun"``, or ``"euler"``, ``"midpoint"``,
            ``"heun"``, ``"adaptive_heun"``, ``"heun3"``, ``"bosh3"``, ``"rk4"``, ``"dopri5"``,
            ``"tsit5"``: the *reversible coupling* of that Runge-Kutta tableau
            (:class:`~mali_func.CoupledRK`; McCallum & Foster 2024), or with ``coupling=None`` the
            plain step (:class:`~mali_func.RungeKutta`).
        options: torchdiffeq's options (:mod:`mali_func.interop._compat`): keys ``step_size``,
            ``first_step``, ``max_num_steps``, ``min_step``, ``max_step``, ``norm``, ``jump_t``,
            ``step_t``, ``grid_constructor``, and the controller's ``safety``, ``dfactor``,
            ``ifactor``.
        steps: :class:`~mali_func.Fixed` (``n`` steps per interval, or a largest ``size``) or
            :class:`~mali_func.Adaptive` (error control; the default when no fixed grid is given).
            Adaptive steps land on every ``t[i]``.
        gradient: :class:`~mali_func.MALI` (``"mali"``, the default: constant memory, verified
            reconstruction with an exact fallback), :class:`~mali_func.Checkpoint`
            (``"checkpoint"``: stored states and recomputation, any scheme) or
            :class:`~mali_func.Backprop` (``"backprop"``: autograd through every step, memory linear
            in the steps).
        args: extra tensors passed to ``func`` and differentiated.
        stats: also return a :class:`SolveStats` (field evaluations, accepted and rejected steps,
            failure, fallback and parasitic-mode flags).
        **shorthands: the keywords below, and torchdiffeq's ``event_fn`` (a terminal event:
            the result is then ``(event_t, solution)``, see :func:`~mali_func.odeint_event`),
            ``adjoint_params`` (a module's tensors and ``args`` are differentiated anyway; for a
            plain function that closes over the listed tensors they are differentiated through
            its reads, in eager code) and ``adjoint_rtol``, ``adjoint_atol``, ``adjoint_method``,
            ``adjoint_options`` (accepted and unused: MALI's backward replays the forward steps).
            An unknown keyword raises ``TypeError``; a shorthand and an object that set the same
            option raise ``TypeError``.

    Other Parameters:
        n_steps (int | Sequence[int]): shorthand for ``Fixed(n=...)``: equal steps in every interval
            ``[t[i], t[i+1]]``: one int for all, or one per interval.
        step_size (float): shorthand for ``Fixed(size=...)``: alternatively, split each interval
            into ``ceil(|dt| / step_size)`` equal steps (needs the values of ``t``: eager code
            only). With neither, the steps are chosen adaptively (see
            :mod:`mali_func.stepping._control`) and land on every ``t[i]``.
        unroll (int): shorthand for ``Fixed(..., unroll=...)``: under ``torch.compile``, fixed-grid
            steps per iteration of the compiled forward and MALI reverse loops (an int >= 1; the
            rest run one at a time): fewer loop round trips for ``unroll + 1`` traced copies of the
            step, i.e. a faster compiled step for a longer compile (README, *With torch.compile*).
            Eager solves ignore it.
        max_steps (int): shorthand for ``Adaptive(max_steps=...)``: most trial steps of an adaptive
            solve (default 10,000: a solve that cannot finish fails instead of running on;
            :func:`~mali_func.odeint_adjoint` has no cap in eager code, as torchdiffeq).
        first_step (float): shorthand for ``Adaptive(first_step=...)``: the first adaptive step
            size; by default the Hairer-Wanner estimate.
        controller (Controller): shorthand for ``Adaptive(controller=...)``: what accepts adaptive
            steps and proposes the next size: any object with ``init(h0)`` and ``propose(memory,
            err, h, order)`` (:class:`Controller`); by default ``IntegralController()``
            (:class:`IntegralController` sets its safety factor and step-ratio bounds).
        eta (float): shorthand for ``method=ALF(eta=...)``: ALF damping in (0, 1], not 0.5; 1 (the
            default) is undamped ALF. Damped steps make the reverse reconstruction amplify round-off
            by ``1/|1 - 2 eta|`` per step.
        coupling (float | str | None): shorthand for ``method=CoupledRK(tableau, coupling=...)``:
            ``lambda`` of the Runge-Kutta methods: ``"auto"`` (the default; chosen per step from the
            step size and a contraction estimate) or a number in (0, 1]: near 1 the forward pass is
            unstable on contracting dynamics, small values amplify round-off in the reverse
            reconstruction; ``None``: the plain Runge-Kutta step, which has no inverse
            (``gradient="checkpoint"`` or ``"backprop"``).
        scheme (ReversibleScheme): shorthand for ``method=<scheme>``: any
            :class:`~mali_func.schemes.ReversibleScheme` instead of ``method`` (then without ``eta``
            or ``coupling``).
        reconstruction_tol (float | str | None): shorthand for ``MALI(reconstruction_tol=...)``: the
            largest relative reconstruction error a MALI backward accepts (one host read per
            backward, eager only); ``"auto"`` (the default): ``1e-7`` for a float64 state, ``1e-3``
            otherwise (healthy solves rebuild to about ten ulps); ``None``: only a non-finite
            reconstruction fails the check.
        fallback (bool): shorthand for ``MALI(fallback=...)``: what a MALI backward does when its
            reconstruction fails the check (error above ``reconstruction_tol``, or non-finite):
            ``True`` (the default) recomputes the exact gradient by checkpointing the forward's own
            steps (fixed grid, or the accepted steps of an adaptive solve), warns once with
            :class:`FallbackWarning` and sets ``stats.fallback``; under ``vmap`` only the failing
            samples take the recomputed gradient. ``False`` returns the raw MALI gradient and warns
            with :class:`ReconstructionWarning` (for studying the reconstruction). Compiled solves
            fall back inside the graph (``torch.cond``; no warning or flag there, a
            :class:`DriftMonitor` reports the error), fixed grids up to 65,536 steps.
        monitor (DriftMonitor): shorthand for ``MALI(monitor=...)``: a :class:`DriftMonitor` that
            receives the reconstruction error of the backward.
        checkpoints (int): shorthand for ``Checkpoint(budget=...)``: the state budget of
            ``gradient="checkpoint"``, an int >= 1; by default ``2 ceil(sqrt(N))`` for ``N`` steps
            (one recomputation).

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
    kwargs = expand(
        "odeint", rtol=rtol, atol=atol, method=method, steps=steps, gradient=gradient,
        keywords=shorthands,
    )  # fmt: skip
    return integrate(func, y0, t, options=options, args=args, stats=stats, **kwargs)
