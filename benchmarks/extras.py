"""Head-to-head rows: one way of doing a job against another, seconds and speedup.

Each row is a :class:`Row` in :data:`ROWS`; a row whose ``measure`` is ``None`` is a hook for a
later comparison and is listed as pending. ``measure(quick)`` runs in a fresh process and returns
``{"setting", "baseline_s", "candidate_s", "check"}`` (and any raw figures beside them); the
speedup is ``baseline_s / candidate_s``. To add a row, write its ``measure`` function here and put
it in :data:`ROWS`.

Measured now, all float32 on one thread:

* ``vmap``: per-sample gradients of a Neural ODE loss through ``mali_func.odeint`` (MALI),
  ``torch.func.vmap(torch.func.grad(loss))`` against a Python loop of per-sample autograd, batch
  64, field ``Linear(64,256)-tanh-Linear(256,64)``; both timed warm (best of three after one
  warm-up), and their gradients compared.
* ``compile``, ``compile_steps``, ``compile_cpp``: one MALI training step (forward+backward of
  ``mean(z(1)^2)``, ``t`` in [0, 1]), field ``Linear(2,64)-tanh-Linear(64,2)``, batch 256, under
  ``torch.compile(fullgraph=True)`` with the default inductor backend against eager. Each
  process compiles into an empty inductor cache of its own, so *compile time* is cold: the wall
  time of the first compiled call (tracing, compiling forward and backward, and running that one
  step). Step times are the best of several warm steps. ``compile`` also counts the graphs
  compiled when ``n_steps`` changes (the second value makes it symbolic, later ones reuse that
  graph); ``compile_steps`` compiles at 20 and at 400 steps, each in a fresh process, since the
  solver's ``while_loop`` should make compile time independent of the step count;
  ``compile_steps_tsit5`` does the same with ``method="tsit5"`` (the coupled 7-stage
  tableau, automatic coupling); ``compile_cpp`` adds ``options={"cpp_wrapper": True}``.
* ``onnxruntime``, ``onnxruntime_256``: inference of the digits classifier
  (``examples/digits_parts.DigitsModel``, untrained, 6 steps) exported with
  ``mali_func.export.to_onnx``, onnxruntime (``CPUExecutionProvider``, one intra-op thread)
  against torch eager (``no_grad``, eval), median latency of repeated calls, and the largest
  difference between their outputs.

    python benchmarks/extras.py [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from _common import RESULTS, SmallField, fmt, md_table, run_child, save_json, timed, write
from extras_onnx import onnx_latency
from extras_vmap import vmap_compiled, vmap_per_sample
from torch import Tensor

Measure = Callable[[bool], dict[str, Any]]


@dataclass(frozen=True)
class Row:
    """One comparison: what is measured against what."""

    title: str
    baseline: str
    candidate: str
    measure: Measure | None = None


def _training_step(
    steps: int,
    options: dict[str, Any] | None = None,
    new_steps: Sequence[int] = (),
    repeats: int = 20,
    method: str = "alf",
    unroll: int = 1,
) -> dict[str, Any]:
    """Eager and compiled MALI training steps in this process, compiled into an empty cache.

    Returns the best eager and compiled step times, the first compiled call's wall time, the
    largest gradient difference, and how many graphs each later value in ``new_steps`` compiled.
    """
    import mali_func

    cache = tempfile.mkdtemp(prefix="inductor-cache-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # cold compile; also no dynamo PGO profile
    try:
        from torch._dynamo.utils import counters

        torch.set_num_threads(1)
        field = SmallField()
        torch.manual_seed(1)
        y0 = torch.randn(256, 2)
        t = torch.tensor([0.0, 1.0])

        def loss(y: Tensor, n: int) -> Tensor:
            ys = mali_func.odeint(
                field, y, t, n_steps=n, gradient="mali", method=method, unroll=unroll
            )
            return ys[-1].pow(2).mean()

        compiled = torch.compile(loss, fullgraph=True, options=options)

        def step(fn: Callable[[Tensor, int], Tensor], n: int) -> list[Tensor]:
            for p in field.parameters():
                p.grad = None
            fn(y0, n).backward()
            return [p.grad for p in field.parameters() if p.grad is not None]

        step(loss, steps)  # warm-up
        reference = step(loss, steps)
        first_s = timed(lambda: step(compiled, steps))
        graphs = counters["stats"]["unique_graphs"]
        err = max(
            float((a - b).abs().max() / b.abs().max())
            for a, b in zip(step(compiled, steps), reference, strict=True)
        )
        # Interleaved, so that a change in machine load reaches both sides alike.
        pairs = [
            (timed(lambda: step(loss, steps)), timed(lambda: step(compiled, steps)))
            for _ in range(repeats)
        ]
        eager_s = min(e for e, _ in pairs)
        compiled_s = min(c for _, c in pairs)
        recompiles, recompile_s = [], []
        for n in new_steps:
            before = counters["stats"]["unique_graphs"]
            recompile_s.append(timed(lambda n=n: step(compiled, n)))
            recompiles.append(counters["stats"]["unique_graphs"] - before)
        return {
            "steps": steps,
            "eager_s": eager_s,
            "compiled_s": compiled_s,
            "first_call_s": first_s,
            "graphs": graphs,
            "grad_rel_diff": err,
            "new_steps": list(new_steps),
            "recompiles": recompiles,
            "new_steps_first_call_s": recompile_s,
        }
    finally:
        shutil.rmtree(cache, ignore_errors=True)


SETTING = "MLP 2-64-2, batch 256, float32"


def _compile_vs_eager(quick: bool) -> dict[str, Any]:
    steps = 5 if quick else 20
    new = (steps + 1, 2 * steps - 3, 20 * steps)
    r = _training_step(steps, new_steps=new)
    counts = ", ".join(f"{c} at {n}" for n, c in zip(new, r["recompiles"]))
    return {
        "setting": f"{SETTING}, {steps} steps, best of 20 interleaved",
        "baseline_s": r["eager_s"],
        "candidate_s": r["compiled_s"],
        "check": f"gradients differ by {r['grad_rel_diff']:.1e} (relative);"
        f" graphs compiled for a new n_steps: {counts}"
        f" (the first made n_steps symbolic: {r['new_steps_first_call_s'][0]:.1f} s)",
        **r,
    }


def _compile_unrolled(quick: bool, unroll: int = 4) -> dict[str, Any]:
    steps = 5 if quick else 20
    r = _training_step(steps, unroll=unroll)
    return {
        "setting": f"{SETTING}, {steps} steps, best of 20 interleaved",
        "baseline_s": r["eager_s"],
        "candidate_s": r["compiled_s"],
        "check": f"gradients differ by {r['grad_rel_diff']:.1e} (relative);"
        f" first call {r['first_call_s']:.1f} s (cold cache)",
        **r,
    }


def _compile_only(point: dict[str, Any]) -> float:
    """The first compiled call's wall time less one warm compiled step."""
    return point["first_call_s"] - point["compiled_s"]


def _compile_steps(quick: bool, method: str = "alf") -> dict[str, Any]:
    few, many = 20, 400  # also with --quick: compile time, the cost here, does not depend on it
    child = "compile-point" if method == "alf" else f"compile-point-{method}"
    points = {n: run_child(Path(__file__), [child, str(n)]) for n in (few, many)}
    if any(p is None for p in points.values()):
        raise RuntimeError(f"a compile point failed: {points}")
    a, b = points[few], points[many]
    return {
        "setting": f"{SETTING}, method {method!r}, cold cache, first call's wall time",
        "baseline_s": b["first_call_s"],
        "candidate_s": a["first_call_s"],
        "check": f"ratio {many} / {few} steps {b['first_call_s'] / a['first_call_s']:.2f}"
        f" ({_compile_only(b) / _compile_only(a):.2f} less the warm step);"
        f" warm step at {many} steps {b['compiled_s']:.3f} s compiled, {b['eager_s']:.3f} s eager",
        "points": points,
    }


def _compile_cpp(quick: bool) -> dict[str, Any]:
    steps = 5 if quick else 20
    r = _training_step(steps, options={"cpp_wrapper": True})
    return {
        "setting": f"{SETTING}, {steps} steps, best of 20 interleaved",
        "baseline_s": r["eager_s"],
        "candidate_s": r["compiled_s"],
        "check": f"gradients differ by {r['grad_rel_diff']:.1e} (relative);"
        f" first call {r['first_call_s']:.1f} s (cold cache)",
        **r,
    }


POINTS: dict[str, Callable[[int], dict[str, Any]]] = {
    "compile-point": _training_step,
    "compile-point-tsit5": partial(_training_step, method="tsit5", repeats=3),
}
"""Helpers that a row's ``measure`` runs in fresh processes of their own: ``--child NAME ARG``."""


ROWS: dict[str, Row] = {
    "vmap": Row(
        "per-sample gradients through odeint (MALI)",
        "Python loop of autograd.grad",
        "torch.func.vmap(torch.func.grad(loss))",
        vmap_per_sample,
    ),
    "vmap_compiled": Row(
        "per-sample gradients through odeint (MALI)",
        "eager torch.func.vmap(torch.func.grad(loss))",
        "torch.compile(vmap(grad(loss)), fullgraph=True)",
        vmap_compiled,
    ),
    "compile": Row("MALI training step", "eager", "torch.compile", _compile_vs_eager),
    "compile_unroll": Row(
        "MALI training step",
        "eager",
        "torch.compile, odeint(..., unroll=4)",
        _compile_unrolled,
    ),
    "compile_steps": Row(
        "torch.compile time of a MALI training step", "400 steps", "20 steps", _compile_steps
    ),
    "compile_steps_tsit5": Row(
        "torch.compile time of a MALI training step, reversible Tsit5",
        "400 steps",
        "20 steps",
        partial(_compile_steps, method="tsit5"),
    ),
    "compile_cpp": Row(
        "MALI training step", "eager", 'torch.compile(options={"cpp_wrapper": True})', _compile_cpp
    ),
    "onnxruntime": Row(
        "digits classifier inference, exported to ONNX",
        "torch eager",
        "onnxruntime",
        partial(onnx_latency, batch=1),
    ),
    "onnxruntime_256": Row(
        "digits classifier inference, exported to ONNX",
        "torch eager",
        "onnxruntime",
        partial(onnx_latency, batch=256),
    ),
}


def run(out: Path, quick: bool = False) -> dict[str, dict[str, Any] | None]:
    """Measure every row that has a ``measure``, each in a fresh process; write ``extras.md``."""
    results: dict[str, dict[str, Any] | None] = {}
    for key, row in ROWS.items():
        if row.measure is not None:
            results[key] = run_child(Path(__file__), [key, *(["--quick"] if quick else [])])
    write(out / "extras.md", table(results))
    save_json(out / "extras.json", results)
    return results


def table(results: dict[str, dict[str, Any] | None], pending: bool = True) -> str:
    """Rows measured (and, with ``pending``, the hooks still to fill) as a markdown table."""
    rows = []
    for key, row in ROWS.items():
        r = results.get(key)
        what = f"{row.title}: {row.candidate} vs {row.baseline}"
        if r is None:
            if pending or row.measure is not None:
                state = "pending" if row.measure is None else "failed"
                rows.append([what, state, "", "", "", ""])
            continue
        speedup = r["baseline_s"] / r["candidate_s"]
        rows.append(
            [what, r["setting"], fmt(r["baseline_s"], ".3g"), fmt(r["candidate_s"], ".3g"),
             f"{speedup:.1f}x", r["check"]]
        )  # fmt: skip
    headers = ["comparison", "setting", "baseline s", "candidate s", "speedup", "check"]
    return md_table(headers, rows, "llrrrl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 steps instead of 20, fewer repeats")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.child:
        key, *args = ns.child
        if key in POINTS:
            print(json.dumps(POINTS[key](*map(int, args))))
            return
        measure = ROWS[key].measure
        assert measure is not None, f"row {key} has nothing to measure yet"
        print(json.dumps(measure(ns.quick)))
        return
    run(ns.out, ns.quick)
    print((ns.out / "extras.md").read_text())


if __name__ == "__main__":
    main()
