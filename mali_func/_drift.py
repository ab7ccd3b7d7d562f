"""Reporting how far the reverse reconstruction drifted from the forward trajectory.

MALI rebuilds the forward trajectory backwards in time; in exact arithmetic it lands on the initial
state, in floating point it lands near it. The engine keeps the initial state (constant memory) and
measures the relative reconstruction error

    err = max_i  max|x_i^rebuilt - x_i| / (1 + max|x_i|)

over the components ``x_i`` of the initial extended state. A large ``err`` means the gradient was
computed along a trajectory other than the forward one and may be untrustworthy.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ._mode import host_view, tracing


class ReconstructionWarning(UserWarning):
    """The MALI reverse pass drifted further from the forward trajectory than allowed."""


class CouplingWarning(UserWarning):
    """The two states of a reversible Runge-Kutta coupling ended far apart: the forward solution
    is unreliable (the coupling let its parasitic mode grow)."""


COUPLING_TOL = 0.01
"""Largest relative disagreement ``|y - z| / (|y| + |z|)`` of a coupled solve's final pair
before :class:`CouplingWarning` (healthy solves measure 1e-9 to 1e-3; README)."""


def warn_if_decoupled(pair: tuple[Tensor, Tensor] | None, where: object) -> None:
    """Warn with :class:`CouplingWarning` when the final ``(y, z)`` of a coupled solve disagree
    by more than :data:`COUPLING_TOL` (eager only: one host read; the worst sample of a vmap).
    ``where`` (the scheme) is named in the message."""
    if pair is None or tracing():
        return
    y, z = pair
    gap = (y - z).flatten().norm() / (y.flatten().norm() + z.flatten().norm()).clamp_min(1e-300)
    seen = host_view(gap.detach())
    if seen is None:
        return
    value = float(seen.max())
    if not value <= COUPLING_TOL:
        warnings.warn(
            f"{where!r}: the coupled pair (y, z) ends more than {COUPLING_TOL:.0%} apart "
            "(relative): the coupling's parasitic mode grew, so the solution is "
            "unreliable. The field contracts faster than the coupling was set for (coupling="
            "'auto' measures the contraction at t[0] only): take more or smaller steps (a "
            "smaller rtol), set a fixed coupling such as 0.9, or use the plain step "
            "(coupling=None) with gradient='checkpoint'.",
            CouplingWarning,
            stacklevel=3,
        )


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
