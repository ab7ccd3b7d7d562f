r"""Claim (4) of MALI's paper: the accuracy of the reverse-time trajectory decides model quality.

MALI (Zhuang, Dvornek, Tatikonda & Duncan, ICLR 2021) argues that the adjoint method (Chen et al.,
NeurIPS 2018) loses accuracy because its backward pass solves :math:`\dot y = f(t, y)` again in
reverse time from :math:`y(T)`, and the rebuilt :math:`\hat y(t)` drifts from the forward's
:math:`y(t)` (for a contracting field, exponentially in :math:`T`); the gradient is then taken
along the wrong trajectory. MALI's asynchronous leapfrog (and the reversible couplings of
Runge-Kutta tableaus here) inverts each step algebraically, so :math:`\hat y` equals :math:`y` up to
round-off, and checkpointing stores the states outright.

One task, a Neural ODE classifier of the 8x8 digits (scikit-learn's bundled set): a linear stem to
16 features, an ODE block (MLP field 16-64-16, tanh, integrated over :math:`[0, T]`, ``T = 3``),
a linear head. Each gradient method trains the same initial model with the same batches (Adam,
cross-entropy) at a few tolerances:

* MALI, coupled tsit5 (``mali_func.odeint(..., "tsit5", gradient="mali")``): the reverse error is
  the :class:`mali_func.DriftMonitor`'s relative reconstruction error of each backward pass;
* the adjoint (torchdiffeq's ``odeint_adjoint``, dopri5): its reverse error is that of solving
  back from :math:`y(T)` to :math:`t = 0` with the same solver and tolerances, relative to
  :math:`\|y(0)\|` (the reconstruction its backward pass makes, measured on the training batch);
* checkpointing (``gradient="checkpoint"``, plain tsit5): no reconstruction (plotted at 1e-16).

Reported per method and tolerance (mean ± std over seeds): the reverse error over training (median
of the logged iterations), the gradient's relative error at the trained model against backprop
through the same forward solve, the test cross-entropy and accuracy.

    OMP_NUM_THREADS=1 python benchmarks/paper_reverse.py [--iters 300] [--seeds 0 1] [--quick]

Writes ``reverse.md``, ``reverse.json`` and ``reverse.png`` to ``--out``
(``benchmarks/results/paper``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _common import md_table, save_json, write
from torch import Tensor, nn

import mali_func

ROOT = Path(__file__).resolve().parents[1]
T_END = 3.0


class Field(nn.Module):
    def __init__(self, dim: int = 16, hidden: int = 64) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(dim + 1, hidden), nn.Linear(hidden, dim)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        tt = t.expand(y.shape[0], 1)
        return self.l2(torch.tanh(self.l1(torch.cat([y, tt], 1))))


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.field, self.head = nn.Linear(64, 16), Field(), nn.Linear(16, 10)


def digits(seed: int = 0) -> dict[str, Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    test, train = order[:360], order[360:]
    return {"x": x[train], "y": y[train], "x_test": x[test], "y_test": y[test]}


Solve = Callable[[nn.Module, Tensor, Tensor], Tensor]


def solver(method: str, tol: float, monitor: mali_func.DriftMonitor) -> Solve:
    """``solve(field, y0, t) -> y(T)`` for one gradient method at tolerance ``tol``."""
    if method == "adjoint":
        import torchdiffeq

        def adjoint(field: nn.Module, y0: Tensor, t: Tensor) -> Tensor:
            return torchdiffeq.odeint_adjoint(field, y0, t, rtol=tol, atol=tol, method="dopri5")[-1]

        return adjoint
    gradient = {"mali": "mali", "checkpoint": "checkpoint", "backprop": "backprop"}[method]
    coupled = {"coupling": None} if gradient != "mali" else {"monitor": monitor}

    def ours(field: nn.Module, y0: Tensor, t: Tensor) -> Tensor:
        return mali_func.odeint(field, y0, t, tol, tol, "tsit5", gradient=gradient, **coupled)[-1]

    return ours


def reverse_error(method: str, tol: float, field: nn.Module, y0: Tensor, monitor: Any) -> float:
    if method == "checkpoint":
        return 0.0
    if method == "mali":
        return float(monitor.error)
    import torchdiffeq

    with torch.no_grad():
        t = torch.tensor([0.0, T_END])
        yt = torchdiffeq.odeint(field, y0, t, rtol=tol, atol=tol, method="dopri5")[-1]
        back = torchdiffeq.odeint(field, yt, t.flip(0), rtol=tol, atol=tol, method="dopri5")[-1]
    return float((back - y0).norm() / y0.norm())


def gradient_error(method: str, tol: float, model: Model, x: Tensor, y: Tensor) -> float:
    """Relative error of the method's parameter gradient against backprop through the same
    forward solve (torchdiffeq's ``odeint`` for the adjoint, the same scheme for ours)."""
    t = torch.tensor([0.0, T_END])

    def grads(solve: Solve) -> Tensor:
        model.zero_grad()
        loss = nn.functional.cross_entropy(model.head(solve(model.field, model.stem(x), t)), y)
        loss.backward()
        return torch.cat([p.grad.reshape(-1) for p in model.field.parameters()])

    got = grads(solver(method, tol, mali_func.DriftMonitor()))
    if method == "adjoint":
        import torchdiffeq

        def plain(field: nn.Module, y0: Tensor, tt: Tensor) -> Tensor:
            return torchdiffeq.odeint(field, y0, tt, rtol=tol, atol=tol, method="dopri5")[-1]

        want = grads(plain)
    elif method == "mali":
        want = grads(lambda f, y0, tt: mali_func.odeint(f, y0, tt, tol, tol, "tsit5",
                                                        gradient="backprop")[-1])  # fmt: skip
    else:
        want = grads(solver("backprop", tol, mali_func.DriftMonitor()))
    return float((got - want).norm() / want.norm())


def train(method: str, tol: float, seed: int, iters: int, data: dict[str, Tensor]) -> dict:
    torch.manual_seed(seed)
    model, monitor = Model(), mali_func.DriftMonitor()
    solve, opt = solver(method, tol, monitor), torch.optim.Adam(model.parameters(), lr=3e-3)
    t, batches = torch.tensor([0.0, T_END]), torch.Generator().manual_seed(seed)
    errors, start = [], time.perf_counter()
    for it in range(iters):
        idx = torch.randint(len(data["x"]), (128,), generator=batches)
        x, y = data["x"][idx], data["y"][idx]
        opt.zero_grad()
        y0 = model.stem(x)
        loss = nn.functional.cross_entropy(model.head(solve(model.field, y0, t)), y)
        loss.backward()
        opt.step()
        if it % 10 == 0 or it == iters - 1:
            errors.append(reverse_error(method, tol, model.field, y0.detach(), monitor))
    seconds = time.perf_counter() - start
    with torch.no_grad():  # the test pass with the training's own forward solve
        logits = model.head(solve(model.field, model.stem(data["x_test"]), t))
    return {
        "reverse_error": statistics.median(errors),
        "gradient_error": gradient_error(method, tol, model, data["x"][:256], data["y"][:256]),
        "test_loss": float(nn.functional.cross_entropy(logits, data["y_test"])),
        "test_acc": float((logits.argmax(1) == data["y_test"]).float().mean()),
        "seconds": seconds,
    }


METHODS = {"mali": "MALI (coupled tsit5)", "adjoint": "adjoint (torchdiffeq dopri5)",
           "checkpoint": "checkpoint (tsit5)"}  # fmt: skip


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{statistics.mean(values):.3g} ± {statistics.stdev(values):.2g}"


def _table(results: dict[str, dict[str, list[dict]]]) -> str:
    rows = []
    for method, by_tol in results.items():
        for tol, runs in by_tol.items():
            rows.append([
                METHODS[method], tol,
                *(_mean_std([r[k] for r in runs]) for k in
                  ("reverse_error", "gradient_error", "test_loss")),
                _mean_std(_paired(results, method, tol)),
                *(_mean_std([r[k] for r in runs]) for k in ("test_acc", "seconds")),
            ])  # fmt: skip
    headers = ["gradient", "rtol = atol", "reverse error", "gradient error", "test loss",
               "minus checkpoint's", "test accuracy", "train s"]  # fmt: skip
    return md_table(headers, rows, "lr" + "r" * 6)


def _paired(results: dict[str, dict[str, list[dict]]], method: str, tol: str) -> list[float]:
    """Test loss minus checkpointing's at the same seed and tolerance (the seeds' spread out)."""
    base = results["checkpoint"][tol]
    return [r["test_loss"] - b["test_loss"] for r, b in zip(results[method][tol], base)]


def _plot(results: dict[str, dict[str, list[dict]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (method, by_tol), marker in zip(results.items(), "os^", strict=True):
        xs = [max(r["reverse_error"], 1e-16) for runs in by_tol.values() for r in runs]
        ys = [d for tol in by_tol for d in _paired(results, method, tol)]
        ax.scatter(xs, ys, marker=marker, label=METHODS[method])
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("reverse-trajectory error (relative, median over training)")
    ax.set_ylabel("test loss minus checkpointing's (same seed)")
    ax.set_title(f"digits Neural ODE, T = {T_END:g}: reverse accuracy vs model quality")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--tols", type=float, nargs="+", default=[1e-2, 1e-3, 1e-5])
    parser.add_argument("--quick", action="store_true", help="20 iterations, one seed, 2 tols")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/paper")
    a = parser.parse_args()
    if a.quick:
        a.iters, a.seeds, a.tols = 20, a.seeds[:1], a.tols[:2]
    torch.set_num_threads(1)
    data = digits()
    results: dict[str, dict[str, list[dict]]] = {}
    for method in METHODS:
        for tol in a.tols:
            runs = [train(method, tol, seed, a.iters, data) for seed in a.seeds]
            results.setdefault(method, {})[f"{tol:g}"] = runs
            print(method, tol, runs, flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    save_json(a.out / "reverse.json", {"iters": a.iters, "seeds": a.seeds, "results": results})
    command = "OMP_NUM_THREADS=1 python benchmarks/paper_reverse.py" + (" --quick" * a.quick)
    write(a.out / "reverse.md", f"# Reverse accuracy and model quality\n\n`{command}`: "
          f"{a.iters} iterations, seeds {a.seeds}, mean ± std.\n\n{_table(results)}\n"
          "\n![reverse error against test loss](reverse.png)\n")  # fmt: skip
    _plot(results, a.out / "reverse.png")


if __name__ == "__main__":
    main()
