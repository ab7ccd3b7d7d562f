"""Where a coupled step's time goes: the field's own work against everything else.

P1 of ``benchmarks/peers.py`` (``Linear(64,256)-tanh-Linear(256,64)``, batch 256, float32, ``t``
in [0, 1], one thread), 20 fixed steps, one training step with MALI for the coupled tsit5 and
RK4 (and ALF and the checkpointed plain RK4 for comparison). The field's own work is timed
apart on the same shapes: the forward's evaluations (counted in the field's ``forward``) as a
loop of bare field calls, and the backward's (each stage re-evaluated under a VJP) as a loop of
:func:`torch.func.vjp` calls. What remains is ours: the scheme's arithmetic, the coupling, the
loops, the checks. Best of 5, interleaved.

    python benchmarks/coupled_overhead.py [--out benchmarks/results/coupled_overhead.md]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _common import RESULTS, CountingField, best_of

import mali_func

CASES = {
    "coupled tsit5 (MALI)": {"method": "tsit5"},
    "coupled rk4 (MALI)": {"method": "rk4"},
    "ALF (MALI)": {"method": "alf"},
    "plain rk4 (checkpoint)": {"method": "rk4", "coupling": None, "gradient": "checkpoint"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "coupled_overhead.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    field = CountingField(64, 256)
    torch.manual_seed(1)
    y0, t = torch.randn(256, 64), torch.tensor([0.0, 1.0])
    params = list(field.parameters())
    t0 = torch.tensor(0.5)
    lines = [
        "# Where a coupled step's time goes (benchmarks/coupled_overhead.py)",
        "",
        "P1 field (64-256-64, batch 256, float32), 20 fixed steps, one MALI training step, one "
        "thread, best of 5. Field work: the solve's evaluations as bare calls (forward) and as "
        "`torch.func.vjp` calls (backward, one per re-evaluated stage).",
        "",
        "| scheme | step (ms) | calls fwd + bwd | field work (ms) | ours (ms) | ours / step |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, kw in CASES.items():

        def train(kw: dict = kw) -> None:
            ys = mali_func.odeint(field, y0, t, steps=mali_func.Fixed(n=20), **kw)
            torch.autograd.grad(ys[-1].pow(2).mean(), params)

        field.calls = 0
        ys = mali_func.odeint(field, y0, t, steps=mali_func.Fixed(n=20), **kw)
        n_fwd = field.calls
        torch.autograd.grad(ys[-1].pow(2).mean(), params)
        n_bwd = field.calls - n_fwd
        step = best_of(train)

        def forward_work(n: int = n_fwd) -> None:
            with torch.no_grad():
                for _ in range(n):
                    field(t0, y0)

        def backward_work(n: int = n_bwd) -> None:
            cot = torch.ones_like(y0)
            for _ in range(n):
                _, pull = torch.func.vjp(lambda y, *p: field(t0, y), y0, *params)
                pull(cot)

        work = best_of(forward_work) + best_of(backward_work)
        lines.append(
            f"| {name} | {1e3 * step:.1f} | {n_fwd} + {n_bwd} | {1e3 * work:.1f} | "
            f"{1e3 * (step - work):.1f} | {(step - work) / step:.0%} |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
