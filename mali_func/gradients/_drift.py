"""Reporting how far the reverse reconstruction drifted from the forward trajectory.

MALI rebuilds the forward trajectory backwards in time; in exact arithmetic it lands on the initial
state, in floating point it lands near it. The engine keeps the initial state (constant memory) and
measures the relative reconstruction error

    err = max_i  max|x_i^rebuilt - x_i| / (1 + max|x_i|)

over the components ``x_i`` of the initial extended state. A large ``err`` means the gradient was
computed along a trajectory other than the forward one and may be untrustworthy.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from ..backends._mode import host_view, tracing


class ReconstructionWarning(UserWarning):
    """The MALI reverse pass drifted further from the forward trajectory than allowed."""


class FallbackWarning(ReconstructionWarning):
    """A MALI backward failed its reconstruction check, and its gradient was recomputed exactly
    by checkpointing the forward's own steps (``stats.fallback`` is set)."""


class DriftMonitor:
    """Receives the reconstruction error of the backward passes of the solves it is given to.

    Pass one to :func:`mali_func.odeint` (``monitor=...``); after ``loss.backward()``,
    :attr:`error` holds the relative reconstruction error (see the module docs). The error travels
    back as the gradient of a private scalar leaf, so it works in eager and compiled code alike. It
    is filled by ``.backward()``, not by ``torch.autograd.grad(loss, inputs)`` (which returns only
    the gradients asked for) nor under :mod:`torch.func` transforms. Errors of several solves
    sharing one monitor in one backward pass add up.
    """

    def __init__(
        self, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
    ) -> None:
        leaf = torch.zeros((), dtype=dtype, device=device, requires_grad=True)
        self._probes: dict[tuple[torch.dtype, torch.device], Tensor] = {
            (leaf.dtype, leaf.device): leaf
        }
        self._last: Tensor | None = None

    def probe(self, like: Tensor) -> Tensor:
        """The scalar leaf whose gradient receives the error, on ``like``'s dtype and device.

        In eager code this also clears the previous error. Under ``torch.compile`` the leaf must
        exist already (construct the monitor with the solve's ``dtype`` and ``device``) and errors
        add up over backward passes until :meth:`reset`.
        """
        key = (like.dtype, like.device)
        leaf = self._probes.get(key)
        if leaf is None:
            leaf = torch.zeros((), dtype=like.dtype, device=like.device, requires_grad=True)
            self._probes[key] = leaf
        if not tracing():
            leaf.grad = None
        self._last = leaf
        return leaf

    def reset(self) -> None:
        """Forget the errors received so far."""
        for leaf in self._probes.values():
            leaf.grad = None

    @property
    def error(self) -> Tensor | None:
        """Relative reconstruction error of the last backward pass, or ``None`` before one."""
        return None if self._last is None else self._last.grad

    def __repr__(self) -> str:
        return f"DriftMonitor(error={self.error})"


def default_reconstruction_tol(dtype: torch.dtype) -> float:
    """``reconstruction_tol="auto"``: ``1e-7`` for float64, ``1e-3`` for lower precisions.

    A healthy reconstruction lands within about ten ulps of the initial state (float64: 1e-15,
    float32: 1e-6, measured on ALF, reversible Heun and the couplings); a float64 drift of 1e-4
    (the automatic coupling on a contracting field at rtol 1e-7) already costs the gradient
    five digits, so float64 is held to far less than float32.
    """
    return 1e-7 if dtype == torch.float64 else 1e-3


def reconstruction_error(rebuilt: tuple[Tensor, ...], kept: tuple[Tensor, ...]) -> Tensor:
    """The relative error of the module docs, as a 0-dim tensor (no host sync)."""
    worst: Tensor | None = None
    for r, k in zip(rebuilt, kept):
        if k.numel() == 0:  # an empty batch rebuilds exactly
            e = k.new_zeros(())
        else:
            e = (r - k).abs().amax() / (1 + k.abs().amax())
        worst = e if worst is None else torch.maximum(worst, e)
    assert worst is not None
    return worst


def warn_if_drifted(error: Tensor, tol: float | None) -> None:
    """Warn with :class:`ReconstructionWarning` when ``error > tol``.

    One host read, in eager code, also under :mod:`torch.func` transforms (the worst sample of a
    ``vmap``); not while tracing, where the :class:`DriftMonitor` is the only signal.
    """
    seen = None if tol is None else host_view(error)
    if tol is None or seen is None:
        return
    value = float(seen.detach().max())
    if not value <= tol:  # NaN drift warns too
        warnings.warn(
            f"MALI reconstruction drifted: relative error {value:.3e} exceeds "
            f"reconstruction_tol={tol:g}, so the gradient may be inaccurate. Use eta closer to "
            "1 (ALF), a fixed coupling nearer 1 - h|rate| (Runge-Kutta methods), other steps, "
            "float64, gradient='checkpoint' (the exact gradient in bounded memory) or "
            "gradient='backprop'.",
            ReconstructionWarning,
            stacklevel=2,
        )


def failed(error: Tensor, tol: float | None) -> Tensor:
    """The per-sample failure mask of the check: ``error > tol``, or not finite (``tol=None``:
    only a non-finite error fails)."""
    return ~(error <= (math.inf if tol is None else tol))


def check_reconstruction(error: Tensor, tol: float | None, fallback: bool) -> Tensor | None:
    """Whether a MALI backward needs its fallback: the per-sample failure mask (``error > tol``
    or non-finite), or ``None`` when every sample passed, while tracing, or when there is no
    fallback (then a drift only warns, with :class:`ReconstructionWarning`)."""
    if not fallback:
        warn_if_drifted(error, tol)
        return None
    seen = host_view(error)
    if seen is None or not bool(failed(seen.detach(), tol).any()):
        return None
    return failed(error, tol)


class Fallback:
    """What a MALI solve's backward reports when it recomputes its gradient by checkpointing:
    one :class:`FallbackWarning` and the flag ``stats.fallback`` (a 0-dim bool tensor of the
    solve's :class:`~mali_func.SolveStats`, set in place by the backward pass)."""

    def __init__(self, flag: Tensor, traced: bool = False) -> None:
        self.flag = flag
        self.traced = traced  # a compiled adaptive solve: torch.cond, no warning, no flag

    def report(self, error: Tensor, tol: float | None, what: str) -> None:
        seen = host_view(error)
        worst = float("nan") if seen is None else float(seen.detach().max())
        self.flag.fill_(True)
        limit = "non-finite" if tol is None else f"above reconstruction_tol={tol:g}"
        warnings.warn(
            f"{what}: the MALI reconstruction failed (relative error {worst:.3e}, {limit}), so "
            "the gradient was recomputed exactly by checkpointing the forward's steps (one more "
            "forward pass and the checkpoint plan's memory; stats.fallback is set). The raw MALI "
            "gradient: fallback=False. To keep MALI's constant memory: float64, more or "
            "smaller steps, or a method that reconstructs stably (README, Choosing a method).",
            FallbackWarning,
            stacklevel=3,
        )
