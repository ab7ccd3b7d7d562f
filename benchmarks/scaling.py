"""Peak memory and seconds per training step against the number of steps, every method.

The problem and the measurement are :mod:`core`'s (``f = Linear(64,256)-tanh-Linear(256,64)``,
batch 256, float32, one thread, ``t`` in [0, 1], ``loss = mean(z(1)^2)``), one fresh process per
(method, steps) point. Each point reports the growth of the peak resident set during one
forward+backward, the cold (first) time, the warm (best of the repeats) time and the field
evaluations of one training step. Steps are visited in the outer loop, so that a burst of load on
a shared machine smears over all methods rather than hitting one.

    python benchmarks/scaling.py [--steps 10 30 100 300 1000] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from _common import RESULTS, fmt, md_table, save_json, write
from core import Point, measure_point
from methods import LABELS, METHODS, STYLES
from plots import Line, Panel, loglog

Results = dict[str, dict[int, Point | None]]
STEPS = (10, 30, 100, 300, 1000)


def repeats_for(n: int, budget_steps: int = 300) -> int:
    """Warm repeats after the cold run: three up to ``budget_steps`` steps, two beyond."""
    return 3 if n <= budget_steps else 2


def sweep(steps: Sequence[int], methods: Sequence[str]) -> Results:
    """Measure every point in a fresh process; a failed point is ``None``."""
    results: Results = {m: {} for m in methods}
    for n in steps:
        for m in methods:
            point = measure_point(m, n, repeats_for(n))
            results[m][n] = point
            shown = "failed" if point is None else f"{point['mb']:.0f} MB, {point['warm']:.3f} s"
            print(f"  {LABELS[m]:<36} {n:>5} steps: {shown}", file=sys.stderr, flush=True)
    return results


def _pivot(results: Results, steps: Sequence[int], cell: str, spec: str) -> str:
    rows = []
    for m, points in results.items():
        row: list[object] = [LABELS[m]]
        for n in steps:
            p, ref = points.get(n), results.get("backprop", {}).get(n)
            if cell == "ratio":
                value = p["warm"] / ref["warm"] if p and ref else None
            else:
                value = p[cell] if p else None
            row.append(fmt(value, spec))
        rows.append(row)
    return md_table(["method", *(f"{n} steps" for n in steps)], rows, "l" + "r" * len(steps))


def tables(results: Results, steps: Sequence[int]) -> tuple[str, str]:
    """``(memory.md, time.md)`` contents."""
    memory = (
        "### Peak memory of one training step (MB above the process's warm-up peak)\n\n"
        + _pivot(results, steps, "mb", ".0f")
    )
    time = "\n\n".join(
        [
            f"### Seconds per training step, warm (best of {repeats_for(1)};"
            f" of {repeats_for(10**9)} above 300 steps)\n\n"
            + _pivot(results, steps, "warm", ".3f"),
            "### Seconds per training step, cold (first solve of a fresh process)\n\n"
            + _pivot(results, steps, "cold", ".3f"),
            "### Warm time relative to mali-func's ALF with backprop\n\n"
            + _pivot(results, steps, "ratio", ".2f"),
            "### Field evaluations per training step (forward and backward)\n\n"
            + _pivot(results, steps, "evals", ".0f"),
        ]
    )
    return memory, time


def _line(results: Results, m: str, key: str, floor: float = 0.0) -> Line:
    points = sorted((n, p[key]) for n, p in results[m].items() if p is not None)
    return Line(LABELS[m], [n for n, _ in points], [max(v, floor) for _, v in points], STYLES[m])


def plot(results: Results, out: Path) -> list[Path]:
    """``memory.png`` and ``time.png``."""
    problem = "MLP 64-256-64, batch 256, float32, 1 thread, t in [0, 1]"
    memory = Panel(
        [_line(results, m, "mb", floor=1.0) for m in results],
        "fixed steps",
        "peak memory growth, MB (floored at 1)",
        "Peak memory of one forward+backward",
    )
    warm = Panel(
        [_line(results, m, "warm") for m in results],
        "fixed steps",
        "seconds",
        "One training step, warm (best of repeats)",
    )
    cold = Panel(
        [_line(results, m, "cold") for m in results],
        "fixed steps",
        "seconds",
        "One training step, cold (first in a fresh process)",
    )
    return [
        loglog(out / "memory.png", [memory], problem),
        loglog(out / "time.png", [warm, cold], problem),
    ]


def run(out: Path, steps: Sequence[int] = STEPS, methods: Sequence[str] = METHODS) -> Results:
    """Sweep, then write ``memory.md``, ``time.md``, their plots and ``scaling.json``."""
    results = sweep(steps, methods)
    memory, time = tables(results, steps)
    write(out / "memory.md", memory)
    write(out / "time.md", time)
    save_json(
        out / "scaling.json", {m: {str(n): p for n, p in r.items()} for m, r in results.items()}
    )
    plot(results, out)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    ns = parser.parse_args()
    results = run(ns.out, ns.steps, ns.methods)
    print("\n\n".join(tables(results, ns.steps)))


if __name__ == "__main__":
    main()
