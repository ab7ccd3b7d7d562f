"""Adaptive solves: steps, field evaluations, solution error and gradient error per tolerance.

Problem: a random MLP field ``f(y) = W2 tanh(W1 y) - 0.1 y`` on ``y`` in R^8 (hidden 64,
weights scaled so the dynamics turn over several times), batch 16, ``t`` in [0, 5], float64,
``loss = mean(y(5)^2)``. The reference is a tight solve: our coupled RK4 on 4,000 fixed steps
(fourth order, h = 1.25e-3; its solution agrees with 2,000 steps to about 1e-13), differentiated by
backprop.

For rtol = atol in 1e-3 .. 1e-7 it reports our adaptive ALF and the reversible couplings of
Bogacki-Shampine 3(2) and Tsitouras 5(4) (automatic coupling; accepted and rejected steps, field
evaluations of forward and backward, solution error, MALI gradient error) beside TorchDiffEqPack's
``sym12async`` (the paper's adaptive MALI) and torchdiffeq's ``odeint_adjoint`` with dopri5, each
with its own field-evaluation count, when those are installed. Field evaluations are counted in
the field's ``forward``. diffrax rows (``Tsit5`` with ``RecursiveCheckpointAdjoint``; released
diffrax has no reversible adjoint) come from ``benchmarks/diffrax_row.py`` when a JAX interpreter
with diffrax is available, and are noted as skipped otherwise.

    python benchmarks/adaptive_steps.py [--out benchmarks/results/adaptive.md]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import diffrax_row
import torch
from torch import Tensor, nn

import mali_func

F64 = torch.float64
TOLS = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7)
OURS = {"alf": "mali-func ALF (MALI)", "bosh3": "mali-func bosh3 (MALI)",
        "tsit5": "mali-func tsit5 (MALI)"}  # fmt: skip


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

    def reference(steps: int) -> Callable[[Field, Tensor], Tensor]:
        def solve(f: Field, y: Tensor) -> Tensor:
            return mali_func.odeint(f, y, t, n_steps=steps, method="rk4", gradient="backprop")[-1]

        return solve

    ref_y, ref_g, _, _ = run(reference(4000), y0)
    check_y, check_g, _, _ = run(reference(2000), y0)
    lines = [
        "| solver | tol | accepted | rejected | f evals fwd + bwd | solution error "
        "| gradient error |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for tol in TOLS:
        for method, label in OURS.items():
            stats_box: list[mali_func.SolveStats] = []

            def ours(
                f: Field,
                y: Tensor,
                tol: float = tol,
                method: str = method,
                box: list[mali_func.SolveStats] = stats_box,
            ) -> Tensor:
                ys, stats = mali_func.odeint(
                    f, y, t, rtol=tol, atol=tol, method=method, stats=True, max_steps=100_000
                )
                box.append(stats)
                return ys[-1]

            y, g, nf, nb = run(ours, y0)
            s = stats_box[0]
            lines.append(
                f"| {label} | {tol:g} | {s.n_accepted.item()} | {s.n_rejected.item()} "
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
    field = Field()
    problem = {"w1": field.w1, "w2": field.w2, "y0": y0, "ref_y": ref_y,
               "ref_g1": ref_g[0], "ref_g2": ref_g[1]}  # fmt: skip
    jax_rows = diffrax_row.rows(TOLS, problem)
    for r in jax_rows or []:
        lines.append(
            f"| diffrax Tsit5, RecursiveCheckpointAdjoint | {r['tol']:g} | {r['accepted']} "
            f"| {r['rejected']} | {r['forward_evals']} + (recomputed) | "
            f"{r['solution_error']:.1e} | {r['gradient_error']:.1e} |"
        )
    table = "\n".join(lines)
    table += (
        f"\n\nReference: coupled RK4, 4,000 steps, backprop; against 2,000 steps its solution "
        f"differs by {rel(check_y, ref_y):.0e} and its gradient by {grad_err(check_g, ref_g):.0e}."
    )
    if jax_rows is None:
        table += "\ndiffrax rows skipped: jax/diffrax not installed (benchmarks/diffrax_row.py).\n"
    else:
        table += (
            "\ndiffrax: JAX float64, one thread; forward evaluations estimated as 6 per trial step "
            "(Tsit5 is FSAL); its backward recomputes from checkpoints (not counted).\n"
        )
    print(table)
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
