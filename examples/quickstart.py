"""Quickstart: learn the dynamics of a damped oscillator with MALI, in constant memory.

A small MLP vector field is fitted to a trajectory of ``x'' = -x - 0.2 x'`` sampled at 20 times;
``odeint`` integrates it with the asynchronous leapfrog method and differentiates with MALI. At the
end the MALI gradient is compared with plain backprop through the same steps.
"""

from __future__ import annotations

import time

import torch
from torch import nn

import mali_func


class Field(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 2))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


def main() -> None:
    torch.manual_seed(0)
    a = torch.tensor([[0.0, 1.0], [-1.0, -0.2]])
    t = torch.linspace(0.0, 6.0, 20)
    y0 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-0.5, 0.5]])
    target = torch.stack([y0 @ torch.linalg.matrix_exp(a * s).T for s in t])

    field = Field()
    opt = torch.optim.Adam(field.parameters(), lr=1e-2)
    start = time.perf_counter()
    for it in range(301):
        ys = mali_func.odeint(field, y0, t, n_steps=4)
        loss = (ys - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 50 == 0:
            print(f"iter {it:4d}  loss {loss.item():.5f}")
    print(f"trained in {time.perf_counter() - start:.1f} s")

    grads = {}
    for gradient in ("mali", "backprop"):
        ys = mali_func.odeint(field, y0, t, n_steps=4, gradient=gradient)
        grads[gradient] = torch.autograd.grad((ys - target).pow(2).mean(), list(field.parameters()))
    worst = max(
        ((m - b).abs().max() / b.abs().max()).item()
        for m, b in zip(grads["mali"], grads["backprop"])
    )
    print(f"MALI vs backprop gradient, max relative difference: {worst:.2e}")


if __name__ == "__main__":
    main()
