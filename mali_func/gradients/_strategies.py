"""How a solve is differentiated, as objects: :class:`MALI`, :class:`Checkpoint` and
:class:`Backprop`.

Each object carries the options of its own strategy only, so an option cannot be given to a
strategy that ignores it. The strings ``"mali"``, ``"checkpoint"`` and ``"backprop"`` stay as
shorthands for the objects with their defaults, and the strategy's options stay accepted as
keywords of :func:`mali_func.odeint` (``reconstruction_tol=``, ``fallback=``, ``monitor=``,
``checkpoints=``); giving a keyword and an object that sets the same option raises.

* :class:`MALI` (Zhuang et al., ICLR 2021): the backward rebuilds the forward steps with the
  scheme's inverse (constant memory), checks the rebuilt initial state against the kept one and,
  where the check fails, recomputes the gradient exactly by checkpointing (the fallback);
* :class:`Checkpoint`: stored states and recomputation (Griewank's recursive checkpointing),
  exact for any scheme, memory bounded by ``budget``;
* :class:`Backprop`: autograd through every step, memory linear in the steps: the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from ._drift import DriftMonitor


@dataclass(frozen=True)
class MALI:
    """The MALI gradient: constant memory, verified after every backward pass.

    Args:
        reconstruction_tol: the largest relative error of the rebuilt initial state before the
            backward falls back; ``"auto"`` (a dtype-dependent default) or ``None`` (only a
            non-finite reconstruction fails).
        fallback: recompute a failed backward exactly by checkpointing (``True``) or return the
            raw MALI gradient with a :class:`~mali_func.ReconstructionWarning` (``False``).
        monitor: a :class:`~mali_func.DriftMonitor` that receives the reconstruction error.
    """

    name: ClassVar[str] = "mali"
    reconstruction_tol: float | Literal["auto"] | None = "auto"
    fallback: bool = True
    monitor: DriftMonitor | None = None

    def keywords(self) -> dict[str, Any]:
        return {"gradient": self.name, "reconstruction_tol": self.reconstruction_tol,
                "fallback": self.fallback, "monitor": self.monitor}  # fmt: skip


@dataclass(frozen=True)
class Checkpoint:
    """The exact gradient from stored states and recomputation, for any scheme.

    Args:
        budget: the most states stored; by default ``2 ceil(sqrt(N))`` for ``N`` steps (one
            recomputation).
    """

    name: ClassVar[str] = "checkpoint"
    budget: int | None = None

    def keywords(self) -> dict[str, Any]:
        return {"gradient": self.name, "checkpoints": self.budget}


@dataclass(frozen=True)
class Backprop:
    """Autograd through every step (memory linear in the steps): the reference gradient."""

    name: ClassVar[str] = "backprop"

    def keywords(self) -> dict[str, Any]:
        return {"gradient": self.name}


Gradient = MALI | Checkpoint | Backprop
