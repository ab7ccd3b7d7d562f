"""Fit a spiral with a Neural ODE, the torchdiffeq way: only the import differs.

The data are the trajectory of ``y' = (y^3) A``, ``A = [[-0.1, 2], [-2, -0.1]]``, ``y(0) = (2, 0)``
on 1,000 times in [0, 25] (the problem of torchdiffeq's ``examples/ode_demo.py``; our own code).
A field ``f(y) = MLP(y^3)`` (2-50-2, tanh) is fitted on random windows of 10 consecutive samples
from 20 random start points, by RMSprop on the mean absolute error, with
``from mali_func import odeint_adjoint as odeint`` (torchdiffeq's defaults: ``dopri5``, rtol 1e-7,
atol 1e-9; the gradient is MALI's). ``--compare`` runs the same training with torchdiffeq's
``odeint_adjoint`` when it is installed and prints both.

    python examples/spiral_demo.py [--niters 300] [--compare] [--float64] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from mali_func import odeint_adjoint as odeint

TRUE_A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]])


class Lambda(nn.Module):
    """The true dynamics."""

    def __init__(self, a: Tensor) -> None:
        super().__init__()
        self.register_buffer("a", a)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return (y**3) @ self.a


class ODEFunc(nn.Module):
    """The model: an MLP of ``y^3``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 50), nn.Tanh(), nn.Linear(50, 2))
        for m in self.net.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0, std=0.1)
                nn.init.constant_(m.bias, val=0)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self.net(y**3)


def make_data(dtype: torch.dtype, size: int = 1000) -> tuple[Tensor, Tensor, Tensor]:
    t = torch.linspace(0.0, 25.0, size, dtype=dtype)
    y0 = torch.tensor([[2.0, 0.0]], dtype=dtype)
    with torch.no_grad():
        ys = odeint(Lambda(TRUE_A.to(dtype)), y0, t)
    return y0, t, ys


def batches(t: Tensor, ys: Tensor, n: int, seed: int, size: int = 20, window: int = 10):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        start = torch.randperm(len(t) - window, generator=gen)[:size]
        batch_y0 = ys[start]  # (size, 1, 2)
        batch_t = t[:window]
        batch_y = torch.stack([ys[start + i] for i in range(window)], dim=0)  # (window, size, 1, 2)
        yield batch_y0, batch_t, batch_y


def train(
    solve: Callable[..., Any], dtype: torch.dtype, niters: int, seed: int = 0
) -> tuple[float, float, float]:
    """Returns the first and last full-trajectory loss and the training wall time."""
    torch.manual_seed(seed)
    y0, t, ys = make_data(dtype)
    func = ODEFunc().to(dtype)
    opt = torch.optim.RMSprop(func.parameters(), lr=1e-3)

    def full_loss() -> float:
        with torch.no_grad():
            return (solve(func, y0, t) - ys).abs().mean().item()

    first = full_loss()
    start = time.perf_counter()
    for batch_y0, batch_t, batch_y in batches(t, ys, niters, seed=seed + 1):
        opt.zero_grad()
        loss = (solve(func, batch_y0, batch_t) - batch_y).abs().mean()
        loss.backward()
        opt.step()
    return first, full_loss(), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--niters", type=int, default=300)
    parser.add_argument("--compare", action="store_true", help="also train with torchdiffeq")
    parser.add_argument("--float64", action="store_true")
    parser.add_argument("--seed", type=int, default=0, help="initial weights and batches")
    ns = parser.parse_args()
    torch.set_num_threads(1)
    dtype = torch.float64 if ns.float64 else torch.float32
    first, last, seconds = train(odeint, dtype, ns.niters, ns.seed)
    print(f"mali-func: first loss {first:.4f} final loss {last:.4f} ({ns.niters} iterations, "
          f"{seconds:.1f} s)")  # fmt: skip
    if ns.compare:
        try:
            from torchdiffeq import odeint_adjoint as tde_odeint
        except ImportError:
            print("torchdiffeq is not installed: no comparison")
            return
        first, last, seconds = train(tde_odeint, dtype, ns.niters, ns.seed)
        print(f"torchdiffeq: first loss {first:.4f} final loss {last:.4f} ({ns.niters} "
              f"iterations, {seconds:.1f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
