"""A continuous normalizing flow (FFJORD) trained by MALI, checkpointing, backprop, the adjoint.

Model (Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud, "FFJORD: Free-form continuous
dynamics for scalable reversible generative models", ICLR 2019; Chen, Rubanova, Bettencourt &
Duvenaud, "Neural ordinary differential equations", NeurIPS 2018): data ``x`` at ``t = 0`` flows
by ``dz/dt = f(z, t)`` to ``z(1)`` under a standard Gaussian, and by the instantaneous change of
variables ``d logp/dt = -tr(df/dz)``, so with ``logp(0) = 0``

    log p(x) = log N(z(1); 0, I) - logp(1).

``f`` is an MLP (3 hidden softplus layers, the time concatenated to every layer's input). The
trace is exact for 2-D data (``tr J = sum_i (J e_i)_i``, the Jacobian-vector products carried
forward through the layers) and Hutchinson's ``e^T J e`` for the 64-D digits, with one
Rademacher ``e`` per batch passed to the field through ``args=``. Loss: the mean of ``-log p``.

Data (made here, no download): two moons, eight Gaussians and a checkerboard (fresh samples each
iteration, test NLL in nats on 5,000 held-out samples), and scikit-learn's 8x8 digits, uniformly
dequantized (``(level + u) / 17``) and scaled, reported in bits per dimension of the 17-level
pixels on 360 held-out images (exact trace).

Gradients (Zhuang, Dvornek, Tatikonda & Duncan, "MALI: A memory efficient and reverse accurate
integrator for Neural ODEs", ICLR 2021), all at rtol = atol = 1e-5: MALI through the coupled
tsit5 (constant memory in the number of steps), ``gradient="checkpoint"`` and
``gradient="backprop"`` through the plain tsit5, and, when installed, torchdiffeq's
``odeint_adjoint`` (dopri5). Every trained model is scored by the same solve (plain tsit5, rtol =
atol = 1e-6, exact trace). Reported per gradient: test NLL, field calls per training iteration
(forward and backward, counted by the field), seconds per iteration, and memory as the bytes
autograd holds for the backward in one training step on 256 held-out points after training
(saved tensors, distinct storages, parameters excluded): after the forward, and the peak over the
whole forward and backward (the recomputations inside the backward included). These counts are
deterministic; they leave out the allocator's transient buffers.

    python examples/continuous_flow.py [--iters 150] [--digit-iters 200] [--seeds 0 1] [--quick]
                                       [--out DIR]

``--out`` writes ``continuous_flow.md``, ``continuous_flow.json`` (every run's figures) and one
``flow_<data>.png`` per 2-D data set (data beside the MALI-trained density) there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from continuous_flow_parts import (
    CNF,
    SAMPLERS,
    Solve,
    WithNoise,
    batched_log_prob,
    bits_per_dim,
    dequantize,
    load_digits_flow,
    log_prob,
    peak_saved_bytes,
    plot_density,
    rademacher,
    square_grid,
)
from torch import Tensor

import mali_func

TOL = {"rtol": 1e-5, "atol": 1e-5}
Results = dict[str, dict[str, list[dict[str, Any]]]]  # data -> gradient -> runs


def _mali_solve(gradient: str) -> Solve:
    plain = {} if gradient == "mali" else {"coupling": None}

    def solve(
        f: CNF, y0: tuple[Tensor, Tensor], t: Tensor, noise: tuple[Tensor, ...]
    ) -> tuple[Tensor, Tensor]:
        return mali_func.odeint(f, y0, t, method="tsit5", gradient=gradient, args=noise,
                                **plain, **TOL)  # fmt: skip

    return solve


def _evaluate(
    f: CNF, y0: tuple[Tensor, Tensor], t: Tensor, noise: tuple[Tensor, ...]
) -> tuple[Tensor, Tensor]:
    return mali_func.odeint(f, y0, t, method="tsit5", coupling=None, gradient="backprop",
                            rtol=1e-6, atol=1e-6, args=noise)  # fmt: skip


def solvers(adjoint: bool = True) -> dict[str, Solve]:
    out = {
        "MALI (coupled tsit5)": _mali_solve("mali"),
        "checkpoint (tsit5)": _mali_solve("checkpoint"),
        "backprop (tsit5)": _mali_solve("backprop"),
    }
    try:
        from torchdiffeq import odeint_adjoint
    except ImportError:
        return out
    if adjoint:
        out["torchdiffeq adjoint (dopri5)"] = lambda f, y0, t, noise: odeint_adjoint(
            WithNoise(f, noise), y0, t, method="dopri5", **TOL
        )
    return out


@dataclass
class Task:
    """A density to learn: training batches, held-out points and the reported score."""

    name: str
    dim: int
    hidden: int
    exact: bool
    lr: float
    draw: Callable[[torch.Generator], Tensor]
    test: Tensor
    score: Callable[[Tensor], Tensor]  # per-sample log p -> per-sample score (lower is better)


def planar_task(name: str, seed: int, batch: int = 128) -> Task:
    sampler = SAMPLERS[name]
    test = sampler(5000, torch.Generator().manual_seed(2000 + seed))
    return Task(name, 2, 64, True, 1e-2, lambda g: sampler(batch, g), test, lambda lp: -lp)


def digits_task(batch: int = 128, hidden: int = 128) -> Task:
    split = torch.Generator().manual_seed(0)
    train, test = load_digits_flow(split)
    draw = lambda g: dequantize(train[torch.randint(0, len(train), (batch,), generator=g)], g)  # noqa: E731
    return Task("digits", 64, hidden, False, 3e-3, draw, dequantize(test, split),
                lambda lp: bits_per_dim(lp, 64))  # fmt: skip


def memory(cnf: CNF, task: Task, solve: Solve) -> dict[str, int]:
    """Saved-tensor bytes of one training step on 256 held-out points."""
    x = task.test[:256]
    noise = () if task.exact else (rademacher(tuple(x.shape), torch.Generator().manual_seed(7)),)
    params, box = list(cnf.parameters()), {}

    def forward() -> None:
        box["loss"] = -log_prob(cnf, x, solve, noise).mean()

    after_forward = peak_saved_bytes(forward, params)
    box.pop("loss").backward()
    peak = peak_saved_bytes(lambda: (-log_prob(cnf, x, solve, noise).mean()).backward(), params)
    cnf.zero_grad(set_to_none=True)
    return {"forward_saved_bytes": after_forward, "peak_saved_bytes": peak}


def test_score(cnf: CNF, task: Task) -> float:
    return float(task.score(batched_log_prob(cnf, task.test, _evaluate)).mean())


def train(
    task: Task, solve: Solve, seed: int, iters: int, initial: float | None = None
) -> tuple[dict[str, Any], CNF]:
    """One training run; the batches and noise depend on ``seed`` only, not on the gradient (so
    the initial test score, the same for every gradient, may be passed in)."""
    torch.manual_seed(seed)
    cnf = CNF(task.dim, task.hidden, task.exact)
    opt = torch.optim.Adam(cnf.parameters(), lr=task.lr)
    data = torch.Generator().manual_seed(1000 + seed)
    initial = test_score(cnf, task) if initial is None else initial
    start, calls = time.perf_counter(), 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(iters):
            x = task.draw(data)
            noise = () if task.exact else (rademacher(tuple(x.shape), data),)
            cnf.calls = 0
            loss = -log_prob(cnf, x, solve, noise).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            calls += cnf.calls
        seconds = time.perf_counter() - start
        mem = memory(cnf, task, solve)
    kinds = sorted({w.category.__name__ for w in caught})
    return {
        "seed": seed,
        "test_initial": initial,
        "test": test_score(cnf, task),
        "seconds_per_iter": seconds / iters,
        "calls_per_iter": calls / iters,
        **mem,
        "warnings": {k: sum(w.category.__name__ == k for w in caught) for k in kinds},
    }, cnf


def _mean_spread(values: list[float], digits: int = 4) -> str:
    if len(values) < 2:
        return f"{values[0]:.{digits}g}"
    return f"{statistics.mean(values):.{digits}g} ± {statistics.stdev(values):.2g}"


def table(results: Results, unit: str) -> list[str]:
    lines = [
        f"| data | gradient | test NLL ({unit}), initial | test NLL ({unit}) | s / iteration | "
        "field calls / iteration | saved after forward (MB) | peak saved, fwd + bwd (MB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for data, by_method in results.items():
        for name, runs in by_method.items():
            cols = [_mean_spread([r[k] for r in runs]) for k in
                    ("test_initial", "test", "seconds_per_iter", "calls_per_iter")]  # fmt: skip
            cols += [_mean_spread([r[k] / 1e6 for r in runs], 3) for k in
                     ("forward_saved_bytes", "peak_saved_bytes")]  # fmt: skip
            lines.append(f"| {data} | {name} | " + " | ".join(cols) + " |")
    return lines


def plot(task: Task, cnf: CNF, out: Path) -> str:
    data = torch.cat([task.draw(torch.Generator().manual_seed(s)) for s in range(80)])
    lim = round(1.1 * float(data.abs().max()), 1)
    grid = square_grid(lim, 100)
    path = out / f"flow_{task.name.replace(' ', '_').lower()}.png"
    plot_density(data, batched_log_prob(cnf, grid, _evaluate), grid, task.name, path)
    return path.name


def warning_lines(results: Results) -> list[str]:
    lines = []
    for data, by_method in results.items():
        for name, runs in by_method.items():
            for r in runs:
                if r["warnings"]:
                    lines.append(f"- {data}, {name}, seed {r['seed']}: {r['warnings']}")
    return lines or ["- none"]


def make_report(planar: Results, digits: Results, iters: int, digit_iters: int,
                seeds: list[int], pngs: list[str]) -> str:  # fmt: skip
    lines = [
        f"# Continuous normalizing flow (FFJORD), tsit5 / dopri5 at rtol = atol = {TOL['rtol']:g}",
        "",
        f"2-D: {iters} iterations (batch 128, Adam 1e-2), seeds {seeds}, mean ± std.",
        "",
        *table(planar, "nats"),
        "",
        f"Digits 8x8: {digit_iters} iterations (batch 128, Adam 3e-3, Hutchinson trace), "
        f"seed {seeds[0]}; test in bits/dim (exact trace).",
        "",
        *table(digits, "bits/dim"),
        "",
        "Warnings raised during training:",
        "",
        *warning_lines({**planar, **digits}),
        "",
        *[f"![{p}]({p})" for p in pngs],
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=150, help="iterations per 2-D run")
    parser.add_argument("--digit-iters", type=int, default=200, help="iterations on digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: two moons 30 iterations, digits 5, 1 seed, no torchdiffeq",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the .md, .json, .png here")
    args = parser.parse_args()
    iters, digit_iters, seeds, names = args.iters, args.digit_iters, args.seeds, list(SAMPLERS)
    if args.quick:
        iters, digit_iters, seeds, names = 30, 5, seeds[:1], ["two moons"]
    torch.set_num_threads(1)
    began = time.perf_counter()
    planar: Results = {}
    first: dict[tuple[str, int], float] = {}  # initial test scores, one per task and seed
    models: dict[str, tuple[Task, CNF]] = {}
    for seed in seeds:  # interleaved: every gradient sees the same machine state per seed
        for name in names:
            task = planar_task(name, seed)
            for method, solve in solvers(adjoint=not args.quick).items():
                run, cnf = train(task, solve, seed, iters, first.get((name, seed)))
                first[(name, seed)] = run["test_initial"]
                planar.setdefault(name, {}).setdefault(method, []).append(run)
                print(f"{name} / {method} / seed {seed}: {run['test']:.4f} nats", flush=True)
                if method.startswith("MALI") and seed == seeds[0]:
                    models[name] = (task, cnf)
    digits: Results = {"digits": {}}
    task = digits_task(hidden=32 if args.quick else 128)
    for method, solve in solvers(adjoint=not args.quick).items():
        run, _ = train(task, solve, seeds[0], digit_iters, first.get(("digits", seeds[0])))
        first[("digits", seeds[0])] = run["test_initial"]
        digits["digits"][method] = [run]
        print(f"digits / {method}: {run['test']:.4f} bits/dim", flush=True)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    pngs = [plot(t, c, args.out) for t, c in models.values()] if args.out else []
    report = make_report(planar, digits, iters, digit_iters, seeds, pngs)
    print(report)
    print(f"wall time {time.perf_counter() - began:.0f} s")
    if args.out is not None:
        (args.out / "continuous_flow.md").write_text(report + "\n")
        results = {"tolerances": TOL, "iters": iters, "digit_iters": digit_iters,
                   "seeds": seeds, "planar": planar, "digits": digits["digits"]}  # fmt: skip
        (args.out / "continuous_flow.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
