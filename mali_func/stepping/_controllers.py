"""What judges a trial step: the error norm, the first step and the step-size controllers.

The error estimate comes from the scheme (:meth:`ReversibleScheme.step_with_error`; ALF's is the
MALI paper's ``e = h (u - v)``), measured with the mixed RMS norm over every element of the
solution,

    err = sqrt(mean((e / (atol + rtol * max(|y|, |y'|)))^2)),

and judged by a controller (:class:`Controller`): ``init(h0)`` gives its carried memory,
``propose(memory, err, h, order)`` says whether the trial of size ``|h|`` is accepted, the next
size, and the new memory. Controllers are pure tensor code without host reads, so one runs per
sample under :func:`torch.func.vmap`, inside a compiled ``while_loop`` and in an exported ONNX
``Loop``. The default, :class:`IntegralController`, accepts when ``err <= 1`` and proposes
``h * clip(safety * err^(-1/(q+1)), min_factor, max_factor)`` for an estimate of order ``q``
(ALF: ``q = 1``, the paper package's ``err^(-1/2)``), with no growth right after a rejection
(Hairer, Norsett & Wanner, *Solving ODEs I*, II.4). The first step is their estimate from two
field evaluations, or ``first_step``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ..schemes import Field, Params, State


@runtime_checkable
class Controller(Protocol):
    """Accepts or rejects a trial step and proposes the next step size (module docs)."""

    def init(self, h0: Tensor) -> tuple[Tensor, ...]:
        """The controller's own carried state (a tuple of tensors, possibly empty)."""
        ...

    def propose(
        self, memory: tuple[Tensor, ...], err: Tensor, h: Tensor, order: int
    ) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        """``(accept, h_next, memory)`` from the error norm ``err`` of a trial of size ``h``
        (positive), for an error estimate of order ``order``."""
        ...


def _root(x: Tensor, order: int) -> Tensor:
    """``x^(1/(order+1))``; for ``order = 1`` exactly ``sqrt``."""
    return x.sqrt() if order == 1 else x.pow(1.0 / (order + 1))


def _inverse_root(x: Tensor, order: int) -> Tensor:
    """``x^(-1/(order+1))``; for ``order = 1`` exactly ``rsqrt``."""
    return x.rsqrt() if order == 1 else x.pow(-1.0 / (order + 1))


@dataclass(frozen=True)
class IntegralController:
    """The classic controller (module docs); its memory is "the last trial was rejected".

    Args:
        safety: the factor in (0, 1) on the optimal step.
        min_factor: the lower bound of the step ratio, in (0, 1).
        max_factor: the upper bound of the step ratio, above 1.
    """

    safety: float = 0.9
    min_factor: float = 0.2
    max_factor: float = 10.0

    def __post_init__(self) -> None:
        for name in ("safety", "min_factor", "max_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
        if not 0 < self.safety < 1:
            raise ValueError(f"safety must lie in (0, 1), got {self.safety}")
        if not 0 < self.min_factor < 1 < self.max_factor < float("inf"):
            raise ValueError(
                "min_factor and max_factor must satisfy 0 < min_factor < 1 < max_factor < inf, "
                f"got {self.min_factor} and {self.max_factor}"
            )

    def init(self, h0: Tensor) -> tuple[Tensor, ...]:
        return (torch.zeros((), dtype=torch.bool, device=h0.device),)

    def propose(
        self, memory: tuple[Tensor, ...], err: Tensor, h: Tensor, order: int
    ) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        accept = err <= 1
        factor = self.safety * _inverse_root(err.clamp_min(1e-10), order)
        cap = torch.where(memory[0] | ~accept, 1.0, self.max_factor).to(factor.dtype)
        factor = torch.minimum(factor.clamp(min=self.min_factor), cap)
        factor = torch.where(torch.isfinite(err), factor, self.min_factor)
        return accept, h * factor, (~accept,)


def checked_proposal(
    controller: object, proposal: object, h: Tensor
) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """A controller's ``(accept, h_next, memory)`` checked for its types and shapes (no host
    read: every mode); a step that is not finite and positive is turned into NaN, which fails
    the solve with a message naming the controller (:func:`mali_func.stepping._control.control`)."""
    name = type(controller).__name__
    if not isinstance(proposal, tuple) or len(proposal) != 3:
        raise TypeError(
            f"controller {name}.propose must return (accept, h_next, memory), got "
            f"{type(proposal).__name__}"
        )
    accept, h_next, memory = proposal
    if not isinstance(accept, Tensor) or accept.dtype != torch.bool or accept.shape != h.shape:
        got = f"{accept.dtype} of shape {tuple(accept.shape)}" if isinstance(
            accept, Tensor) else type(accept).__name__  # fmt: skip
        raise TypeError(
            f"controller {name}.propose returned accept = {got}; expected a bool tensor shaped "
            f"like h {tuple(h.shape)} (e.g. err <= 1)"
        )
    if not isinstance(h_next, Tensor) or not h_next.is_floating_point() or h_next.shape != h.shape:
        got = f"{h_next.dtype} of shape {tuple(h_next.shape)}" if isinstance(
            h_next, Tensor) else f"{type(h_next).__name__} {h_next!r}"  # fmt: skip
        raise TypeError(
            f"controller {name}.propose returned h_next = {got}; expected a floating tensor "
            f"shaped like h {tuple(h.shape)} (e.g. h * factor)"
        )
    if not isinstance(memory, tuple) or not all(isinstance(m, Tensor) for m in memory):
        raise TypeError(
            f"controller {name}.propose must return its memory as a tuple of tensors, got "
            f"{type(memory).__name__}"
        )
    h_next = h_next.to(h.dtype)
    return accept, torch.where(torch.isfinite(h_next) & (h_next > 0), h_next, torch.nan), memory


@dataclass(frozen=True)
class Tolerances:
    """An adaptive solve's settings (checked by :func:`mali_func._checks.check_adaptive`)."""

    rtol: float  # 0-dim tensors while torch.compile traces (check_adaptive)
    atol: float
    max_steps: int
    first_step: float | None
    controller: Controller = field(default_factory=IntegralController)
    check_every: int = 8
    min_step: float = 0.0  # a step this small is accepted whatever its error
    max_step: float = math.inf
    norm: Callable[[State], Tensor] | None = None  # of the scaled error; None: rms_norm
    interpolate: bool = False  # interior output times from the dense output, not landed on


def _wide(x: Tensor) -> Tensor:
    """Half precisions measured in float32: their squares overflow float16 at 256."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def error_norm(tol: Tolerances, err: State, before: State, after: State) -> Tensor:
    """The error of a step against the tolerances: :func:`rms_norm`, or the user's ``norm`` of
    the scaled error."""
    if tol.norm is None:
        return rms_norm(err, before, after, tol.rtol, tol.atol)
    scaled = tuple(
        e / (tol.atol + tol.rtol * torch.maximum(a.abs(), b.abs()))
        for e, a, b in zip(err, before, after)
    )
    value = tol.norm(scaled)
    if not isinstance(value, Tensor) or value.ndim != 0:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise TypeError(f"norm must return a scalar tensor (0-dim), got {shape}")
    return value


def rms_norm(err: State, before: State, after: State, rtol: float, atol: float) -> Tensor:
    """The mixed RMS norm of the module docs (float32 at least)."""
    total: Tensor | None = None
    count = 0
    for e, a, b in zip(err, before, after):
        e, a, b = _wide(e), _wide(a), _wide(b)
        s = (e / (atol + rtol * torch.maximum(a.abs(), b.abs()))).square().sum()
        total = s if total is None else total + s
        count += e.numel()
    assert total is not None
    # sym_max, not max: Python's max on a symbolic size picks one while non-strict export traces
    # a while_loop body (the norm then divided by 1, not the element count).
    return (total / torch.sym_max(count, 1)).sqrt()


def initial_step(
    field: Field, t0: Tensor, y0: State, params: Params, tol: Tolerances, order: int
) -> Tensor:
    """Hairer-Wanner first step (two field evaluations), or ``tol.first_step`` (none)."""
    if tol.first_step is not None:
        return torch.zeros_like(t0) + tol.first_step
    f0 = field(t0, y0, params)
    y0, f0 = tuple(_wide(y) for y in y0), tuple(_wide(f) for f in f0)
    scale = tuple(tol.atol + tol.rtol * y.abs() for y in y0)
    d0 = rms_norm(tuple(y / s for y, s in zip(y0, scale)), y0, y0, 0.0, 1.0)
    d1 = rms_norm(tuple(f / s for f, s in zip(f0, scale)), y0, y0, 0.0, 1.0)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
    like = t0.dtype
    h0 = h0.to(like)
    f1 = field(t0 + h0, tuple((y + h0 * f).to(like) for y, f in zip(y0, f0)), params)
    f1 = tuple(_wide(f) for f in f1)
    d2 = rms_norm(tuple((a - b) / s for a, b, s in zip(f1, f0, scale)), y0, y0, 0.0, 1.0) / h0
    dmax = torch.maximum(d1, d2)
    h1 = torch.where(
        dmax <= 1e-15, torch.clamp(h0 * 1e-3, min=1e-6), _root(0.01 / dmax.clamp_min(1e-300), order)
    )
    return torch.minimum(100 * h0, h1.to(h0.dtype)).to(like)
