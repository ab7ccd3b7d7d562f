"""Gradient error against the number of field evaluations on a long, contracting solve.

Problem: ``f(t, z) = Linear(16,64)-tanh-Linear(64,16)(z) - z`` (the ``-z`` term makes the flow
contract, so any reverse-time reconstruction of ``z`` expands errors by about ``e^t1``), batch 64,
``t`` in [0, 10], ``loss = mean(z(10)^2)``; the gradient is taken with respect to ``z(0)`` and
every parameter and compared in relative 2-norm with a reference.

Reference: torchdiffeq ``dopri5`` with ``rtol = atol = 1e-12`` in float64, differentiated by plain
backprop through its steps. It is the gradient of a fifth-order solve whose local error is held at
1e-12, so it estimates the gradient of the exact solution far below any error measured here; and
backprop adds no reverse-time solve of its own. Its own error is checked twice and reported: against
the same solve at 1e-10, and against RK4 backprop at the finest grid, an independent method.

Series: our MALI (ALF, eta = 1 and the damped eta = 0.9) and our ALF with backprop on N fixed
steps; torchdiffeq ``odeint_adjoint`` and ``odeint`` with RK4 on N fixed steps and with dopri5 at
a range of tolerances; TorchDiffEqPack's fixed-step MALI; our plain RK4 and Tsit5 steps with
``gradient="checkpoint"`` on fixed steps, and Tsit5 with it at a range of tolerances. Field
evaluations are counted in the field's ``forward``, so those of a backward pass (MALI's
reconstruction, the adjoint's augmented solve, checkpointing's recomputation) count too. Each
dtype (float64, float32) runs in its own fresh process; in float32 the solvers integrate the
float32-rounded problem, still compared with the float64 reference.

    python benchmarks/accuracy.py [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from _common import RESULTS, CountingField, fmt, md_table, run_child, save_json, write
from methods import LABELS, STYLES, make_solve
from plots import Line, Panel, loglog
from torch import Tensor

# 80 and 150 steps: coupled Tsit5 (28 evaluations a step) and RK4 (16) just within the budget.
FULL = {"t1": 10.0, "steps": [10, 30, 80, 150, 300, 1000], "tols": [10.0**-k for k in range(3, 11)]}
QUICK = {"t1": 2.0, "steps": [10, 30], "tols": [1e-3, 1e-5]}
BUDGET = 2500  # field evaluations: the summary reports each series' best error within it
FIXED = (
    "mali",
    "mali_eta09",
    "backprop",
    "rk4_mali",
    "tsit5_mali",
    "heun_mali",
    "rk4_ckpt",
    "tsit5_ckpt",
    "tde_adjoint",
    "tde_backprop",
    "tdep_mali",
)
ADAPTIVE = ("dopri5_adjoint", "dopri5_backprop", "tsit5_ckpt_adaptive")
SERIES_LABELS = {
    **LABELS,
    "mali": "mali-func MALI (eta = 1)",
    "mali_eta09": "mali-func MALI (eta = 0.9)",
    "dopri5_adjoint": "torchdiffeq odeint_adjoint, dopri5",
    "dopri5_backprop": "torchdiffeq odeint, dopri5, backprop",
    "tsit5_ckpt_adaptive": "mali-func Tsit5 adaptive, checkpoint",
}
SERIES_STYLES = {
    **STYLES,
    "mali_eta09": {"color": "C4", "marker": "o", "linestyle": ":"},
    "dopri5_adjoint": {"color": "C3", "marker": "^"},
    "dopri5_backprop": {"color": "C3", "marker": "v", "linestyle": "--"},
    "tsit5_ckpt_adaptive": {"color": "C9", "marker": "*", "linestyle": "-."},
}
Solve = Callable[[CountingField, Tensor, Tensor], Tensor]


def _solver(series: str, setting: float) -> tuple[Solve, dict[str, Any]]:
    """``solve(field, y0, t) -> z(t1)`` for one point, and what it reports besides the error."""
    extra: dict[str, Any] = {}
    if series in ("mali", "mali_eta09"):
        import mali_func

        monitor = mali_func.DriftMonitor()

        def mali(field: CountingField, y0: Tensor, t: Tensor) -> Tensor:
            eta = 1.0 if series == "mali" else 0.9
            kw = {"eta": eta, "monitor": monitor, "reconstruction_tol": None}
            return mali_func.odeint(field, y0, t, n_steps=int(setting), **kw)[-1]

        extra["monitor"] = monitor
        return mali, extra
    if series == "tsit5_ckpt_adaptive":
        import mali_func

        def tsit5(field: CountingField, y0: Tensor, t: Tensor) -> Tensor:
            kw = {"method": "tsit5", "coupling": None, "gradient": "checkpoint"}
            return mali_func.odeint(field, y0, t, rtol=setting, atol=setting, **kw)[-1]

        return tsit5, extra
    if series in ADAPTIVE:
        import torchdiffeq

        adjoint = series == "dopri5_adjoint"
        integrate = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint

        def dopri5(field: CountingField, y0: Tensor, t: Tensor) -> Tensor:
            opts = {"max_num_steps": 200_000}
            return integrate(
                field, y0, t, method="dopri5", rtol=setting, atol=setting, options=opts
            )[-1]

        return dopri5, extra

    def fixed(field: CountingField, y0: Tensor, t: Tensor) -> Tensor:
        return make_solve(series, field, y0, float(t[-1]), int(setting))()

    return fixed, extra


def gradient(
    field: CountingField, y0: Tensor, t: Tensor, solve: Solve
) -> tuple[Tensor, int, float]:
    """Flat float64 gradient of ``mean(z(t1)^2)`` in ``(z0, params)``, field calls, seconds."""
    field.zero_grad(set_to_none=True)
    field.calls = 0
    y = y0.detach().clone().requires_grad_()
    start = time.perf_counter()
    solve(field, y, t).pow(2).mean().backward()
    seconds = time.perf_counter() - start
    assert y.grad is not None
    parts = [
        y.grad.flatten(),
        *(p.grad.flatten() for p in field.parameters() if p.grad is not None),
    ]
    return torch.cat(parts).double(), field.calls, seconds


def _rel(g: Tensor, ref: Tensor) -> float:
    return float((g - ref).norm() / ref.norm())


def _child(dtype_name: str, quick: bool) -> dict[str, Any]:
    """All points of one dtype, in this (fresh) process."""
    torch.set_num_threads(1)
    cfg = QUICK if quick else FULL
    base = CountingField(16, 64, damping=1.0).double()
    torch.manual_seed(1)
    y0 = torch.randn(64, 16, dtype=torch.float64)
    t = torch.tensor([0.0, cfg["t1"]], dtype=torch.float64)
    ref, ref_evals, _ = gradient(base, y0, t, _solver("dopri5_backprop", 1e-12)[0])
    check, _, _ = gradient(base, y0, t, _solver("dopri5_backprop", 1e-10)[0])
    rk4, _, _ = gradient(base, y0, t, _solver("tde_backprop", max(cfg["steps"]))[0])
    dtype = getattr(torch, dtype_name)
    field, y = copy.deepcopy(base).to(dtype), y0.to(dtype)
    for series in FIXED:  # first calls pay for imports and lazy initialisation: not timed
        gradient(field, y, t.to(dtype), _solver(series, 2.0)[0])
    points = []
    plan = [(s, float(n)) for s in FIXED for n in cfg["steps"]]
    plan += [(s, tol) for s in ADAPTIVE for tol in cfg["tols"]]
    for series, setting in plan:
        solve, extra = _solver(series, setting)
        try:
            g, evals, seconds = gradient(field, y, t.to(dtype), solve)
        except Exception as exc:  # a solver that gives up is a result too
            points.append({"series": series, "setting": setting, "failed": repr(exc)[:200]})
            continue
        drift = extra["monitor"].error if "monitor" in extra else None
        points.append(
            {
                "series": series,
                "setting": setting,
                "evals": evals,
                "seconds": seconds,
                "error": _rel(g, ref),
                "drift": None if drift is None else float(drift),
            }
        )
    return {
        "dtype": dtype_name,
        "t1": cfg["t1"],
        "reference": {"evals": ref_evals, "vs_1e-10": _rel(check, ref), "vs_rk4": _rel(rk4, ref)},
        "rk4_steps": max(cfg["steps"]),
        "points": points,
    }


def _setting(series: str, setting: float) -> str:
    return f"tol {setting:.0e}" if series in ADAPTIVE else f"{int(setting)} steps"


def _error(p: dict[str, Any]) -> float | None:
    e = p.get("error")
    return None if e is None or not math.isfinite(e) else e


def best_within(data: dict[str, Any], series: str, budget: int) -> dict[str, Any] | None:
    """The point of ``series`` with the lowest error using at most ``budget`` field calls."""
    ok = [p for p in data["points"] if p["series"] == series and _error(p) is not None]
    ok = [p for p in ok if p["evals"] <= budget]
    return min(ok, key=lambda p: p["error"], default=None)


def table(data: dict[str, Any]) -> str:
    """One dtype: every point, with the reference's self-checks in the heading."""
    r = data["reference"]
    head = (
        f"### Gradient error, {data['dtype']}, t in [0, {data['t1']:g}]\n\n"
        f"Reference: dopri5 rtol = atol = 1e-12, float64, backprop ({r['evals']} field calls); "
        f"it differs by {r['vs_1e-10']:.1e} from the same solve at 1e-10 and by "
        f"{r['vs_rk4']:.1e} from RK4 backprop on {data['rk4_steps']} steps.\n\n"
    )
    rows = []
    for p in data["points"]:
        label, setting = SERIES_LABELS[p["series"]], _setting(p["series"], p["setting"])
        if "failed" in p:
            rows.append([label, setting, "", "", f"failed: {p['failed'][:60]}", ""])
            continue
        drift = fmt(p["drift"], ".1e") if p["drift"] is not None else ""
        e = p["error"]
        rows.append([label, setting, p["evals"], f"{p['seconds']:.2f}", f"{e:.2e}", drift])
    headers = ["method", "setting", "field calls", "seconds", "relative gradient error"]
    headers.append("MALI reconstruction error")
    return head + md_table(headers, rows, "llrrrr")


def summary(runs: Sequence[dict[str, Any]], budget: int) -> str:
    """Best error within ``budget`` field calls, per series and dtype."""
    rows = []
    for series in (*FIXED, *ADAPTIVE):
        row: list[object] = [SERIES_LABELS[series]]
        for data in runs:
            best = best_within(data, series, budget)
            cell = "none" if best is None else f"{best['error']:.1e} ({best['evals']} calls, "
            cell += "" if best is None else _setting(series, best["setting"]) + ")"
            row.append(cell)
        rows.append(row)
    headers = ["method", *(f"{d['dtype']}: best error (calls, setting)" for d in runs)]
    return (
        f"### Best gradient error within {budget} field calls, t in [0, {runs[0]['t1']:g}]\n\n"
        + md_table(headers, rows)
    )


def plot(runs: Sequence[dict[str, Any]], out: Path) -> Path:
    """``accuracy.png``: error against field calls, one panel per dtype."""
    panels = []
    for data in runs:
        lines = []
        for series in (*FIXED, *ADAPTIVE):
            pts = [p for p in data["points"] if p["series"] == series and _error(p) is not None]
            pts.sort(key=lambda p: p["evals"])
            xs, ys = [p["evals"] for p in pts], [p["error"] for p in pts]
            lines.append(Line(SERIES_LABELS[series], xs, ys, SERIES_STYLES[series]))
        title = f"{data['dtype']} solvers vs float64 reference, t in [0, {data['t1']:g}]"
        panels.append(
            Panel(lines, "field evaluations (forward + backward)", "relative gradient error", title)
        )
    title = "MLP 16-64-16 field with -z damping, batch 64"
    return loglog(out / "accuracy.png", panels, title, legend_below=True)


def summary_budget(runs: Sequence[dict[str, Any]], quick: bool) -> int:
    """:data:`BUDGET`, or in a quick run (few, small points) the largest count measured."""
    if not quick:
        return BUDGET
    return max((p.get("evals", 0) for d in runs for p in d["points"]), default=0)


def run(out: Path, quick: bool = False) -> list[dict[str, Any]]:
    """Both dtypes in fresh processes; writes ``accuracy.md``, ``accuracy.png``, the JSON."""
    args = ["--quick"] if quick else []
    runs = [
        d for d in (run_child(Path(__file__), [dt, *args]) for dt in ("float64", "float32")) if d
    ]
    if not runs:
        raise RuntimeError("accuracy: every child process failed")
    budget = summary_budget(runs, quick)
    parts = [summary(runs, budget), *(table(d) for d in runs)]
    write(out / "accuracy.md", "\n\n".join(parts))
    save_json(out / "accuracy.json", runs)
    plot(runs, out)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="t in [0, 2], 10 and 30 steps")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.child:
        print(json.dumps(_child(ns.child[0], ns.quick)))
        return
    run(ns.out, ns.quick)
    print((ns.out / "accuracy.md").read_text())


if __name__ == "__main__":
    main()
