"""Head-to-head rows: one way of doing a job against another, seconds and speedup.

Each row is a :class:`Row` in :data:`ROWS`; a row whose ``measure`` is ``None`` is a hook for a
later comparison and is listed as pending. ``measure(quick)`` runs in a fresh process and returns
``{"setting", "baseline_s", "candidate_s", "check"}``; the speedup is ``baseline_s /
candidate_s``. To add a row, write its ``measure`` function here and put it in :data:`ROWS`.

Measured now: per-sample gradients of a Neural ODE loss through ``mali_func.odeint`` (MALI),
``torch.func.vmap(torch.func.grad(loss))`` against a Python loop of per-sample autograd, batch
64, field ``Linear(64,256)-tanh-Linear(256,64)``, float32, one thread; both timed warm (best of
three after one warm-up), and their gradients compared.

    python benchmarks/extras.py [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _common import RESULTS, CountingField, fmt, md_table, run_child, save_json, timed, write
from torch import Tensor

Measure = Callable[[bool], dict[str, Any]]


@dataclass(frozen=True)
class Row:
    """One comparison: what is measured against what."""

    title: str
    baseline: str
    candidate: str
    measure: Measure | None = None


def _vmap_per_sample(quick: bool) -> dict[str, Any]:
    from torch.func import functional_call, grad, vmap

    import mali_func

    torch.set_num_threads(1)
    batch, steps = 64, 5 if quick else 20
    field = CountingField(64, 256)
    names = [name for name, _ in field.named_parameters()]
    params = tuple(p.detach() for p in field.parameters())
    torch.manual_seed(1)
    xs = torch.randn(batch, 64)
    t = torch.tensor([0.0, 1.0])

    def f(t_: Tensor, y: Tensor, *ps: Tensor) -> Tensor:
        return functional_call(field, dict(zip(names, ps)), (t_, y))

    def loss(ps: tuple[Tensor, ...], x: Tensor) -> Tensor:
        z = mali_func.odeint(f, x[None], t, n_steps=steps, args=ps)[-1]
        return z.pow(2).mean()

    per_sample = vmap(grad(loss), in_dims=(None, 0))
    leaves = tuple(p.clone().requires_grad_() for p in params)

    def loop() -> list[tuple[Tensor, ...]]:
        return [torch.autograd.grad(loss(leaves, x), leaves) for x in xs]

    batched = per_sample(params, xs)
    looped = loop()
    err = max(
        float((b - torch.stack([g[i] for g in looped])).abs().max() / b.abs().max())
        for i, b in enumerate(batched)
    )
    loop_s = min(timed(loop) for _ in range(3))
    vmap_s = min(timed(lambda: per_sample(params, xs)) for _ in range(3))
    return {
        "setting": f"batch {batch}, {steps} steps, MLP 64-256-64, float32",
        "baseline_s": loop_s,
        "candidate_s": vmap_s,
        "check": f"max difference {err:.1e} (relative to the largest entry)",
    }


ROWS: dict[str, Row] = {
    "vmap": Row(
        "per-sample gradients through odeint (MALI)",
        "Python loop of autograd.grad",
        "torch.func.vmap(torch.func.grad(loss))",
        _vmap_per_sample,
    ),
    "compile": Row("training step", "eager", "torch.compile"),
    "onnxruntime": Row("forward solve, exported to ONNX", "torch eager", "onnxruntime"),
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
            [what, r["setting"], fmt(r["baseline_s"], ".3f"), fmt(r["candidate_s"], ".3f"),
             f"{speedup:.1f}x", r["check"]]
        )  # fmt: skip
    headers = ["comparison", "setting", "baseline s", "candidate s", "speedup", "check"]
    return md_table(headers, rows, "llrrrl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 steps instead of 20")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.child:
        measure = ROWS[ns.child].measure
        assert measure is not None, f"row {ns.child} has nothing to measure yet"
        print(json.dumps(measure(ns.quick)))
        return
    run(ns.out, ns.quick)
    print((ns.out / "extras.md").read_text())


if __name__ == "__main__":
    main()
