"""Memory of an image-shaped Neural ODE block against the number of steps (the MALI paper's claim).

The block: a convolutional field ``f(t, z) = conv(tanh(conv(z)))`` (8 channels, 3x3, padding 1)
on 32x32 inputs, batch 64, float32, ``t`` in [0, 1], one training step (forward + backward of
``mean(z(1)^2)``) with the field's parameters. For 10, 20, 40, 80 and 160 fixed steps, each in a
fresh process (one thread): the growth of the peak resident set during the step, for MALI (ALF,
constant memory), ``gradient="checkpoint"`` (the plain RK4, ``2 sqrt(N)`` states), backprop
through the RK4 steps, and torchdiffeq's ``odeint_adjoint`` with rk4 when installed. From a
linear fit, the most steps each fits in a 2 GB budget. Table and plot in
``benchmarks/results/paper/``.

    python benchmarks/paper_memory.py [--steps 10 20 40 80 160] [--budget-mb 2048] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from _common import RESULTS, peak_rss_mb, run_child
from torch import Tensor, nn

METHODS = ("MALI (ALF)", "checkpoint (RK4)", "backprop (RK4)", "torchdiffeq adjoint (rk4)")


class ConvField(nn.Module):
    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.c2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        return self.c2(torch.tanh(self.c1(z)))


def child(method: str, steps: int) -> None:
    import mali_func

    torch.set_num_threads(1)
    torch.manual_seed(0)
    field = ConvField()
    z0 = torch.randn(64, 8, 32, 32)
    t = torch.tensor([0.0, 1.0])
    params = list(field.parameters())
    before = peak_rss_mb()
    start = time.perf_counter()
    if method == "MALI (ALF)":
        out = mali_func.odeint(field, z0, t, method="alf", steps=mali_func.Fixed(n=steps))
    elif method == "checkpoint (RK4)":
        out = mali_func.odeint(field, z0, t, method="rk4", coupling=None, gradient="checkpoint",
                               steps=mali_func.Fixed(n=steps))  # fmt: skip
    elif method == "backprop (RK4)":
        out = mali_func.odeint(field, z0, t, method="rk4", coupling=None, gradient="backprop",
                               steps=mali_func.Fixed(n=steps))  # fmt: skip
    else:
        from torchdiffeq import odeint_adjoint

        out = odeint_adjoint(field, z0, t, method="rk4", options={"step_size": 1.0 / steps})
    torch.autograd.grad(out[-1].pow(2).mean(), params)
    seconds = time.perf_counter() - start
    print(json.dumps({"mb": peak_rss_mb() - before, "seconds": seconds}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 40, 80, 160])
    parser.add_argument("--budget-mb", type=float, default=2048.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "paper")
    parser.add_argument("--quick", action="store_true", help="10 and 20 steps only")
    args = parser.parse_args()
    if args.quick:
        args.steps = [10, 20]
    try:
        import torchdiffeq  # noqa: F401

        methods = METHODS
    except ImportError:
        methods = METHODS[:3]
    results: dict[str, dict[int, dict[str, float]]] = {m: {} for m in methods}
    for n in args.steps:
        for m in methods:
            r = run_child(Path(__file__), [m, str(n)])
            if r is not None:
                results[m][n] = r
    lines = [
        "# Memory of a convolutional Neural ODE block against the number of steps",
        "",
        "`python benchmarks/paper_memory.py` (8-channel 3x3 conv field, 32x32, batch 64, float32, "
        "one training step, each point in a fresh process, one thread): growth of the peak "
        f"resident set in MB, and the most steps within {args.budget_mb:.0f} MB from a linear fit.",
        "",
        "| method | " + " | ".join(f"{n} steps" for n in args.steps) + " | MB / step | "
        f"steps in {args.budget_mb:.0f} MB |",
        "|---|" + "---:|" * (len(args.steps) + 2),
    ]
    for m in methods:
        pts = sorted(results[m].items())
        cells = [f"{results[m][n]['mb']:.0f}" if n in results[m] else "-" for n in args.steps]
        slope = _slope(pts)
        fits = (
            "unbounded"
            if slope < 0.05
            else f"{(args.budget_mb - pts[0][1]['mb']) / slope + pts[0][0]:,.0f}"
        )
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {slope:.2f} | {fits} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory.md").write_text("\n".join(lines) + "\n")
    (args.out / "memory.json").write_text(json.dumps(results, indent=1))
    print("\n".join(lines))
    _plot(results, args.out / "memory.png")


def _slope(pts: list[tuple[int, dict[str, float]]]) -> float:
    """Least-squares MB per step."""
    if len(pts) < 2:
        return 0.0
    xs = [float(n) for n, _ in pts]
    ys = [r["mb"] for _, r in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def _plot(results: dict[str, dict[int, dict[str, float]]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, pts in results.items():
        xs = sorted(pts)
        ax.plot(xs, [pts[n]["mb"] for n in xs], marker="o", label=m)
    ax.set_xlabel("fixed steps")
    ax.set_ylabel("peak memory growth (MB)")
    ax.set_title("One training step, conv block 32x32, batch 64")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
