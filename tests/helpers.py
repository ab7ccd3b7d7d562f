"""Test helpers shared by several test files: fields, comparisons, loading the examples."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor, nn

F64 = torch.float64

REEVALUATING = [
    ("mali", {}),
    ("mali", {"method": "rk4"}),
    ("checkpoint", {"method": "rk4", "coupling": None}),
]
"""``(gradient, options)`` whose backward evaluates the field again (MALI with ALF and with the
coupled RK4, checkpointing the plain RK4 step): what a field with state or its own leaf must
survive."""
EXAMPLES = Path(__file__).parents[1] / "examples"


class SmoothField(nn.Module):
    """A time-dependent MLP field without Python side effects (loop bodies may have none)."""

    def __init__(self, dim: int = 2, hidden: int = 32, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.l1 = nn.Linear(dim, hidden, dtype=dtype)
        self.l2 = nn.Linear(hidden, dim, dtype=dtype)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self.l2(torch.tanh(self.l1(y)) * torch.cos(t))


class CNF(nn.Module):
    """A ``(z, logp)`` field: ``logp`` feeds nothing back (while_loop's autograd errs here)."""

    def __init__(self, field: nn.Module) -> None:
        super().__init__()
        self.field = field

    def forward(self, t: Tensor, y: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        dz = self.field(t, y[0])
        return dz, -(dz * y[0]).sum(-1)


def relative_error(x: Tensor, y: Tensor, floor: float = 1e-12) -> float:
    """``max|x - y| / max|y|`` (the scale floored at ``floor``)."""
    return ((x - y).abs().max() / y.abs().max().clamp_min(floor)).item()


def assert_close_all(
    a: Sequence[Tensor], b: Sequence[Tensor], rtol: float, floor: float = 1e-12
) -> None:
    """Every pair agrees to ``rtol`` relative to the largest entry of the reference ``b``."""
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        err = relative_error(x, y, floor)
        assert err < rtol, f"entry {i}: relative error {err:.3e} >= {rtol:.1e}"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
