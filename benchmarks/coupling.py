"""The coupling trade-off of the reversible Runge-Kutta methods, measured.

Problem: the contracting accuracy problem of ``benchmarks/accuracy.py`` (``f = Linear(16,64)-tanh-
Linear(64,16)(z) - z``, batch 64, ``t`` in [0, 10], ``loss = mean(z(10)^2)``), with its reference:
torchdiffeq dopri5 at rtol = atol = 1e-12 in float64 through backprop (``accuracy.gradient``),
checked here against coupled RK4 backprop on 2,000 steps.

Coupled RK4 (``y' = lam y + (1 - lam) z + Psi_h(t, z)``, ``z' = z - Psi_{-h}(t + h, y')``) on 80
and 160 fixed steps (1,281 and 2,561 field evaluations forward + backward through MALI), for a
sweep of fixed couplings ``lam`` and for ``coupling="auto"``, in float64 and float32: the relative
2-norm error of the MALI gradient (in ``z(0)`` and every parameter), of backprop through the same
coupled steps (``gradient="backprop"``), and MALI's reconstruction error of the initial state
``(y0, z0)`` (the ``DriftMonitor``: ``max|rebuilt - kept| / (1 + max|kept|)``).

On ``y' = mu y`` with ``w = h mu`` the parasitic mode grows by about ``lam / R(w)`` per forward
step and ``R(w) / lam`` per reversed step (``R`` the RK4 stability polynomial; design notes,
section 5). ``lam`` near 1 lets it grow forward: the discrete gradient itself is wrong (MALI and
backprop alike). A small ``lam`` amplifies round-off by about ``lam^-N`` in the reverse pass: the
reconstruction drifts and MALI's gradient leaves backprop's (first in float32). ``"auto"`` picks
``lam = clip(R(-|h| rho)^1.5, 0.5, 1)`` from an estimate ``rho`` of the fastest contraction; the
report gives the ``lam`` it chose.

Writes ``coupling.png`` (errors against ``lam``, log scale; horizontal lines: ``"auto"``) and
``coupling.md`` (the table and, per step count and dtype, the ``lam`` of the smallest MALI error).

    python benchmarks/coupling.py [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import copy
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _common import RESULTS, CountingField, md_table, write
from accuracy import _solver
from accuracy import gradient as flat_gradient
from torch import Tensor

import mali_func

COUPLINGS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99, 0.999)
STEPS = (80, 160)
DTYPES = (torch.float64, torch.float32)
T1 = 10.0
Solve = Callable[[CountingField, Tensor, Tensor], Tensor]
Row = dict[str, Any]


def problem() -> tuple[CountingField, Tensor, Tensor]:
    """The field, ``z(0)`` and ``t`` of ``benchmarks/accuracy.py`` (float64)."""
    field = CountingField(16, 64, damping=1.0).double()
    torch.manual_seed(1)
    y0 = torch.randn(64, 16, dtype=torch.float64)
    return field, y0, torch.tensor([0.0, T1], dtype=torch.float64)


def coupled_rk4(steps: int, coupling: float | str, **options: Any) -> Solve:
    """``solve(field, y0, t) -> z(t1)`` by coupled RK4 on ``steps`` fixed steps."""

    def solve(field: CountingField, y0: Tensor, t: Tensor) -> Tensor:
        ys = mali_func.odeint(field, y0, t, method="rk4", n_steps=steps, coupling=coupling,
                              **options)  # fmt: skip
        return ys[-1]

    return solve


def rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


def point(field: CountingField, y0: Tensor, t: Tensor, steps: int, coupling: float | str,
          ref: Tensor) -> Row:  # fmt: skip
    """MALI and backprop gradient errors, reconstruction error, MALI field calls: one setting."""
    monitor = mali_func.DriftMonitor(dtype=y0.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the drift is what is measured here
        # The raw MALI gradient (fallback=False): its error is what the coupling decides.
        solve = coupled_rk4(steps, coupling, monitor=monitor, fallback=False)
        mali, calls, _ = flat_gradient(field, y0, t, solve)
    backprop, _, _ = flat_gradient(field, y0, t, coupled_rk4(steps, coupling, gradient="backprop"))
    drift = float(monitor.error) if monitor.error is not None else math.nan
    return {"steps": steps, "coupling": coupling, "dtype": str(y0.dtype)[6:], "evals": calls,
            "mali": rel(mali, ref), "backprop": rel(backprop, ref),
            "reconstruction": drift}  # fmt: skip


def sweep() -> tuple[list[Row], dict[str, Any]]:
    """Every (steps, coupling, dtype) point, and facts about the reference and ``"auto"``."""
    torch.set_num_threads(1)
    base, y0, t = problem()
    ref, ref_calls, _ = flat_gradient(base, y0, t, _solver("dopri5_backprop", 1e-12)[0])
    check, _, _ = flat_gradient(base, y0, t, coupled_rk4(2000, 0.9, gradient="backprop"))
    info = {"ref_calls": ref_calls, "ref_vs_rk4": rel(check, ref)}
    rows: list[Row] = []
    for dtype in DTYPES:
        field = copy.deepcopy(base).to(dtype)
        for steps in STEPS:
            for coupling in (*COUPLINGS, "auto"):
                rows.append(point(field, y0.to(dtype), t.to(dtype), steps, coupling, ref))
    return rows, info


def _pick(rows: list[Row], steps: int, dtype: str) -> list[Row]:
    return [r for r in rows if r["steps"] == steps and r["dtype"] == dtype]


def best(rows: list[Row], steps: int, dtype: str) -> Row:
    """The fixed coupling with the smallest MALI gradient error."""
    fixed = [r for r in _pick(rows, steps, dtype) if r["coupling"] != "auto"]
    return min(fixed, key=lambda r: r["mali"] if math.isfinite(r["mali"]) else math.inf)


def plot(rows: list[Row], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = (("mali", "MALI gradient error"), ("backprop", "backprop gradient error"),
            ("reconstruction", "MALI reconstruction error"))  # fmt: skip
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    axes[1].sharey(axes[0])  # the gradient errors on one scale; the drift spans far more
    for ax, (key, title) in zip(axes, keys):
        for i, steps in enumerate(STEPS):
            for dtype, style in (("float64", "-"), ("float32", ":")):
                pts = _pick(rows, steps, dtype)
                fixed = [r for r in pts if r["coupling"] != "auto"]
                auto = next(r for r in pts if r["coupling"] == "auto")
                label = f"{steps} steps ({fixed[0]['evals']} evals), {dtype}"
                ax.semilogy([r["coupling"] for r in fixed], [r[key] for r in fixed], style,
                            marker="o", ms=3, color=f"C{i}", label=label)  # fmt: skip
                ax.axhline(auto[key], color=f"C{i}", ls=style, lw=0.8, alpha=0.6)
        ax.set_xlabel("coupling lam (horizontal lines: coupling='auto')")
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("relative error")
    axes[2].set_ylabel("max|rebuilt - kept| / (1 + max|kept|)")
    axes[1].legend(fontsize=8, loc="upper left")
    fig.suptitle("Coupled RK4 on the contracting accuracy problem (MLP 16-64-16 minus z, "
                 "t in [0, 10])", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(out / "coupling.png", dpi=110)
    plt.close(fig)


def table(rows: list[Row], info: dict[str, Any]) -> str:
    lines = []
    for steps in STEPS:
        for coupling in (*COUPLINGS, "auto"):
            label = str(coupling)
            cells = [f"{steps} ({_pick(rows, steps, 'float64')[0]['evals']})", label]
            for dtype in ("float64", "float32"):
                r = next(x for x in _pick(rows, steps, dtype) if x["coupling"] == coupling)
                cells += [f"{r['mali']:.1e}", f"{r['backprop']:.1e}", f"{r['reconstruction']:.0e}"]
            lines.append(cells)
    headers = ["steps (MALI evals)", "coupling", "float64 MALI", "float64 backprop",
               "float64 reconstruction", "float32 MALI", "float32 backprop",
               "float32 reconstruction"]  # fmt: skip
    summary = []
    for steps in STEPS:
        for dtype in ("float64", "float32"):
            b = best(rows, steps, dtype)
            auto = next(r for r in _pick(rows, steps, dtype) if r["coupling"] == "auto")
            summary.append(
                f"- {steps} steps, {dtype}: smallest MALI error {b['mali']:.1e} at lam = "
                f"{b['coupling']}; auto {auto['mali']:.1e}."
            )
    head = (
        "Coupled RK4 on the contracting accuracy problem, relative gradient errors against "
        f"torchdiffeq dopri5 at 1e-12 (float64, backprop, {info['ref_calls']} field calls; it "
        f"differs by {info['ref_vs_rk4']:.0e} from coupled RK4 backprop on 2,000 steps). "
        "Reconstruction: the `DriftMonitor`'s relative error of the rebuilt `(y0, z0)`. "
        'MALI: the raw gradient (`fallback=False`). `auto`: `coupling="auto"`, each step\'s `lam` '
        "from that step's own stage derivatives (no extra field evaluation).\n\n"
    )
    return head + md_table(headers, lines, "ll" + "r" * 6) + "\n\n" + "\n".join(summary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    ns = parser.parse_args()
    rows, info = sweep()
    text = table(rows, info)
    write(ns.out / "coupling.md", text)
    plot(rows, ns.out)
    print(text)


if __name__ == "__main__":
    main()
