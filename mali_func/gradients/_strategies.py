"""How a solve is differentiated, as objects that own their branch of the solve: :class:`MALI`,
:class:`Checkpoint` and :class:`Backprop`.

Each object carries the options of its own strategy only, so an option cannot be given to a
strategy that ignores it, and checks them when it is made. The strings ``"mali"``,
``"checkpoint"`` and ``"backprop"`` stay as shorthands for the objects with their defaults, and
the strategy's options stay accepted as keywords of :func:`mali_func.odeint`
(``reconstruction_tol=``, ``fallback=``, ``monitor=``, ``checkpoints=``;
:mod:`mali_func.interop._shorthands`); giving a keyword and an object that sets the same option
raises. The engine asks the object, never its name: what the solve needs (an inverse, a replayable
field), which tensors it differentiates, how a compiled grid is laid out, and finally
:meth:`solve` runs the strategy's own gradient path over a :class:`Problem`.

* :class:`MALI` (Zhuang, Dvornek, Tatikonda & Duncan, "MALI: A memory efficient and reverse
  accurate integrator for Neural ODEs", ICLR 2021): the backward rebuilds the forward steps with
  the scheme's inverse, ``z_n = Psi_h^{-1}(z_{n+1})`` (constant memory), checks the rebuilt
  initial state against the kept one and, where the check fails, recomputes the gradient exactly
  by checkpointing (the fallback);
* :class:`Checkpoint`: stored states and recomputation (Griewank's recursive checkpointing),
  exact for any scheme, memory bounded by ``budget``;
* :class:`Backprop`: autograd through every step, memory linear in the steps: the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from ..backends import _mode
from ..backends._loops import PYTHON
from ..stepping._steps import brief_repr
from ._checkpoint import Thinned, check_traced_plan
from ._drift import DriftMonitor, Fallback, default_reconstruction_tol
from ._forward_mode import solve
from ._problem import Problem, through_steps
from ._solve import FIXED_BOUND, Spec

Layout = Literal["count", "static", "unrolled"]
"""How a compiled fixed grid is traced: a tensor step count in one loop (a new count does not
compile again), static counts (shapes of the checkpoint levels), or the plain loop unrolled."""


class _Strategy:
    """What every strategy answers; the defaults are the engine's (MALI's and checkpointing's)."""

    def __repr__(self) -> str:
        return brief_repr(self)

    name: ClassVar[str]
    rebuilds: ClassVar[bool] = False
    """The backward inverts the steps: the scheme needs an inverse, the field must replay."""
    engine: ClassVar[bool] = True
    """Differentiated by the solve's own autograd Function, which sees only the tensors passed
    to it (so a module attribute that requires grad is refused)."""

    def check_compiled(self, *, transform: bool, most: int, adaptive: bool) -> None:
        """Refuse what a compiled solve cannot do (``most``: the steps planned for)."""

    def compiled_layout(self, counts: tuple[int, ...]) -> Layout:
        """One loop with a tensor count for a uniform grid; unrolled steps otherwise (while_loop's
        own autograd in torch 2.13 is wrong when one carry feeds another, e.g. ``(z, logp)``)."""
        return "count" if all(s == counts[0] for s in counts) else "unrolled"

    def recovery(self, flag: Tensor, counts: tuple[int, ...] | None) -> Fallback | None:
        """How a failed reconstruction is recovered; ``None``: it is not."""
        return None

    def probe(self, like: Tensor) -> Tensor | None:
        """The leaf whose gradient receives the reconstruction error, if monitored."""
        return None

    def spec(self, problem: Problem) -> Spec:
        """The autograd Function's configuration for this strategy."""
        return problem.spec()

    def solve(self, problem: Problem) -> tuple[Any, Any, Any]:
        """The trajectories, the adaptive stats and the final state, differentiated this way."""
        return solve(self.spec(problem), problem.t, problem.n, problem.probe, problem.start,
                     problem.params)  # fmt: skip


@dataclass(frozen=True, repr=False)
class MALI(_Strategy):
    """The MALI gradient: constant memory, verified after every backward pass.

    Args:
        reconstruction_tol: the largest relative error of the rebuilt initial state before the
            backward falls back; ``"auto"`` (``1e-7`` for float64, ``1e-3`` otherwise) or
            ``None`` (only a non-finite reconstruction fails).
        fallback: recompute a failed backward exactly by checkpointing (``True``) or return the
            raw MALI gradient with a :class:`~mali_func.ReconstructionWarning` (``False``).
        monitor: a :class:`~mali_func.DriftMonitor` that receives the reconstruction error.
    """

    name: ClassVar[str] = "mali"
    rebuilds: ClassVar[bool] = True
    reconstruction_tol: float | Literal["auto"] | None = "auto"
    fallback: bool = True
    monitor: DriftMonitor | None = None

    def __post_init__(self) -> None:
        tol = self.reconstruction_tol
        if tol is not None and not (isinstance(tol, str) and tol == "auto"):
            if isinstance(tol, bool) or not isinstance(tol, (int, float)):
                raise TypeError(
                    f"reconstruction_tol must be a positive number, 'auto' or None, got {tol!r}"
                )
            if not tol > 0:
                raise ValueError(f"reconstruction_tol must be positive, got {tol}")
        if not isinstance(self.fallback, bool):
            raise TypeError(f"fallback must be a bool, got {type(self.fallback).__name__}")
        if self.monitor is not None and not isinstance(self.monitor, DriftMonitor):
            raise TypeError(
                f"monitor must be a DriftMonitor or None, got {type(self.monitor).__name__}"
            )

    def tolerance(self, dtype: torch.dtype) -> float | None:
        """The reconstruction tolerance for a state of ``dtype``."""
        tol = self.reconstruction_tol
        return default_reconstruction_tol(dtype) if tol == "auto" else tol  # type: ignore[return-value]

    def recovery(self, flag: Tensor, counts: tuple[int, ...] | None) -> Fallback | None:
        """Eagerly a warning and ``flag``; inside a compiled graph ``torch.cond`` (not under a
        traced transform, whose loops are Python loops, nor for a fixed grid longer than
        :data:`~mali_func.gradients._solve.FIXED_BOUND` steps); never under export."""
        mode = _mode.current()
        if not self.fallback or mode is _mode.Mode.EXPORT:
            return None
        if mode is _mode.Mode.EAGER:
            return Fallback(flag)
        if _mode.under_transform() or (counts is not None and sum(counts) > FIXED_BOUND):
            return None
        return Fallback(flag, traced=True)

    def probe(self, like: Tensor) -> Tensor | None:
        return None if self.monitor is None else self.monitor.probe(like)

    def spec(self, problem: Problem) -> Spec:
        return problem.spec(reconstruction_tol=self.tolerance(problem.start[0].dtype),
                            fallback=problem.fallback)  # fmt: skip


@dataclass(frozen=True, repr=False)
class Checkpoint(_Strategy):
    """The exact gradient from stored states and recomputation, for any scheme.

    Args:
        budget: the most states stored, an int >= 1; by default ``2 ceil(sqrt(N))`` for ``N``
            steps (one recomputation).
    """

    name: ClassVar[str] = "checkpoint"
    budget: int | None = None

    def __post_init__(self) -> None:
        b = self.budget
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
            raise ValueError(f"checkpoints must be an int >= 1, got {b!r}")

    def check_compiled(self, *, transform: bool, most: int, adaptive: bool) -> None:
        if transform:
            raise NotImplementedError(
                "gradient='checkpoint' inside a torch.func transform (vmap, grad, jacrev) under "
                "torch.compile is not supported with torch 2.13 (its recomputation levels need "
                "while_loop, which has no torch.func rule there). Use gradient='mali' (constant "
                "memory) or gradient='backprop' inside the compiled transform, or run it eagerly"
            )
        check_traced_plan(most, self.budget, adaptive=adaptive)

    def compiled_layout(self, counts: tuple[int, ...]) -> Layout:
        return "static"  # level sizes are shapes (a new n_steps compiles again)

    def spec(self, problem: Problem) -> Spec:
        # The reconstruction tolerance is unused: the backward rebuilds nothing. Eager adaptive
        # solves keep level 0 in the forward pass (no replay to record it in the backward).
        eager = problem.loops is PYTHON and _mode.current() is _mode.Mode.EAGER
        keep = eager and problem.tol is not None and not _mode.under_transform()
        level0 = Thinned(self.budget) if keep else None
        return problem.spec(checkpoint=True, budget=self.budget, level0=level0)


@dataclass(frozen=True, repr=False)
class Backprop(_Strategy):
    """Autograd through every step (memory linear in the steps): the reference gradient."""

    name: ClassVar[str] = "backprop"
    engine: ClassVar[bool] = False

    def compiled_layout(self, counts: tuple[int, ...]) -> Layout:
        return "unrolled"  # exact, but compile time grows with the steps

    def solve(self, problem: Problem) -> tuple[Any, Any, Any]:
        if problem.loops is PYTHON:
            return through_steps(problem)
        # Compiled adaptive solves: the engine's Function over the same accepted steps, its
        # reverse unchecked (README, With torch.compile).
        return MALI(fallback=False).solve(problem)  # "auto": the dtype's default tolerance


Gradient = MALI | Checkpoint | Backprop

DEFAULT = MALI()
"""The default strategy."""

GRADIENTS: dict[str, type[MALI] | type[Checkpoint] | type[Backprop]] = {
    "mali": MALI, "checkpoint": Checkpoint, "backprop": Backprop,
}  # fmt: skip
"""The shorthand names of the strategies."""
