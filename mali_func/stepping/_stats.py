"""The counts an ODE solve reports (``odeint(..., stats=True)``): evaluations, steps, failure, and
the trust flags (the gradient's fallback, the solution's parasitic mode)."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class SolveStats(NamedTuple):
    """Counts of one solve, as tensors (per sample under ``vmap``).

    ``n_f_evals`` counts the field evaluations of the forward solve: the checks of the field at
    ``t0`` and the scheme's start (:meth:`~mali_func.schemes.ReversibleScheme.init`), the
    first-step estimate, and ``evaluations_with_error`` (else ``evaluations_per_step``) for every
    step tried (under ``vmap`` each sample's own): the same count in every mode. Not counted:
    the backward pass, the replay of the accepted steps with autograd by an eager
    ``gradient="backprop"`` adaptive solve, and the trials an eager solve runs past its end
    before it reads its stop flag (:meth:`mali_func.backends._loops.PythonLoops.while_`).

    ``fallback`` and ``parasitic`` report on the gradient's and the solution's trustworthiness.
    """

    n_f_evals: Tensor
    n_accepted: Tensor
    n_rejected: Tensor
    failed: Tensor
    fallback: Tensor | None = None
    """Set (in place) by the backward pass of an eager MALI solve whose reconstruction check
    failed and whose gradient was therefore recomputed by checkpointing; ``False`` until then
    (and always for other gradients, and for compiled solves, which fall back inside the graph
    without setting it)."""
    parasitic: Tensor | None = None
    """The size of the scheme's parasitic mode at the end of the solve against the solution's
    (:mod:`mali_func.stepping._parasitic`): the coupled pair's relative disagreement, or fixed-step
    ALF's velocity mismatch; 0 where nothing is measured (other schemes, adaptive ALF, whose error
    estimate holds it to the tolerances); not measured under export (``None``)."""
