r"""``method="scipy_solver"``: SciPy's solvers behind torchdiffeq's signature, eager code only.

The forward solve is :func:`scipy.integrate.solve_ivp` (``options["solver"]``: ``"LSODA"`` by
default as in torchdiffeq, or ``"RK45"``, ``"RK23"``, ``"DOP853"``, ``"Radau"``, ``"BDF"``) on
the flattened state, with the field called under ``no_grad``; it runs on the host, outside
autograd, so nothing of it can be replayed. The gradient is the **continuous adjoint** (Pontryagin;
Chen et al., "Neural Ordinary Differential Equations", NeurIPS 2018), solved backwards with the
same SciPy solver from each output time to the previous one:

.. math::

    \dot y = f(t, y), \qquad \dot a = -a^\top \partial_y f(t, y), \qquad
    \dot g_\theta = -a^\top \partial_\theta f(t, y),

with ``a`` jumping by the output cotangent at every output time, and
:math:`\partial L / \partial t_i = g_i \cdot f(t_i, y_i)` (``i > 0``),
:math:`\partial L / \partial t_0 = -a(t_0) \cdot f(t_0, y_0)` (``a`` before ``g_0`` is added).
Unlike the library's other methods (exact gradients of the discrete solve: Zhuang et al., "MALI",
ICLR 2021) this gradient is approximate, within the solver's tolerances; as MALI's reverse pass,
the backward solve rebuilds ``y`` in reverse time, and where it lands further than 100 times the
tolerance from the forward's outputs a :class:`~mali_func.ReconstructionWarning` says the gradient
is not to be trusted (``y`` is then reset to the forward's value at each output time).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..backends._mode import tracing, under_transform
from ..field._callbacks import ALL_NAMES, CallbackWarning
from ..field._captures import check_no_capture
from ..field._field import bind_field
from ..gradients._drift import ReconstructionWarning
from ._compat import _check_adjoint_params
from ._inputs import checked_field, settings_of, stacked_y0, torchdiffeq_inputs

OPTIONS = ("solver", "min_step", "max_step", "first_step")
"""The ``options`` keys of ``scipy_solver`` (those of :func:`scipy.integrate.solve_ivp`)."""
SOLVERS = ("LSODA", "RK45", "RK23", "DOP853", "Radau", "BDF")
DRIFT_LIMIT = 100.0
"""How many tolerances the backward solve's rebuilt ``y`` may land from the forward's outputs."""


class _Problem:
    """The field and its inputs flattened into one vector, as SciPy takes them."""

    def __init__(
        self,
        func: Callable[..., Any],
        y0: tuple[Tensor, ...],
        args: tuple[Tensor, ...],
        tuple_state: bool,
        settings: dict[str, Any],
    ) -> None:
        self.func, self.args, self.tuple_state, self.settings = func, args, tuple_state, settings
        self.field = checked_field(func, y0, tuple_state, args)
        self.shapes = [y.shape for y in y0]
        self.sizes = [y.numel() for y in y0]
        self.dtype, self.device = y0[0].dtype, y0[0].device

    def pack(self, parts: Sequence[Tensor]) -> np.ndarray:
        flat = torch.cat([p.detach().reshape(-1) for p in parts]).cpu()
        return flat.to(torch.complex128 if flat.is_complex() else torch.float64).numpy()

    def unpack(self, z: np.ndarray) -> tuple[Tensor, ...]:
        flat = torch.as_tensor(np.asarray(z)).to(self.device, self.dtype)
        return tuple(p.reshape(s) for p, s in zip(flat.split(self.sizes), self.shapes))

    def call(self, t: Tensor, y: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """The field at ``(t, y)`` (its first value checked against ``y0``)."""
        return self.field(t, y)

    def time(self, s: float) -> Tensor:
        return torch.tensor(s, dtype=self.dtype, device=self.device)

    def solve(
        self,
        rhs: Callable[[float, np.ndarray], np.ndarray],
        z0: np.ndarray,
        span: tuple[float, float],
        t_eval: np.ndarray | None,
        tols: tuple[float, float],
    ) -> Any:
        from scipy.integrate import solve_ivp

        extra = {k: v for k, v in self.settings.items() if k != "solver"}
        sol = solve_ivp(
            rhs,
            span,
            z0,
            method=self.settings.get("solver", "LSODA"),
            t_eval=t_eval,
            rtol=tols[0],
            atol=tols[1],
            **extra,
        )
        if not sol.success:
            raise RuntimeError(
                f"scipy_solver ({self.settings.get('solver', 'LSODA')}) failed on "
                f"[{span[0]:.6g}, {span[1]:.6g}]: {sol.message}"
            )
        return sol


def _forward(
    problem: _Problem, t: Tensor, y0: tuple[Tensor, ...], tols: tuple[float, float]
) -> tuple[Tensor, ...]:
    times = t.detach().cpu().to(torch.float64).numpy()

    def rhs(s: float, z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return problem.pack(problem.call(problem.time(s), problem.unpack(z)))

    sol = problem.solve(rhs, problem.pack(y0), (times[0], times[-1]), times, tols)
    columns = [problem.unpack(sol.y[:, i]) for i in range(len(times))]
    return tuple(torch.stack([c[k] for c in columns]) for k in range(len(y0)))


def _adjoint_rhs(problem: _Problem, params: tuple[Tensor, ...]) -> Callable[..., np.ndarray]:
    n = sum(problem.sizes)

    def rhs(s: float, z: np.ndarray) -> np.ndarray:
        y = tuple(c.requires_grad_() for c in problem.unpack(z[:n]))
        a = problem.unpack(z[n : 2 * n])
        with torch.enable_grad():
            f = problem.call(problem.time(s), y)
            grads = torch.autograd.grad(f, (*y, *params), a, allow_unused=True)
        grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, (*y, *params))]
        return np.concatenate([problem.pack(f), -problem.pack(grads)])

    return rhs


def _backward(
    problem: _Problem,
    t: Tensor,
    ys: tuple[Tensor, ...],
    cots: tuple[Tensor, ...],
    params: tuple[Tensor, ...],
    tols: tuple[float, float],
    want_t: bool,
) -> Any:
    times, n = t.detach().cpu().to(torch.float64).numpy(), sum(problem.sizes)
    rhs, drift = _adjoint_rhs(problem, params), 0.0
    g_t = torch.zeros_like(t) if want_t else None
    a = problem.pack([c[-1] for c in cots])
    g_p = np.zeros(sum(p.numel() for p in params), dtype=a.dtype)
    for i in range(len(times) - 1, 0, -1):
        y_i = problem.pack([y[i] for y in ys])
        if g_t is not None:
            with torch.no_grad():
                f_i = problem.pack(problem.call(problem.time(times[i]), problem.unpack(y_i)))
            g_t[i] = float(np.real(np.vdot(problem.pack([c[i] for c in cots]), f_i)))
        z = problem.solve(
            rhs, np.concatenate([y_i, a, g_p]), (times[i], times[i - 1]), None, tols
        ).y[:, -1]
        y_prev = problem.pack([y[i - 1] for y in ys])
        scale = tols[1] + tols[0] * np.abs(y_prev)
        drift = max(drift, float(np.max(np.abs(z[:n] - y_prev) / scale)))
        a, g_p = z[n : 2 * n], z[2 * n :]
        if g_t is not None and i == 1:
            with torch.no_grad():
                f_0 = problem.pack(problem.call(problem.time(times[0]), problem.unpack(y_prev)))
            g_t[0] = -float(np.real(np.vdot(a, f_0)))
        a = a + problem.pack([c[i - 1] for c in cots])
    if drift > DRIFT_LIMIT:
        message = (
            f"scipy_solver's adjoint (backward) solve rebuilt y {drift:.3g} tolerances away "
            "from the forward solution: its gradient (the continuous adjoint) may be "
            "inaccurate; use method='dopri5' or 'tsit5' for the exact gradient of the discrete "
            "solve, or smaller adjoint_rtol/adjoint_atol"
        )
        warnings.warn(ReconstructionWarning(message), stacklevel=2)
    return problem.unpack(a), g_t, _split(torch.as_tensor(g_p), params)


def _split(flat: Tensor, params: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    parts = flat.split([p.numel() for p in params]) if params else ()
    return tuple(g.to(p.dtype).reshape(p.shape) for g, p in zip(parts, params))


class _ScipySolve(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, problem: _Problem, tols: Any, t: Tensor, n_y: int, *leaves: Tensor
    ) -> Any:
        ys = _forward(problem, t, leaves[:n_y], tols[0])
        ctx.problem, ctx.tols, ctx.n_y = problem, tols, n_y
        ctx.save_for_backward(t, *ys, *leaves[n_y:])
        return ys

    @staticmethod
    def backward(ctx: Any, *cots: Tensor | None) -> Any:
        t, *saved = ctx.saved_tensors
        ys, params = tuple(saved[: ctx.n_y]), tuple(saved[ctx.n_y :])
        cots = tuple(torch.zeros_like(y) if c is None else c for c, y in zip(cots, ys))
        g_y, g_t, g_p = _backward(
            ctx.problem, t, ys, cots, params, ctx.tols[1], ctx.needs_input_grad[2]
        )
        return (None, None, g_t, None, *g_y, *g_p)


def scipy_odeint(
    func: Callable[..., Any],
    y0: Any,
    t: Any,
    rtol: float,
    atol: float,
    options: Mapping[str, Any] | None,
    *,
    adjoint_params: Any = None,
    args: Sequence[Tensor] = (),
    **rest: Any,
) -> Any:
    """``odeint_adjoint(..., method="scipy_solver")``: see the module docstring."""
    if tracing() or under_transform():
        raise RuntimeError(
            "method='scipy_solver' runs SciPy on the host: eager code only, not "
            "under torch.compile, export or torch.func transforms; use "
            "method='dopri5' or 'tsit5'"
        )
    try:
        import scipy.integrate  # noqa: F401
    except ImportError as missing:
        raise ImportError(
            "method='scipy_solver' needs SciPy: pip install 'mali-func[scipy]'"
        ) from missing
    adjoint_tols = (rest.pop("adjoint_rtol", None), rest.pop("adjoint_atol", None))
    if "event_fn" in rest:
        raise ValueError(
            "event_fn with method='scipy_solver' is not supported (nor in torchdiffeq); use "
            "method='dopri5' or 'tsit5'"
        )
    for unused in ("adjoint_method", "adjoint_options"):
        rest.pop(unused, None)
    settings = settings_of("scipy_solver", options, OPTIONS, rest)
    if settings.get("solver", "LSODA") not in SOLVERS:
        raise ValueError(
            f"options['solver'] must be one of {list(SOLVERS)}, got {settings['solver']!r}"
        )
    state, tuple_state, t = torchdiffeq_inputs(func, y0, t, rtol, atol)
    if t.numel() == 1:
        return stacked_y0(state, tuple_state)
    _warn_callbacks(func)
    params = _params(func, adjoint_params, tuple(args), state, tuple_state, t)
    problem = _Problem(func, state, tuple(args), tuple_state, settings)
    forward_tols = (rtol, atol)
    backward_tols = (adjoint_tols[0] or rtol, adjoint_tols[1] or atol)
    ys = _ScipySolve.apply(problem, (forward_tols, backward_tols), t, len(state), *state, *params)
    return tuple(ys) if tuple_state else ys[0]


def _warn_callbacks(func: Any) -> None:
    found = [n for n in ALL_NAMES if callable(getattr(func, n, None))]
    if found:
        warnings.warn(
            f"func's {', '.join(found)}: scipy_solver takes its steps inside SciPy and calls no "
            "step callbacks; use method='dopri5' or 'tsit5' to have them called",
            CallbackWarning,
            stacklevel=3,
        )


def _params(
    func: Any,
    listed: Any,
    args: tuple[Tensor, ...],
    state: tuple[Tensor, ...],
    tuple_state: bool,
    t: Tensor,
) -> tuple[Tensor, ...]:
    """The tensors the adjoint differentiates: ``adjoint_params`` if given, else a module's
    parameters; then ``args``. A plain function that reads an unlisted tensor requiring grad is
    refused, as in the library's other methods (:func:`check_no_capture`)."""
    _check_adjoint_params(listed)
    if listed is not None:
        return (*listed, *args)
    if isinstance(func, nn.Module):
        return (*(p for p in func.parameters() if p.requires_grad), *args)
    bound = bind_field(func, tuple_state=tuple_state, n_state=len(state), args=args)
    check_no_capture(bound, t[0].detach(), state)
    return args


__all__ = ["OPTIONS", "SOLVERS", "scipy_odeint"]
