"""One solve from checked options: the scheme, the step and gradient objects, the field and its
checks, the dispatch.

The default scheme is damped asynchronous leapfrog (:class:`mali_func.schemes.ALF`), and the
default gradient is MALI (Zhuang et al., "MALI: A memory efficient and reverse accurate integrator
for Neural ODEs", ICLR 2021): the backward pass rebuilds the trajectory by inverting the steps,
so memory does not grow with the number of steps, while the gradient is the exact gradient of the
discrete forward computation. ``gradient="backprop"`` differentiates the same steps with ordinary
autograd instead: the reference, with memory linear in the number of steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._checks import (
    check_adaptive,
    check_scheme,
    check_steps,
    check_t,
    check_y0,
)
from ._dispatch import dispatch
from ._events import solve_until_event
from .backends import _mode
from .backends._traced_transforms import check_per_sample
from .field._callbacks import callbacks_of
from .field._checked import start_checked
from .field._field import BoundField, bind_field, check_replayable
from .gradients._strategies import DEFAULT, Gradient
from .interop._compat import FIXED_GRID_METHODS, translate
from .interop._landings import on_grid_steps, rows_of, widened
from .schemes import ReversibleScheme, State
from .schemes._methods import COUPLING_DEFAULT, perturbed, scheme_for
from .stepping._parasitic import parasitic
from .stepping._stats import SolveStats
from .stepping._steps import Fixed, Steps

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
    steps: Steps | None = None,
    gradient: Gradient = DEFAULT,
    scheme: ReversibleScheme | None = None,
    eta: float | None = None,
    coupling: float | str | None = COUPLING_DEFAULT,
    args: Sequence[Tensor] = (),
    stats: bool = False,
    **torchdiffeq: Any,
) -> Any:
    """:func:`mali_func.odeint` on objects (what :func:`mali_func.interop._shorthands.expand`
    makes of its arguments): the scheme's keywords (``method`` or ``scheme``, ``eta``,
    ``coupling``), ``steps`` and ``gradient`` as objects, torchdiffeq's keywords in
    ``torchdiffeq``; documented there."""
    state, tuple_state = check_y0(y0)
    t = check_t(t, state[0])
    event_fn = torchdiffeq.pop("event_fn", None)
    scheme_keys = dict(scheme=scheme, eta=eta, coupling=coupling)
    if event_fn is not None:  # torchdiffeq's terminal event: (event_t, solution)
        if stats:
            raise ValueError("stats=True with event_fn is not supported; the result is (t, y)")
        rest = None if options is None else {k: v for k, v in options.items() if k != "interp"}
        kwargs = dict(rtol=rtol, atol=atol, method=method, options=rest, steps=steps,
                      gradient=gradient, args=args, **scheme_keys, **torchdiffeq)  # fmt: skip
        fixed = isinstance(_steps_of(method, rest, steps, rtol, atol, torchdiffeq), Fixed)
        return solve_until_event(
            integrate, func, y0, t, event_fn, kwargs, tuple(args), adaptive=not fixed
        )
    wide = widened(func, y0, t, options) if t.shape[0] > 1 else None
    if wide is not None:  # torchdiffeq's jump_t, step_t, grid_constructor: a wider solve
        times, rows, rest = wide
        on_grid = isinstance(options, Mapping) and "grid_constructor" in options
        landing = on_grid_steps(steps, on_grid, method in FIXED_GRID_METHODS)
        out = integrate(func, y0, times, rtol, atol, method, rest, steps=landing,
                        gradient=gradient, args=args, stats=stats, **scheme_keys,
                        **torchdiffeq)  # fmt: skip
        return rows_of(out, rows, tuple_state, stats)
    steps = _steps_of(method, options, steps, rtol, atol, torchdiffeq)
    scheme = scheme_for(method, scheme, eta=eta, coupling=coupling)
    if isinstance(options, Mapping) and options.get("perturb"):
        scheme = perturbed(scheme)
    fixed = steps if isinstance(steps, Fixed) else None
    counts = None if fixed is None else check_steps(fixed.n, fixed.size, t)
    tol = check_adaptive(counts is None, rtol, atol, steps, tuple_state=tuple_state)
    if not isinstance(stats, bool):
        raise TypeError(f"stats must be a bool, got {type(stats).__name__}")
    flag = torch.zeros((), dtype=torch.bool, device=t.device)
    checked_by = gradient.recovery(flag, counts)
    check_scheme(scheme, adaptive=counts is None, gradient=None)
    if t.shape[0] == 1:  # torchdiffeq's convention: the solution at t[0] alone, no steps
        return _at_start(state, tuple_state, stats, flag)

    check_per_sample(func)
    bound = _bound_field(func, state, tuple_state, args, torchdiffeq.get("adjoint_params"))
    if torch.is_grad_enabled() and any(x.requires_grad for x in (t, *state, *bound.params)):
        # Only when a gradient is asked for: the scheme's inverse, a replayable field.
        check_scheme(scheme, adaptive=counts is None, gradient=gradient)
        check_replayable(func, gradient)
    bound, start, n_init = start_checked(func, bound, scheme, t, state, engine=gradient.engine)
    floor = FIXED_ATOL if tol is None else tol.atol
    hooks = callbacks_of(func, tuple_state, adaptive=counts is None)
    with bound.frozen():  # one spectral-norm power iteration per solve: the first evaluation's
        trajectories, solve_stats, final = dispatch(
            _mode.current(), scheme, bound, t, start, len(state), counts, tol, gradient,
            1 if fixed is None else fixed.unroll, checked_by, hooks,
        )  # fmt: skip
    solve_stats = _stats(solve_stats, scheme, bound, t, counts, final, floor, n_init)
    solve_stats = solve_stats._replace(fallback=flag)
    out = trajectories if tuple_state else trajectories[0]
    return (out, solve_stats) if stats else out


def _steps_of(
    method: Any, options: Mapping[str, Any] | None, steps: Steps | None, rtol: Any, atol: Any,
    torchdiffeq: dict[str, Any],
) -> Steps | None:  # fmt: skip
    """The solve's steps: ``steps`` with torchdiffeq's options folded in; a fixed-grid method
    given no grid takes one step from each time of ``t`` to the next (torchdiffeq's convention)
    and refuses tolerances, naming itself."""
    steps = translate(method, options, steps, **torchdiffeq)
    if steps is not None or method not in FIXED_GRID_METHODS:
        return steps
    given = [name for name, v in (("rtol", rtol), ("atol", atol)) if v is not None]
    if given:
        raise ValueError(
            f"{', '.join(given)} apply to adaptive solves, and method {method!r} has no "
            "error estimate: it steps on a fixed grid (one step from each time of t to the "
            "next, torchdiffeq's convention, or n_steps=/step_size=); drop them, or use an "
            "adaptive method (tsit5, dopri5, bosh3)"
        )
    return Fixed(n=1)


def _bound_field(
    func: Any, state: State, tuple_state: bool, args: Any, adjoint_params: Any
) -> BoundField:
    """The pure field of ``func`` with its inputs (``args`` checked to be a tuple or list)."""
    if isinstance(args, Tensor) or not isinstance(args, (tuple, list)):
        raise TypeError(
            f"args must be a tuple or list of tensors, got {type(args).__name__} (one tensor: "
            "args=(tensor,))"
        )
    return bind_field(
        func, tuple_state=tuple_state, n_state=len(state), args=tuple(args),
        declared=_declared(func, adjoint_params, args),
    )  # fmt: skip


def _stats(
    solve_stats: SolveStats | None,
    scheme: ReversibleScheme,
    bound: BoundField,
    t: Tensor,
    counts: tuple[int, ...] | None,
    final: State,
    floor: float,
    n_init: int,
) -> SolveStats:
    """The solve's :class:`SolveStats`: a fixed grid's counts, the evaluations before the steps
    (``n_init``) and those of the parasitic-mode check."""
    if solve_stats is None:
        assert counts is not None
        count = torch.tensor(sum(counts), dtype=torch.long, device=t.device)
        n_evals = count * scheme.evaluations_per_step + n_init
        solve_stats = SolveStats(n_evals, count, torch.zeros_like(count), count < 0)
    else:
        solve_stats = solve_stats._replace(n_f_evals=solve_stats.n_f_evals + n_init)
    if _mode.current() is not _mode.Mode.EXPORT:
        measure, n_evals = parasitic(scheme, bound, t, counts, final, floor)
        solve_stats = solve_stats._replace(
            n_f_evals=solve_stats.n_f_evals + n_evals,
            parasitic=measure if measure is not None else torch.zeros_like(t[0]),
        )
    return solve_stats


def _at_start(state: State, tuple_state: bool, stats: bool, flag: Tensor) -> Any:
    """The solution at a single time: ``y0`` stacked (a copy, differentiable), no evaluations."""
    trajectories = tuple(y.unsqueeze(0).clone() for y in state)
    zero = torch.zeros((), dtype=torch.long, device=flag.device)
    parasitic = torch.zeros((), dtype=state[0].dtype, device=flag.device)
    solve_stats = SolveStats(zero, zero, zero, zero.bool(), fallback=flag, parasitic=parasitic)
    out = trajectories if tuple_state else trajectories[0]
    return (out, solve_stats) if stats else out


def _declared(func: Any, adjoint_params: Any, args: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """The tensors a plain callable reads from its closure, as torchdiffeq's ``adjoint_params``
    lists them (those that require grad and are not in ``args``); a module's are its own."""
    if adjoint_params is None or isinstance(func, nn.Module):
        return ()
    listed = tuple(p for p in adjoint_params if p.requires_grad)
    return tuple(p for p in listed if not any(p is a for a in args))
