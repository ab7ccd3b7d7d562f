"""Checkpointed gradients of the plain Runge-Kutta step: accuracy per evaluation, memory, time.

Three measurements, each in one run:

1. **Accuracy** on the contracting problem of ``benchmarks/accuracy.py`` (float64, MLP 16-64-16
   minus ``z``, ``t`` in [0, 10], batch 64; reference: torchdiffeq dopri5 at 1e-12 with backprop):
   relative gradient error against field evaluations, forward and backward counted, for the
   plain RK4 and Tsit5 steps with ``gradient="checkpoint"`` (default budget: one recomputation;
   and a budget of all the states, which recomputes nothing), adaptive Tsit5 with it, and the
   reversible coupling of RK4 through MALI for comparison. The issue's target: an error of at
   most 1e-8 within 1,000 evaluations.
2. **Memory and time** on the core problem (MLP 64-256-64, batch 256, float32, one thread,
   1,000 steps; each point a fresh process, ``benchmarks/core.py``): checkpointing against
   backprop through the same plain steps (targets: memory growth at most 5 % of backprop's, time
   per training step at most 2x).
3. **Memory against steps** from 100 to 10,000 steps: the default budget (``2 ceil(sqrt N)``
   states) and a fixed budget of 64 states, against backprop up to 1,000 steps.

    python benchmarks/checkpoint.py [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import torch
from _common import RESULTS, CountingField, md_table, save_json, write
from accuracy import _rel, _solver, gradient
from core import measure_point
from torch import Tensor

TARGET_ERROR, TARGET_EVALS = 1e-8, 1000


def _ours(**kw: Any):
    import mali_func

    def solve(field: CountingField, y0: Tensor, t: Tensor) -> Tensor:
        return mali_func.odeint(field, y0, t, **kw)[-1]

    return solve


def accuracy(quick: bool) -> list[dict[str, Any]]:
    """Error and evaluations of each series on the contracting problem."""
    torch.set_num_threads(1)
    t1 = 2.0 if quick else 10.0
    field = CountingField(16, 64, damping=1.0).double()
    torch.manual_seed(1)
    y0 = torch.randn(64, 16, dtype=torch.float64)
    t = torch.tensor([0.0, t1], dtype=torch.float64)
    ref = gradient(field, y0, t, _solver("dopri5_backprop", 1e-12)[0])[0]
    plain = {"coupling": None, "gradient": "checkpoint"}
    series: list[tuple[str, str, Any]] = []
    for n in (10, 20) if quick else (40, 60, 80, 100, 125):
        series.append(("RK4, checkpoint", f"{n} steps", _ours(method="rk4", n_steps=n, **plain)))
        series.append(("RK4, checkpoint (all states)", f"{n} steps",
                       _ours(method="rk4", n_steps=n, checkpoints=n, **plain)))  # fmt: skip
        series.append(("reversible RK4, MALI", f"{n} steps", _ours(method="rk4", n_steps=n)))
    for n in (5, 10) if quick else (10, 15, 20, 30, 40):
        solve = _ours(method="tsit5", n_steps=n, **plain)
        series.append(("Tsit5, checkpoint", f"{n} steps", solve))
        series.append(("Tsit5, checkpoint (all states)", f"{n} steps",
                       _ours(method="tsit5", n_steps=n, checkpoints=n, **plain)))  # fmt: skip
    for tol in (1e-6,) if quick else (1e-6, 1e-7, 1e-8, 1e-9, 1e-10):
        solve = _ours(method="tsit5", rtol=tol, atol=tol, **plain)
        series.append(("Tsit5 adaptive, checkpoint", f"tol {tol:.0e}", solve))
    points = []
    for name, setting, solve in series:
        g, evals, seconds = gradient(copy.deepcopy(field), y0, t, solve)
        error = _rel(g, ref)
        points.append({"series": name, "setting": setting, "evals": evals, "error": error,
                       "seconds": seconds})  # fmt: skip
    return points


def memory_time(steps: int, methods: list[str], repeats: int) -> dict[str, Any]:
    return {m: measure_point(m, steps, repeats) for m in methods}


def curve(steps: list[int], backprop_up_to: int) -> list[dict[str, Any]]:
    rows = []
    for n in steps:
        row: dict[str, Any] = {"steps": n}
        for m in ("rk4_ckpt", "rk4_ckpt64", "rk4_plain_backprop"):
            if m == "rk4_plain_backprop" and n > backprop_up_to:
                continue
            point = measure_point(m, n, 0)
            row[m] = None if point is None else point["mb"]
        rows.append(row)
    return rows


def report(acc: list[dict[str, Any]], mt: dict[str, Any], rows: list[dict[str, Any]],
           steps: int) -> str:  # fmt: skip
    out = ["### Accuracy per field evaluation (float64, contracting problem)", ""]
    table = [[p["series"], p["setting"], str(p["evals"]), f"{p['error']:.1e}",
              "yes" if p["error"] <= TARGET_ERROR and p["evals"] <= TARGET_EVALS else ""]
             for p in acc]  # fmt: skip
    out.append(md_table(["series", "setting", "evaluations", "gradient error",
                         f"<= {TARGET_ERROR:g} within {TARGET_EVALS}"], table))  # fmt: skip
    out += ["", f"### Memory and time at {steps} steps (core problem, float32)", ""]
    base = mt.get("rk4_plain_backprop") or {}
    table = []
    for m, p in mt.items():
        if p is None:
            table.append([m, "failed", "", "", ""])
            continue
        mb_ratio = p["mb"] / base["mb"] if base.get("mb") else float("nan")
        t_ratio = p["warm"] / base["warm"] if base.get("warm") else float("nan")
        table.append([m, f"{p['mb']:.1f}", f"{p['warm']:.2f}", f"{mb_ratio:.3f}",
                      f"{t_ratio:.2f}"])  # fmt: skip
    out.append(md_table(["method", "memory growth MB", "warm s", "memory / RK4 backprop",
                         "time / RK4 backprop"], table))  # fmt: skip
    out += ["", "### Memory growth (MB) against steps (core problem, float32)", ""]

    def mb(v: Any) -> str:
        return "" if v is None else f"{v:.1f}"

    table = [[str(r["steps"]), mb(r.get("rk4_ckpt")), mb(r.get("rk4_ckpt64")),
              mb(r.get("rk4_plain_backprop"))] for r in rows]  # fmt: skip
    out.append(md_table(["steps", "RK4 checkpoint (default)", "RK4 checkpoint (64 states)",
                         "RK4 backprop"], table))  # fmt: skip
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    steps = 100 if args.quick else 1000
    acc = accuracy(args.quick)
    methods = ["rk4_ckpt", "rk4_ckpt64", "rk4_plain_backprop", "tsit5_ckpt",
               "tsit5_plain_backprop", "rk4_mali"]  # fmt: skip
    mt = memory_time(steps, methods, 1 if args.quick else 3)
    grid = [100, 300] if args.quick else [100, 300, 1000, 3000, 10000]
    rows = curve(grid, 1000)
    save_json(args.out / "checkpoint.json", {"accuracy": acc, "memory_time": mt, "curve": rows})
    text = report(acc, mt, rows, steps)
    write(args.out / "checkpoint.md", text)
    print(text)


if __name__ == "__main__":
    main()
