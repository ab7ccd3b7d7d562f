"""Core benchmark: memory and time of one forward+backward, MALI against backprop.

Problem (the anchors of the design notes): ``f = Linear(64,256)-tanh-Linear(256,64)``, batch 256,
float32, one thread, ``t`` in [0, 1], ``loss = mean(z(1)^2)``, ``N`` fixed steps.

Every (method, N) point runs in a fresh process, which warms up on a 2-step solve, records its
peak resident memory, runs one timed forward+backward ("cold": the figure the anchors report, with
the allocator's first touches) and then ``--repeats`` more (three by default), of which the
fastest is "warm". Memory is the growth of the peak resident set over the warm-up's. The paper's
TorchDiffEqPack MALI (``odesolve_adjoint_sym12``, ``fixedstep_sym12async``) is run beside ours when
it is installed (``pip install -e '.[bench]'``); torchdiffeq's RK4 (``tde_adjoint``,
``tde_backprop``) can be added with ``--methods``. The sweep over steps with plots is
``benchmarks/scaling.py``; everything at once is ``benchmarks/run_all.py``.

    python benchmarks/core.py [--steps 10 100 1000] [--out benchmarks/results/core.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import RESULTS, core_problem, md_table, peak_rss_mb, run_child, timed
from methods import LABELS, METHODS, make_solve

DEFAULT_METHODS = ("mali", "backprop", "tdep_mali")

Point = dict[str, float]


def _child(method: str, n: int, repeats: int = 3) -> Point:
    """One fresh-process measurement; see the module docstring."""
    field, y0 = core_problem()

    def step(solve_n: int) -> None:
        solve = make_solve(method, field, y0, 1.0, solve_n)
        solve().pow(2).mean().backward()

    step(2)
    base = peak_rss_mb()
    field.calls = 0
    cold = timed(lambda: step(n))
    evals = field.calls
    peak = peak_rss_mb()
    warm = min((timed(lambda: step(n)) for _ in range(repeats)), default=cold)
    return {"mb": peak - base, "cold": cold, "warm": warm, "evals": evals, "repeats": repeats}


def measure_point(method: str, n: int, repeats: int = 3) -> Point | None:
    """Run :func:`_child` in a fresh interpreter; ``None`` when it failed (reported on stderr)."""
    return run_child(Path(__file__), [method, str(n), str(repeats)])


def core_table(
    results: dict[tuple[str, int], Point | None], methods: list[str], steps: list[int]
) -> str:
    """The README's table: memory, cold and warm seconds, and both ratios to our backprop."""
    rows = []
    for m in methods:
        for n in steps:
            r, ref = results.get((m, n)), results.get(("backprop", n))
            if r is None:
                rows.append([LABELS[m], n, "n/a", "n/a", "n/a", "", ""])
                continue
            ratio_cold = f"{r['cold'] / ref['cold']:.2f}" if ref else ""
            ratio_warm = f"{r['warm'] / ref['warm']:.2f}" if ref else ""
            rows.append(
                [
                    LABELS[m],
                    n,
                    f"{r['mb']:.0f}",
                    f"{r['cold']:.2f}",
                    f"{r['warm']:.2f}",
                    ratio_cold,
                    ratio_warm,
                ]
            )
    headers = [
        "method",
        "steps",
        "extra memory (MB)",
        "cold s",
        "warm s",
        "cold / backprop",
        "warm / backprop",
    ]
    return md_table(headers, rows, "lrrrrrr")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS)
    parser.add_argument("--repeats", type=int, default=3, help="warm runs after the cold one")
    parser.add_argument("--out", type=Path, default=RESULTS / "core.md")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.child:
        method, n, *rest = ns.child
        print(json.dumps(_child(method, int(n), *(int(r) for r in rest))))
        return

    results = {(m, n): measure_point(m, n, ns.repeats) for n in ns.steps for m in ns.methods}
    table = core_table(results, ns.methods, ns.steps)
    print(table)
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
