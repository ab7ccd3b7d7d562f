"""Core benchmark: memory and time of one forward+backward, MALI against backprop.

Problem (the anchors of the design notes): ``f = Linear(64,256)-tanh-Linear(256,64)``, batch 256,
float32, one thread, ``t`` in [0, 1], ``loss = mean(z(1)^2)``, ``N`` fixed steps.

Every (method, N) point runs in a fresh process, which warms up on a 2-step solve, records its
peak resident memory, runs one timed forward+backward ("cold": the figure the anchors report, with
the allocator's first touches) and then three more, of which the fastest is "warm". Memory is the
growth of the peak resident set over the warm-up's. The paper's TorchDiffEqPack MALI
(``odesolve_adjoint_sym12``, ``fixedstep_sym12async``) is run beside ours when it is installed
(``pip install -e '.[bench]'``).

    python benchmarks/core.py [--steps 10 100 1000] [--out benchmarks/results/core.md]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("mali", "backprop", "tdep_mali")
LABELS = {
    "mali": "mali-func MALI",
    "backprop": "mali-func ALF, backprop",
    "tdep_mali": "TorchDiffEqPack MALI (sym12async)",
}


def _child(method: str, n: int) -> dict[str, float]:
    import torch
    from torch import nn

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 64))

    class Field(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.net(y)

    field = Field()
    y0 = torch.randn(256, 64, requires_grad=True)

    if method == "tdep_mali":
        from TorchDiffEqPack import odesolve_adjoint_sym12

        def run(steps: int) -> None:
            options = {
                "method": "fixedstep_sym12async",
                "h": 1.0 / steps,
                "t0": 0.0,
                "t1": 1.0,
                "rtol": 1e-3,
                "atol": 1e-3,
                "print_neval": False,
                "neval_max": 10**7,
            }
            out = odesolve_adjoint_sym12(field, y0, options=options)
            out.pow(2).mean().backward()
    else:
        import mali_func

        t = torch.tensor([0.0, 1.0])

        def run(steps: int) -> None:
            ys = mali_func.odeint(field, y0, t, n_steps=steps, gradient=method)
            ys[-1].pow(2).mean().backward()

    run(2)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    run(n)
    cold = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    warm = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        run(n)
        warm = min(warm, time.perf_counter() - start)
    return {"mb": (peak - base) / 1024, "cold": cold, "warm": warm}


def _measure(method: str, n: int) -> dict[str, float] | None:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", method, str(n)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.stderr.write(f"{method} N={n} failed:\n{proc.stderr[-2000:]}\n")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    default_out = Path(__file__).parent / "results" / "core.md"
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.child:
        print(json.dumps(_child(ns.child[0], int(ns.child[1]))))
        return

    results = {(m, n): _measure(m, n) for n in ns.steps for m in ns.methods}
    lines = [
        "| method | steps | extra memory (MB) | cold s | warm s "
        "| cold / backprop | warm / backprop |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in ns.methods:
        for n in ns.steps:
            r, ref = results[(m, n)], results.get(("backprop", n))
            if r is None:
                lines.append(f"| {LABELS[m]} | {n} | n/a | n/a | n/a | | |")
                continue
            ratio_cold = f"{r['cold'] / ref['cold']:.2f}" if ref else ""
            ratio_warm = f"{r['warm'] / ref['warm']:.2f}" if ref else ""
            lines.append(
                f"| {LABELS[m]} | {n} | {r['mb']:.0f} | {r['cold']:.2f} | {r['warm']:.2f} "
                f"| {ratio_cold} | {ratio_warm} |"
            )
    table = "\n".join(lines)
    print(table)
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
