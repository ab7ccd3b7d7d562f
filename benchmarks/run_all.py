"""Every benchmark in one command: tables (markdown) and plots (PNG) in ``benchmarks/results/``.

1. :mod:`scaling`: peak memory and seconds per training step against the number of steps (10 to
   1000) for our MALI and backprop, torchdiffeq's RK4 ``odeint_adjoint`` and ``odeint``, and
   TorchDiffEqPack's MALI, one fresh process per point (``memory.md/png``, ``time.md/png``);
2. :mod:`accuracy`: gradient error against field evaluations on a long, contracting solve, in
   float64 and float32 against a float64 reference (``accuracy.md/png``);
3. :mod:`extras`: head-to-head rows (``extras.md``): vmap per-sample gradients against a loop,
   a ``torch.compile``d MALI training step against eager (step time, cold compile time at 20
   and 400 steps, recompiles for a new ``n_steps``, ``cpp_wrapper``), and the digits classifier
   in onnxruntime against torch eager at batch 1 and 256;
4. :mod:`report`: ``README-table.md`` (everything in one table) and ``README-section.md`` (the
   text proposed for the README).

About 10 minutes on 2 CPU cores when the machine is otherwise idle; ``--quick`` (10 and 30 steps,
``t`` in [0, 2]) is a smoke test of the whole pipeline in about two minutes and writes into
``benchmarks/results/quick/`` unless ``--out`` says otherwise.

    python benchmarks/run_all.py [--quick] [--only [scaling accuracy extras]] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import accuracy
import extras
import report
import scaling
from _common import RESULTS, save_json
from methods import METHODS

PARTS = ("scaling", "accuracy", "extras")
QUICK_STEPS = (10, 30)


def _load(path: Path, default: object) -> object:
    """Results of a part that this run skipped, from its previous run, for the combined table."""
    return json.loads(path.read_text()) if path.exists() else default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument(
        "--only",
        nargs="*",
        choices=PARTS,
        default=list(PARTS),
        help="parts to run (the others are read from their last results); none: reports only",
    )
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    ns = parser.parse_args()
    out: Path = ns.out or (RESULTS / "quick" if ns.quick else RESULTS)
    start = time.perf_counter()
    load = os.getloadavg()[0]
    print(f"results into {out}; load average {load:.2f}", file=sys.stderr, flush=True)

    took = _load(out / "runtime.json", {})
    assert isinstance(took, dict)

    def stage(name: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {name}", file=sys.stderr, flush=True)

    def timed_part(part: str, since: float) -> None:
        took[part] = time.perf_counter() - since

    if "scaling" in ns.only:
        stage("memory and time against steps")
        steps, since = QUICK_STEPS if ns.quick else scaling.STEPS, time.perf_counter()
        sweep = scaling.run(out, steps, METHODS)
        timed_part("scaling", since)
    else:
        raw = _load(out / "scaling.json", {})
        assert isinstance(raw, dict)
        sweep = {m: {int(n): p for n, p in pts.items()} for m, pts in raw.items()}
    if "accuracy" in ns.only:
        stage("gradient error against field evaluations")
        since = time.perf_counter()
        runs = accuracy.run(out, ns.quick)
        timed_part("accuracy", since)
    else:
        runs = _load(out / "accuracy.json", [])
    if "extras" in ns.only:
        stage("head-to-head rows")
        since = time.perf_counter()
        heads = extras.run(out, ns.quick)
        timed_part("extras", since)
    else:
        heads = _load(out / "extras.json", {})
    assert isinstance(runs, list) and isinstance(heads, dict)
    save_json(out / "runtime.json", took)
    runtime = sum(took.values()) if set(took) >= set(PARTS) else None
    report.write_reports(out, sweep, runs, heads, runtime, ns.quick)
    stage(f"done: {out / 'README-table.md'}, {out / 'README-section.md'}")
    print((out / "README-table.md").read_text())


if __name__ == "__main__":
    main()
