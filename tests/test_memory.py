"""MALI saves a constant number of bytes for backward; backprop saves bytes linear in the steps."""

from __future__ import annotations

import tracemalloc

import pytest
import torch
from conftest import MLPField

from mali_func import odeint


def saved_bytes(field: MLPField, n_steps: int, gradient: str) -> int:
    """Bytes of the distinct tensors autograd keeps for backward during one solve."""
    seen: dict[tuple[int, int], int] = {}

    def pack(x: torch.Tensor) -> torch.Tensor:
        storage = x.untyped_storage()
        seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return x

    y0 = torch.randn(32, 3, dtype=torch.float64, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        ys = odeint(field, y0, [0.0, 1.0], n_steps=n_steps, gradient=gradient)
    ys[-1].sum().backward()
    return sum(seen.values())


@pytest.mark.parametrize("n", [10, 100])
def test_mali_saved_bytes_do_not_depend_on_the_step_count(field: MLPField, n: int) -> None:
    assert saved_bytes(field, n, "mali") == saved_bytes(field, 400, "mali")


def test_backprop_saved_bytes_grow_linearly(field: MLPField) -> None:
    b10, b20, b40 = (saved_bytes(field, n, "backprop") for n in (10, 20, 40))
    assert b20 - b10 > 0
    assert (b40 - b20) == pytest.approx(2 * (b20 - b10), rel=0.05)
    assert saved_bytes(field, 40, "mali") < b10


def test_python_memory_does_not_grow_with_the_number_of_steps() -> None:
    """No per-step objects: the grid computes each step's time from its index."""
    field = MLPField(dim=2, hidden=4)
    y0 = torch.randn(1, 2, dtype=torch.float64, requires_grad=True)

    def peak(n: int) -> int:
        tracemalloc.start()
        odeint(field, y0, [0.0, 1.0], n_steps=n)[-1].sum().backward()
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    peak(10)
    small, large = peak(1_000), peak(8_000)
    assert large - small < 64 * 1024, (small, large)
