"""Output times with and without dense output: steps, field calls, time, accuracy, gradient.

Problem (latent-ODE style, ALF's kind of dynamics): a pendulum with a small learnable coupling,
batch 64, ``t`` in [0, 10], float64, outputs at 2 or 100 times, rtol 1e-6 (ALF 1e-4), atol
rtol / 100. For tsit5 (plain, checkpoint; coupled, MALI), dopri5 (plain, checkpoint) and ALF,
each with ``Adaptive(interpolate=True)`` (the default) and ``interpolate=False`` (a step lands on
every output): accepted steps, field evaluations of the forward solve (counted by the solve), the
time of one training step (forward + backward, best of 5, one thread), the largest output error
against a ``rtol=1e-12`` reference, and the largest difference between the gradient and backprop
through the same computation.

    python benchmarks/dense_output.py [--out benchmarks/results/dense_output.md]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _common import RESULTS, best_of
from torch import Tensor, nn

from mali_func import Adaptive, odeint

CASES = [
    ("tsit5", None, "checkpoint", 1e-6),
    ("tsit5", "auto", "mali", 1e-6),
    ("dopri5", None, "checkpoint", 1e-6),
    ("alf", None, "mali", 1e-4),  # a first-order error estimate: 1e-6 takes > 10,000 steps
]


class Pendulum(nn.Module):
    """``(q, p)' = (a p, -b sin q + c tanh(W z))``: a pendulum (ALF's kind of dynamics) with a
    small learnable coupling (seeded)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.ab = nn.Parameter(torch.tensor([1.5, 2.0], dtype=torch.float64))
        self.w = nn.Parameter(0.1 * torch.randn(2, 1, dtype=torch.float64))

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        q, p = z[..., :1], z[..., 1:]
        force = -self.ab[1] * torch.sin(q) + 0.05 * torch.tanh(z @ self.w)
        return torch.cat([self.ab[0] * p, force], -1)


def _solve(field: Pendulum, y0: Tensor, t: Tensor, method: str, coupling: str | None,
           gradient: str, interpolate: bool, rtol: float) -> tuple:  # fmt: skip
    steps = Adaptive(interpolate=interpolate)
    return odeint(field, y0, t, method=method, coupling=coupling, rtol=rtol, atol=rtol * 1e-2,
                  gradient=gradient, steps=steps, stats=True)  # fmt: skip


def measure(method: str, coupling: str | None, gradient: str, rtol: float, n_out: int,
            interpolate: bool) -> dict[str, float]:  # fmt: skip
    torch.manual_seed(0)
    field = Pendulum()
    y0 = torch.randn(64, 2, dtype=torch.float64)
    t = torch.linspace(0, 10, n_out, dtype=torch.float64)
    with torch.no_grad():
        ref = odeint(field, y0, t, method="tsit5", rtol=1e-12, atol=1e-12, coupling=None)
    out, stats = _solve(field, y0, t, method, coupling, gradient, interpolate, rtol)
    params = list(field.parameters())

    def train_step(g: str = gradient) -> list[torch.Tensor]:
        ys, _ = _solve(field, y0, t, method, coupling, g, interpolate, rtol)
        return list(torch.autograd.grad(ys.pow(2).mean(), params))

    exact = train_step("backprop")
    got = train_step()
    return {
        "accepted": int(stats.n_accepted),
        "evals": int(stats.n_f_evals),
        "time": best_of(train_step),
        "error": float((out.detach() - ref).abs().max()),
        "grad_diff": max(float((a - b).abs().max()) for a, b in zip(got, exact)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "dense_output.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = [
        "# Output times: interpolated (dense output) or landed on",
        "",
        "`python benchmarks/dense_output.py` (one thread; a pendulum field, batch 64, "
        "t in [0, 10], float64, atol = rtol / 100). Time: one training step (forward + "
        "backward), best of 5. Error: largest output error against a rtol 1e-12 reference. "
        "Gradient: largest difference from backprop through the same computation.",
        "",
        "| method, gradient | outputs | interpolate | accepted steps | field evals (fwd) | "
        "step time (ms) | output error | gradient vs backprop |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for method, coupling, gradient, rtol in CASES:
        name = f"{method}{' coupled' if coupling else ''}, {gradient}, rtol {rtol:g}"
        rows = {}
        for n_out in (2, 100):
            for interpolate in (True, False):
                if n_out == 2 and not interpolate:
                    continue
                r = measure(method, coupling, gradient, rtol, n_out, interpolate)
                rows[n_out, interpolate] = r
                lines.append(
                    f"| {name} | {n_out} | {interpolate} | {r['accepted']} | {r['evals']} | "
                    f"{1e3 * r['time']:.1f} | {r['error']:.1e} | {r['grad_diff']:.1e} |"
                )
        ratio = rows[100, True]["accepted"] / rows[2, True]["accepted"]
        speed = rows[100, False]["time"] / rows[100, True]["time"]
        lines.append(f"| | | *100 / 2 outputs: steps x{ratio:.2f}; landing / interpolating "
                     f"time x{speed:.2f}* | | | | | |")  # fmt: skip
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
