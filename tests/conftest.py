"""Shared fixtures: small vector fields in float64, the dtype every gradient comparison uses."""

from __future__ import annotations

import os

import pytest
import torch
import torch._dynamo
from hypothesis import settings
from torch import Tensor, nn

# CI runs the property tests on a fixed example sequence, so a red run is reproducible.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


class MLPField(nn.Module):
    """A small time-dependent MLP field ``f(t, y) = W2 tanh(W1 y + b1 + t c) + b2``."""

    def __init__(self, dim: int = 3, hidden: int = 16, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.l1 = nn.Linear(dim, hidden, dtype=dtype)
        self.l2 = nn.Linear(hidden, dim, dtype=dtype)
        self.c = nn.Parameter(0.3 * torch.randn(hidden, dtype=dtype))
        self.calls = 0

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        self.calls += 1
        return self.l2(torch.tanh(self.l1(y) + t * self.c))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def field() -> MLPField:
    return MLPField()


@pytest.fixture
def fresh_dynamo():
    """Compile tests start and end with dynamo's caches and counters cleared."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# Test tiers by file: ``make test-fast`` leaves these out (``-m "not slow and not compile"``).
COMPILE_FILES = ("test_all_modes", "test_compile", "test_compile_adaptive",
                 "test_compiled_transforms")  # fmt: skip
SLOW_FILES = ("test_digits_example", "test_export_adaptive", "test_ddp", "test_opacus",
              "test_export", "test_properties", "test_exported_programs",
              "test_property_families")  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its tier (``compile``: torch.compile and inductor; ``slow``: examples,
    exports, subprocesses, property tests)."""
    for item in items:
        name = item.path.stem
        if name in COMPILE_FILES or "compile" in item.name:
            item.add_marker(pytest.mark.compile)
        if name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)
