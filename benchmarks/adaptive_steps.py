"""Adaptive solves: steps, field evaluations, solution error and gradient error per tolerance.

Problem: a random MLP field ``f(y) = W2 tanh(W1 y) - 0.1 y`` on ``y`` in R^8 (hidden 64,
weights scaled so the dynamics turn over several times), batch 16, ``t`` in [0, 5], float64,
``loss = mean(y(5)^2)``. The reference is a tight solve: our ALF on 40,000 fixed steps
(second-order accurate: about 1e-9 relative here), differentiated by backprop.

For rtol = atol in 1e-3 .. 1e-6 it reports our adaptive ALF (accepted and rejected steps, field
evaluations of forward and backward, solution error, MALI gradient error) beside TorchDiffEqPack's
``sym12async`` (the paper's adaptive MALI) and torchdiffeq's ``odeint_adjoint`` with dopri5, each
with its own field-evaluation count. Field evaluations are counted in the field's ``forward``.

    python benchmarks/adaptive_steps.py [--out benchmarks/results/adaptive.md]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

import mali_func

F64 = torch.float64
TOLS = (1e-3, 1e-4, 1e-5, 1e-6)


class Field(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w1 = nn.Parameter(torch.randn(64, 8, generator=gen, dtype=F64) * 0.6)
        self.w2 = nn.Parameter(torch.randn(8, 64, generator=gen, dtype=F64) * 0.3)
        self.calls = 0

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        self.calls += 1
        return torch.tanh(y @ self.w1.T) @ self.w2.T - 0.1 * y


def run(
    solve: Callable[[Field, Tensor], Tensor], y0: Tensor
) -> tuple[Tensor, list[Tensor], int, int]:
    """Solution, parameter gradients, field calls in forward, field calls in backward."""
    field = Field()
    y = y0.clone().requires_grad_()
    out = solve(field, y)
    forward_calls = field.calls
    out.pow(2).mean().backward()
    grads = [p.grad for p in field.parameters()]
    assert all(g is not None for g in grads)
    return out.detach(), grads, forward_calls, field.calls - forward_calls  # type: ignore[return-value]


def rel(a: Tensor, b: Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def grad_err(gs: list[Tensor], ref: list[Tensor]) -> float:
    return max(rel(g, r) for g, r in zip(gs, ref))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "adaptive.md"
    )
    ns = parser.parse_args()
    torch.manual_seed(0)
    y0 = torch.randn(16, 8, dtype=F64)
    t = torch.tensor([0.0, 5.0], dtype=F64)
    ref_y, ref_g, _, _ = run(
        lambda f, y: mali_func.odeint(f, y, t, n_steps=40_000, gradient="backprop")[-1], y0
    )
    lines = [
        "| solver | tol | accepted | rejected | f evals fwd + bwd | solution error "
        "| gradient error |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for tol in TOLS:
        stats_box: list[mali_func.SolveStats] = []

        def ours(
            f: Field, y: Tensor, tol: float = tol, box: list[mali_func.SolveStats] = stats_box
        ) -> Tensor:
            ys, stats = mali_func.odeint(f, y, t, rtol=tol, atol=tol, stats=True)
            box.append(stats)
            return ys[-1]

        y, g, nf, nb = run(ours, y0)
        s = stats_box[0]
        lines.append(
            f"| mali-func ALF (MALI) | {tol:g} | {s.n_accepted.item()} | {s.n_rejected.item()} "
            f"| {nf} + {nb} | {rel(y, ref_y):.1e} | {grad_err(g, ref_g):.1e} |"
        )
        try:
            from TorchDiffEqPack import odesolve_adjoint_sym12

            def tdep(f: Field, y: Tensor, tol: float = tol) -> Tensor:
                options = {
                    "method": "sym12async",
                    "h": None,
                    "t0": 0.0,
                    "t1": 5.0,
                    "rtol": tol,
                    "atol": tol,
                    "print_neval": False,
                    "neval_max": 10**6,
                }
                return odesolve_adjoint_sym12(f, y, options=options)

            y, g, nf, nb = run(tdep, y0)
            lines.append(
                f"| TorchDiffEqPack sym12async | {tol:g} | | | {nf} + {nb} "
                f"| {rel(y, ref_y):.1e} | {grad_err(g, ref_g):.1e} |"
            )
        except ImportError:
            pass
        try:
            from torchdiffeq import odeint_adjoint

            def adjoint(f: Field, y: Tensor, tol: float = tol) -> Tensor:
                return odeint_adjoint(f, y, t, rtol=tol, atol=tol, method="dopri5")[-1]

            y, g, nf, nb = run(adjoint, y0)
            lines.append(
                f"| torchdiffeq adjoint dopri5 | {tol:g} | | | {nf} + {nb} "
                f"| {rel(y, ref_y):.1e} | {grad_err(g, ref_g):.1e} |"
            )
        except ImportError:
            pass
    table = "\n".join(lines)
    print(table)
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
