"""The coupling trade-off of the reversible Runge-Kutta methods, measured.

Problem: the contracting accuracy problem of ``benchmarks/accuracy.py`` (``f = Linear(16,64)-tanh-
Linear(64,16)(z) - z``, batch 64, ``t`` in [0, 10], ``loss = mean(z(10)^2)``). Coupled RK4 through
MALI at 80 and 160 steps (1,281 and 2,561 field evaluations forward + backward) for a sweep of
fixed couplings ``lam`` and for ``coupling="auto"``: relative 2-norm error of the gradient (in
``z(0)`` and every parameter) against coupled RK4 backprop at 2,000 steps in float64, and the
relative reconstruction error of the rebuilt initial state (the ``DriftMonitor``), in float64 and
float32. ``lam`` near 1 lets the parasitic mode grow forward (gradient error), a small ``lam``
amplifies round-off in the reverse pass (reconstruction error, then gradient error in float32).

Writes ``coupling.png`` and ``coupling.md``.

    python benchmarks/coupling.py [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import copy
import warnings
from pathlib import Path

import torch
from _common import RESULTS, CountingField, md_table, write
from torch import Tensor

import mali_func

COUPLINGS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99, 0.999)
STEPS = (80, 160)
DTYPES = (torch.float64, torch.float32)


def gradient(
    field: CountingField, y0: Tensor, t: Tensor, monitor: mali_func.DriftMonitor | None, **options
) -> Tensor:
    y = y0.clone().requires_grad_()
    field.zero_grad()
    ys = mali_func.odeint(field, y, t, monitor=monitor, method="rk4", **options)
    ys[-1].pow(2).mean().backward()
    grads = [y.grad, *(p.grad for p in field.parameters())]
    return torch.cat([g.flatten().double() for g in grads if g is not None])


def sweep() -> list[dict[str, object]]:
    torch.set_num_threads(1)
    base = CountingField(16, 64, damping=1.0).double()
    torch.manual_seed(1)
    y0 = torch.randn(64, 16, dtype=torch.float64)
    t = torch.tensor([0.0, 10.0], dtype=torch.float64)
    ref = gradient(base, y0, t, None, n_steps=2000, coupling=0.9, gradient="backprop")
    fields = {torch.float64: base, torch.float32: copy.deepcopy(base).float()}
    rows: list[dict[str, object]] = []
    for steps in STEPS:
        for coupling in (*COUPLINGS, "auto"):
            for dtype in DTYPES:
                monitor = mali_func.DriftMonitor(dtype=dtype)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the drift is what is measured here
                    g = gradient(fields[dtype], y0.to(dtype), t.to(dtype), monitor,
                                 n_steps=steps, coupling=coupling)  # fmt: skip
                error = float((g - ref).norm() / ref.norm())
                drift = float(monitor.error) if monitor.error is not None else float("nan")
                rows.append({"steps": steps, "coupling": coupling, "dtype": str(dtype)[6:],
                             "gradient_error": error, "reconstruction_error": drift})  # fmt: skip
    return rows


def plot(rows: list[dict[str, object]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for k, key in enumerate(("gradient_error", "reconstruction_error")):
        ax = axes[k]
        for i, steps in enumerate(STEPS):
            for dtype, style in (("float64", "-"), ("float32", ":")):
                pts = [r for r in rows if r["steps"] == steps and r["dtype"] == dtype]
                fixed = [r for r in pts if r["coupling"] != "auto"]
                auto = next(r for r in pts if r["coupling"] == "auto")
                color = f"C{i}"
                ax.semilogy(
                    [r["coupling"] for r in fixed],
                    [r[key] for r in fixed],
                    style,
                    marker="o",
                    ms=3,
                    color=color,
                    label=f"{steps} steps, {dtype}",
                )
                ax.axhline(auto[key], color=color, ls=style, lw=0.8, alpha=0.6)  # fmt: skip
        ax.set_xlabel("coupling lambda (horizontal lines: coupling='auto')")
        ax.set_title(key.replace("_", " "))
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "coupling.png", dpi=110)
    plt.close(fig)


def table(rows: list[dict[str, object]]) -> str:
    lines = []
    for steps in STEPS:
        for coupling in (*COUPLINGS, "auto"):
            cells = [str(steps), str(coupling)]
            for dtype in ("float64", "float32"):
                r = next(x for x in rows if x["steps"] == steps and x["coupling"] == coupling
                         and x["dtype"] == dtype)  # fmt: skip
                cells += [f"{r['gradient_error']:.1e}", f"{r['reconstruction_error']:.0e}"]
            lines.append(cells)
    headers = ["steps", "coupling", "float64 gradient error", "reconstruction",
               "float32 gradient error", "reconstruction"]  # fmt: skip
    return md_table(headers, lines, "llrrrr")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    ns = parser.parse_args()
    rows = sweep()
    text = table(rows)
    write(ns.out / "coupling.md", text)
    plot(rows, ns.out)
    print(text)


if __name__ == "__main__":
    main()
