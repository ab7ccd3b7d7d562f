"""The combined table (``README-table.md``) and the proposed README section (``README-section.md``).

Both are built from the results of :mod:`scaling`, :mod:`accuracy` and :mod:`extras`; every number
in the prose is read from those results, so the text stays true when the benchmark is rerun.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import accuracy
import extras
from _common import fmt, machine, md_table
from methods import LABELS, METHODS
from scaling import Results, repeats_for

COMMAND = "make bench"


def _best(runs: Sequence[dict[str, Any]], dtype: str, series: str, budget: int) -> str:
    data = next((d for d in runs if d["dtype"] == dtype), None)
    best = None if data is None else accuracy.best_within(data, series, budget)
    return "n/a" if best is None else f"{best['error']:.1e}"


def combined_table(
    scaling: Results, runs: Sequence[dict[str, Any]], budget: int, n_max: int
) -> str:
    """One row per method: memory and time at ``n_max`` steps, gradient error within ``budget``."""
    rows = []
    for series in (*METHODS, "mali_eta09", *accuracy.ADAPTIVE):
        p = scaling.get(series, {}).get(n_max)
        ref = scaling.get("backprop", {}).get(n_max)
        ratio = p["warm"] / ref["warm"] if p and ref else None
        label = accuracy.SERIES_LABELS[series] if series not in LABELS else LABELS[series]
        rows.append(
            [
                label,
                fmt(p["mb"], ".0f") if p else "",
                fmt(p["cold"], ".2f") if p else "",
                fmt(p["warm"], ".2f") if p else "",
                fmt(ratio, ".2f") if p else "",
                _best(runs, "float64", series, budget),
                _best(runs, "float32", series, budget),
            ]
        )
    t1 = runs[0]["t1"] if runs else 0.0
    headers = [
        "method",
        f"extra memory, {n_max} steps (MB)",
        f"cold s, {n_max} steps",
        f"warm s, {n_max} steps",
        "warm / ALF backprop",
        f"gradient error, float64 (t1 = {t1:g}, at most {budget} f-evals)",
        "same, float32",
    ]
    return md_table(headers, rows, "lrrrrrr")


def readme_table(
    scaling: Results, runs: Sequence[dict[str, Any]], vmap: dict[str, Any], budget: int
) -> str:
    """``README-table.md``: the combined table and the measured head-to-head rows."""
    steps = sorted({n for points in scaling.values() for n in points})
    n_max = steps[-1] if steps else 0
    return "\n\n".join(
        [
            combined_table(scaling, runs, budget, n_max),
            extras.table(vmap, pending=False),
        ]
    )


def _figures(scaling: Results, runs: Sequence[dict[str, Any]], n_max: int) -> list[str]:
    """Sentences with the key numbers, read from the results."""
    out = []
    mem = {m: p[n_max] for m, p in scaling.items() if p.get(n_max)}
    if mem:
        parts = "; ".join(f"{LABELS[m]} {p['mb']:.0f} MB" for m, p in mem.items())
        out.append(f"Peak memory growth of one training step at {n_max} steps: {parts}.")
    if "mali" in mem and "backprop" in mem:
        r = mem["mali"]["warm"] / mem["backprop"]["warm"]
        out.append(
            f"Warm, at {n_max} steps, MALI takes {r:.2f}x the time of backprop through the same"
            f" ALF steps ({mem['mali']['evals']} against {mem['backprop']['evals']} field calls)."
        )
    if "mali" in mem and "tdep_mali" in mem:
        r = mem["tdep_mali"]["warm"] / mem["mali"]["warm"]
        out.append(f"TorchDiffEqPack's MALI takes {r:.2f}x the time of ours at equal steps.")
    for data in runs:
        pts = {(p["series"], p["setting"]): p.get("error") for p in data["points"] if "error" in p}
        same = {
            int(s): pts[("mali", s)] / pts[("backprop", s)]
            for (series, s) in pts
            if series == "mali" and pts.get(("backprop", s))
        }
        if same:
            ratios = ", ".join(f"{r:.3g} at {n}" for n, r in sorted(same.items()))
            out.append(
                f"{data['dtype']}: MALI's gradient error over that of backprop through the same"
                f" ALF steps, by number of steps: {ratios}."
            )
        drifts = [p["drift"] for p in data["points"] if p["series"] == "mali" and p.get("drift")]
        if drifts:
            out.append(
                f"{data['dtype']}: MALI (eta = 1) rebuilt z(0) with a relative reconstruction"
                f" error (its `DriftMonitor`) between {min(drifts):.0e} and {max(drifts):.0e}."
            )
    if runs:
        out.append(
            "Why undamped ALF needs many steps on the gradient-error problem: its step is stable"
            " only for eigenvalues on the imaginary axis (design notes, section 1), and the `-z`"
            " term puts this field's eigenvalues on the negative real side, where the parasitic"
            " mode grows; MALI and TorchDiffEqPack's MALI share that step, RK4 and dopri5 do not."
        )
    return out


def _extras_figures(heads: dict[str, Any]) -> list[str]:
    """Sentences on the torch.compile and ONNX rows, read from the results (those present)."""
    out = []
    steps = (heads.get("compile_steps") or {}).get("points") or {}
    if steps:
        few, many = (steps[k] for k in sorted(steps, key=int))
        ratio = many["first_call_s"] / few["first_call_s"]
        verdict = (
            "compile time does not grow with the steps (the solver is one `while_loop`)"
            if ratio <= 1.5
            else "compile time grows with the steps"
        )
        out.append(
            f"torch.compile (inductor, `fullgraph=True`): the first compiled MALI training step"
            f" takes {few['first_call_s']:.1f} s at {few['steps']} steps and"
            f" {many['first_call_s']:.1f} s at {many['steps']} ({ratio:.2f}x) with an empty"
            f" inductor cache: {verdict}."
        )
    r = heads.get("compile")
    if r and r.get("recompiles"):
        counts = ", ".join(f"{c} at {n}" for n, c in zip(r["new_steps"], r["recompiles"]))
        out.append(
            f"Graphs compiled when `n_steps` changes after {r['steps']}: {counts} (the first new"
            " value makes `n_steps` symbolic; later ones reuse that graph)."
        )
    for key in ("onnxruntime", "onnxruntime_256"):
        r = heads.get(key)
        if r:
            out.append(
                f"ONNX, batch {r['batch']}: onnxruntime"
                f" {r['candidate_s'] * 1e3:.3g} ms, torch eager {r['baseline_s'] * 1e3:.3g} ms"
                f" ({r['baseline_s'] / r['candidate_s']:.1f}x)."
            )
    return out


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    took = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} minutes"
    return f"{took} here; "


def readme_section(
    where: str,
    scaling: Results,
    runs: Sequence[dict[str, Any]],
    vmap: dict[str, Any],
    budget: int,
    runtime_s: float | None,
    quick: bool,
) -> str:
    """``README-section.md``: the text proposed for the README's *Results* section."""
    info = machine()
    steps = sorted({n for points in scaling.values() for n in points})
    n_max = steps[-1] if steps else 0
    versions = ", ".join(f"{k} {v}" for k, v in info.items() if k not in ("cpu", "cores"))
    warning = (
        "> QUICK RUN (`--quick`): small sizes for a smoke test; do not paste into the README.\n\n"
        if quick
        else ""
    )
    lines = [
        warning + "## Results",
        "",
        f"Measured on a {info['cores']}-core {info['cpu']} machine, one thread, {versions}.",
        f"Regenerate everything with `{COMMAND}` ({_duration(runtime_s)}it runs"
        f" `benchmarks/run_all.py`, which writes every table and plot into `{where}/`).",
        "",
        "Memory and time: `f = Linear(64,256)-tanh-Linear(256,64)`, batch 256, float32, `t` in"
        f" [0, 1], `loss = mean(z(1)^2)`, fixed steps ({', '.join(map(str, steps))});"
        " each point in a fresh process; memory is the growth of its peak resident set during"
        " one forward+backward, *cold* the first training step in the process, *warm* the best of"
        f" the next {repeats_for(1)} ({repeats_for(10**9)} above 300 steps).",
        "Gradient error: `f = Linear(16,64)-tanh-Linear(64,16)(z) - z`, batch 64,"
        f" `t` in [0, {runs[0]['t1'] if runs else 0:g}], relative 2-norm error of the gradient in"
        " `z(0)` and all parameters against torchdiffeq dopri5 at rtol = atol = 1e-12 in float64"
        " with backprop; the best error of each method using at most"
        f" {budget} field evaluations (forward and backward calls both count).",
        "Head-to-head rows: each in a fresh process. torch.compile: a MALI training step of"
        " `f = Linear(2,64)-tanh-Linear(64,2)`, batch 256, with the default inductor backend;"
        " compile time is the wall time of the first compiled call (compiling forward and"
        " backward, then running that step) with an empty inductor cache. ONNX: the digits"
        " classifier of `examples/digits_parts.py` (untrained weights, 6 steps) exported with"
        " `mali_func.export.to_onnx`, onnxruntime's CPU provider with one intra-op thread"
        " against torch eager under `no_grad`.",
        "",
        readme_table(scaling, runs, vmap, budget),
        "",
        *(f"- {s}" for s in [*_figures(scaling, runs, n_max), *_extras_figures(vmap)]),
        "",
        f"![peak memory]({where}/memory.png)",
        f"![time per training step]({where}/time.png)",
        f"![gradient error]({where}/accuracy.png)",
        "",
        f"Details: [memory]({where}/memory.md), [time]({where}/time.md),"
        f" [gradient error]({where}/accuracy.md),"
        f" [head-to-head rows]({where}/extras.md).",
    ]
    return "\n".join(lines)


def _where(out: Path) -> str:
    """``out`` relative to the repository root (where the README lives), when it is inside."""
    root = Path(__file__).resolve().parent.parent
    try:
        return out.resolve().relative_to(root).as_posix()
    except ValueError:
        return out.resolve().as_posix()


def write_reports(
    out: Path,
    scaling: Results,
    runs: Sequence[dict[str, Any]],
    vmap: dict[str, Any],
    runtime_s: float | None,
    quick: bool,
) -> None:
    """Write ``README-table.md`` and ``README-section.md`` into ``out``."""
    from _common import write

    budget = accuracy.summary_budget(runs, quick)
    write(out / "README-table.md", readme_table(scaling, runs, vmap, budget))
    write(
        out / "README-section.md",
        readme_section(_where(out), scaling, runs, vmap, budget, runtime_s, quick),
    )
