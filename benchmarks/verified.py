"""What the verified MALI gradient costs, and how often the fallback fires.

1. The non-failing case: a training step (forward + backward) through 1,000 coupled RK4 steps of
   the anchors' problem (MLP 64-256-64, batch 256, float32, one thread), MALI against backprop
   through the same steps, interleaved, best of ``--repeats``; and the peak memory growth of a
   MALI step from 10 to 1,000 steps, each point in a fresh process.
2. A failing case: the same step with ``reconstruction_tol=1e-30`` (every backward falls back)
   against ``gradient="checkpoint"`` and MALI: the fallback costs the MALI reverse plus one
   checkpointed backward.
3. The fallback rate over the benchmark fields (the contracting MLP of the accuracy problem,
   the ``y**3 @ A`` field, two decay rates, a rotation) with the automatic coupling, at a few
   step counts and tolerances, in float32 and float64.

Writes ``results/verified.md``. ``--quick`` runs small sizes (for the smoke test).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch
from _common import RESULTS, core_problem, md_table, peak_rss_mb, run_child, timed, write

from mali_func import DriftMonitor, odeint

SCRIPT = Path(__file__).resolve()


def step(field: torch.nn.Module, y0: torch.Tensor, n: int, **kw: object) -> None:
    ys = odeint(field, y0, [0.0, 1.0], method="rk4", n_steps=n, **kw)  # type: ignore[arg-type]
    ys[-1].pow(2).mean().backward()


def timings(n: int, repeats: int) -> dict[str, float]:
    field, y0 = core_problem()
    variants = {
        "mali": {},
        "backprop": {"gradient": "backprop"},
        "checkpoint": {"gradient": "checkpoint"},
        "fallback": {"reconstruction_tol": 1e-30},  # every backward falls back
    }
    best = dict.fromkeys(variants, float("inf"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(repeats):
            for name, kw in variants.items():
                best[name] = min(best[name], timed(lambda kw=kw: step(field, y0, n, **kw)))
    return best


def child_memory(n: int) -> None:
    field, y0 = core_problem()
    step(field, y0, 2)  # warm up allocations
    before = peak_rss_mb()
    step(field, y0, n)
    print(json.dumps({"growth_mb": peak_rss_mb() - before}))


def fallback_rates(quick: bool) -> list[list[object]]:
    a = [[-0.1, 2.0], [-2.0, -0.1]]
    rows: list[list[object]] = []
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.Tanh(), torch.nn.Linear(32, 6))
    mlp.requires_grad_(False)  # the gradient of y0 is enough to exercise the reverse pass
    problems = {
        "contracting MLP - 2y, t in [0, 5]": (lambda t, y, p: mlp(y) - 2 * y, (8, 6), 5.0),
        "y**3 @ A, t in [0, 25]": (lambda t, y, p: (y**3) @ p, (1, 2), 25.0),
        "rates 1 and 40, t in [0, 1]": (lambda t, y, p: y * p[0], (3, 2), 1.0),
        "rotation, t in [0, 20]": (lambda t, y, p: y @ p, (3, 2), 20.0),
    }
    params = {
        "y**3 @ A, t in [0, 25]": torch.tensor(a),
        "rates 1 and 40, t in [0, 1]": torch.tensor([[-1.0, -40.0]]),
        "rotation, t in [0, 20]": torch.tensor([[0.0, 1.0], [-1.0, 0.0]]),
        "contracting MLP - 2y, t in [0, 5]": torch.zeros(()),
    }
    settings = [{"method": "rk4", "n_steps": n} for n in ((20, 200) if quick else (20, 80, 200))]
    settings += [{"method": m, "rtol": r} for m in ("tsit5", "dopri5") for r in (1e-3, 1e-5)]
    for dtype in (torch.float32, torch.float64):
        for name, (f, shape, t1) in problems.items():
            fired, total = 0, 0
            for kw in settings:
                mlp.to(dtype)
                torch.manual_seed(1)
                y0 = torch.randn(shape) if "y**3" not in name else torch.tensor([[2.0, 0.0]])
                y0 = y0.to(dtype).requires_grad_()
                p = params[name].to(dtype)
                monitor = DriftMonitor(dtype=dtype)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        ys = odeint(f, y0, [0.0, t1], args=(p,), monitor=monitor, **kw)  # type: ignore[arg-type]
                        ys[-1].sum().backward()
                    except RuntimeError:
                        continue
                # The fallback's trigger (also readable on versions without a fallback).
                tol = 1e-7 if dtype == torch.float64 else 1e-3
                fired += int(not float(monitor.error) <= tol)  # type: ignore[arg-type]
                total += 1
            rows.append([str(dtype).replace("torch.", ""), name, f"{fired} / {total}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs="*")
    parser.add_argument("--rates-only", action="store_true", help="only the fallback rates")
    args = parser.parse_args()
    if args.child is not None:
        child_memory(int(args.child[0]))
        return
    if args.rates_only:
        sys.stdout.write(md_table(["dtype", "field", "fell back"], fallback_rates(args.quick)))
        return
    n = 50 if args.quick else 1000
    best = timings(n, 1 if args.quick else args.repeats)
    sizes = (10, 50) if args.quick else (10, 1000)
    growth = [run_child(SCRIPT, [str(k)]) for k in sizes]
    lines = [
        "# The verified MALI gradient: cost and fallback rate",
        "",
        f"Training step through {n} coupled RK4 steps (MLP 64-256-64, batch 256, float32, one "
        f"thread), best of {args.repeats}, seconds:",
        "",
        md_table(["variant", "seconds", "/ backprop"],
                 [[k, f"{v:.3f}", f"{v / best['backprop']:.2f}"] for k, v in best.items()]),
        "",
        f"Fallback over MALI: {best['fallback'] / best['mali']:.2f}x; fallback - MALI = "
        f"{best['fallback'] - best['mali']:.3f} s against a whole checkpointed step "
        f"{best['checkpoint']:.3f} s.",
        "",
        "Peak memory growth of a MALI step (fresh process each): "
        + ", ".join(f"{k} steps {g['growth_mb']:.1f} MB" if g else f"{k} steps failed"
                    for k, g in zip(sizes, growth)),
        "",
        "How often the fallback fires (automatic coupling; rk4 fixed steps, tsit5/dopri5 at "
        "rtol 1e-3 and 1e-5):",
        "",
        md_table(["dtype", "field", "fell back"], fallback_rates(args.quick)),
    ]  # fmt: skip
    path = write(RESULTS / "verified.md", "\n".join(lines) + "\n")
    sys.stdout.write(f"wrote {path}\n")


if __name__ == "__main__":
    main()
