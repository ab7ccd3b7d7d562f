"""mali-func against its peers on three problems, interleaved, as ratios within one run.

* **P1**, a classifier block: the field ``Linear(64,256)-tanh-Linear(256,64)``, batch 256,
  float32, ``t`` in [0, 1], one training step (forward + backward of ``mean(y(1)^2)``), adaptive
  at rtol = atol = 1e-5 and on 20 fixed steps.
* **P2**, a contracting field (``Linear(16,64)-tanh-Linear(64,16) - z``, batch 32, float64,
  ``t`` in [0, 10]): for every contender the cheapest setting (fixed steps 10 ... 640, or rtol
  1e-4 ... 1e-10) whose parameter gradient is within 1e-6 (relative) of a reference (tsit5
  through backprop at rtol 1e-12), and the time of its training step.
* **P3**, latent-ODE style: a 2-D field ``Linear(2,64)-tanh-Linear(64,2)`` plus a rotation,
  batch 64, float32, 100 output times in [0, 10], adaptive at rtol = atol = 1e-5, the loss over
  every output.

Contenders: torchdiffeq 0.2.5 (``odeint``: backprop through the solver, memory growing with the
steps; ``odeint_adjoint``), TorchDiffEqPack (the MALI paper's package, ``sym12async``), when
installed, and ours: ``mali_func.odeint_adjoint`` (torchdiffeq's defaults: plain dopri5,
checkpointed), plain tsit5 and rk4 with ``gradient="checkpoint"``, the coupled tsit5 with MALI
(constant memory) and ALF with MALI (the paper's method). torchode is not installable here.

Each step is timed ``--rounds`` times, the contenders interleaved round by round, one thread;
reported: the best time relative to the fastest contender of the column, and field calls
(forward + backward, counted in the field's ``forward``; a batched call counts once).

    python benchmarks/peers.py [--rounds 5] [--out benchmarks/results/peers.md]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from _common import RESULTS, CountingField, timed
from torch import Tensor, nn

import mali_func

Solver = Callable[[nn.Module, Tensor, Tensor, dict], Tensor]


class Unsupported(Exception):
    """A contender that cannot run a column, with the reason shown in its cell."""


Column = dict[str, tuple[float, int] | str]


class Rotating(CountingField):
    """``CountingField`` plus a rotation: the latent dynamics of P3."""

    def __init__(self) -> None:
        super().__init__(2, 64)
        self.register_buffer("a", torch.tensor([[0.0, 1.0], [-1.0, 0.0]]))

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        return super().forward(t, z) * 0.3 + z @ self.a


def _tde(adjoint: bool) -> Solver | None:
    try:
        import torchdiffeq
    except ImportError:
        return None
    solve = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint

    def run(f: nn.Module, y0: Tensor, t: Tensor, s: dict) -> Tensor:
        if "n" in s:
            size = float(t[-1] - t[0]) / s["n"]
            return solve(f, y0, t, method=s.get("method", "rk4"), options={"step_size": size})
        return solve(f, y0, t, method="dopri5", rtol=s["rtol"], atol=s["rtol"])

    return run


def _tdep() -> Solver | None:
    try:
        from TorchDiffEqPack import odesolve_adjoint_sym12
    except ImportError:
        return None

    def run(f: nn.Module, y0: Tensor, t: Tensor, s: dict) -> Tensor:
        if t.shape[0] > 2:
            raise Unsupported("no output times")
        fixed = "n" in s
        options = {"method": "fixedstep_sym12async" if fixed else "sym12async",
                   "h": float(t[-1]) / s["n"] if fixed else None, "t0": float(t[0]),
                   "t1": float(t[-1]), "rtol": s.get("rtol", 1e-3), "atol": s.get("rtol", 1e-3),
                   "print_neval": False, "neval_max": 10**7}  # fmt: skip
        return odesolve_adjoint_sym12(f, y0, options=options).unsqueeze(0)

    return run


def _ours(method: str | None, gradient: str, coupling: str | None = None) -> Solver:
    def run(f: nn.Module, y0: Tensor, t: Tensor, s: dict) -> Tensor:
        kw: dict = {"gradient": gradient, "coupling": coupling}
        if method is not None:
            kw["method"] = method
        if "n" in s:
            kw["steps"] = mali_func.Fixed(n=s["n"])
        else:
            kw["rtol"] = kw["atol"] = s["rtol"]
        return mali_func.odeint(f, y0, t, **kw)

    return run


def _ours_adjoint(f: nn.Module, y0: Tensor, t: Tensor, s: dict) -> Tensor:
    if "n" in s:
        size = float(t[-1] - t[0]) / s["n"]
        return mali_func.odeint_adjoint(f, y0, t, method="rk4", options={"step_size": size})
    return mali_func.odeint_adjoint(f, y0, t, rtol=s["rtol"], atol=s["rtol"])


def contenders() -> dict[str, tuple[Solver | None, tuple[str, ...]]]:
    """Each contender and the kinds of steps it runs: ``fixed``, ``adaptive``."""
    both = ("fixed", "adaptive")
    return {
        "torchdiffeq backprop (memory grows with steps)": (_tde(adjoint=False), both),
        "torchdiffeq adjoint": (_tde(adjoint=True), both),
        "TorchDiffEqPack MALI (sym12async)": (_tdep(), both),
        "ours, odeint_adjoint (plain dopri5, checkpoint)": (_ours_adjoint, ("adaptive",)),
        "ours, tsit5 plain checkpoint": (_ours("tsit5", "checkpoint"), both),
        "ours, rk4 plain checkpoint": (_ours("rk4", "checkpoint"), ("fixed",)),
        "ours, coupled tsit5 MALI (constant memory)": (_ours("tsit5", "mali", "auto"), both),
        "ours, ALF MALI (default method)": (_ours(None, "mali"), both),
    }


def _training_step(solve: Solver, f: CountingField, y0: Tensor, t: Tensor, s: dict,
                   all_outputs: bool) -> Callable[[], list[Tensor]]:  # fmt: skip
    params = list(f.parameters())

    def step() -> list[Tensor]:
        ys = solve(f, y0, t, s)
        loss = ys.pow(2).mean() if all_outputs else ys[-1].pow(2).mean()
        return list(torch.autograd.grad(loss, params))

    return step


def column(f: CountingField, y0: Tensor, t: Tensor, setting: dict, rounds: int,
           all_outputs: bool = False, each: dict[str, dict] | None = None) -> Column:  # fmt: skip
    """Best training-step time and field calls of every applicable contender (or of those in
    ``each``, each at its own setting), interleaved."""
    steps: dict[str, Callable[[], list[Tensor]]] = {}
    out: Column = {}
    for name_, (solve, kinds) in contenders().items():
        if each is not None and name_ not in each:
            continue
        own = setting if each is None else each[name_]
        if solve is None:
            out[name_] = "not installed"
        elif ("fixed" if "n" in own else "adaptive") not in kinds:
            out[name_] = "-"
        else:
            steps[name_] = _training_step(solve, f, y0, t, own, all_outputs)
    calls: dict[str, int] = {}
    for key, step in list(steps.items()):
        print(f"  {key} {setting}", file=sys.stderr)
        f.calls = 0
        try:
            step()
        except Unsupported as error:
            out[key] = str(error)
            del steps[key]
            continue
        except Exception as error:  # a contender that fails this column says how
            out[key] = f"fails: {type(error).__name__}"
            del steps[key]
            continue
        calls[key] = f.calls
    best = dict.fromkeys(steps, math.inf)
    for _ in range(rounds):  # interleaved: every contender once per round
        for key, step in steps.items():
            best[key] = min(best[key], timed(step))
    for key in steps:
        out[key] = (best[key], calls[key])
    return out


FIXED = (10, 20, 40, 80, 160, 320, 640)
P2_FIXED_ONLY = {"TorchDiffEqPack MALI (sym12async)", "ours, ALF MALI (default method)"}
"""ALF on P2's contracting field: adaptive steps shrink without end (its parasitic mode grows
where the field contracts; the paper's package ran for minutes at rtol 1e-4), so fixed grids."""
RTOLS = (1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10)


def cheapest(f: CountingField, y0: Tensor, t: Tensor, target: float) -> dict[str, dict]:
    """P2: per contender, the setting with the fewest field calls whose gradient is within
    ``target`` (relative) of the reference."""
    params = list(f.parameters())
    ref = _training_step(_ours("tsit5", "backprop"), f, y0, t, {"rtol": 1e-12}, False)()
    chosen: dict[str, dict] = {}
    for name, (solve, kinds) in contenders().items():
        if solve is None:
            continue
        for kind, grid in (("fixed", [{"n": n} for n in FIXED]),
                           ("adaptive", [{"rtol": r} for r in RTOLS])):  # fmt: skip
            if kind not in kinds or (kind == "adaptive" and name in P2_FIXED_ONLY):
                continue
            for setting in grid:  # cheapest first: the first that passes is the kind's pick
                f.calls = 0
                try:
                    grads = _training_step(solve, f, y0, t, setting, False)()
                except Exception:  # a setting the contender cannot run (max steps): next
                    continue
                error = max(float((g - r).norm() / r.norm()) for g, r in zip(grads, ref))
                print(f"  P2 {name} {setting}: error {error:.1e}, {f.calls} calls",
                      file=sys.stderr)  # fmt: skip
                if error <= target:
                    if name not in chosen or f.calls < chosen[name]["calls"]:
                        chosen[name] = {**setting, "calls": f.calls, "error": error}
                    break
    del params
    return chosen


def _cell(value: tuple[float, int] | str, fastest: float) -> str:
    if isinstance(value, str):
        return value
    return f"{value[0] / fastest:.2f} ({value[1]:,})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "peers.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    columns: dict[str, dict] = {}
    f1 = CountingField(64, 256)
    torch.manual_seed(1)
    y1, t1 = torch.randn(256, 64), torch.tensor([0.0, 1.0])
    columns["P1 adaptive 1e-5"] = column(f1, y1, t1, {"rtol": 1e-5}, args.rounds)
    columns["P1 fixed 20 steps"] = column(f1, y1, t1, {"n": 20}, args.rounds)
    f2 = CountingField(16, 64, damping=1.0).double()
    torch.manual_seed(2)
    y2, t2 = torch.randn(32, 16, dtype=torch.float64), torch.tensor([0.0, 10.0]).double()
    chosen = cheapest(f2, y2, t2, 1e-6)
    p2: dict[str, tuple[float, int] | str] = {}
    own = {name: {k: v for k, v in c.items() if k in ("n", "rtol")} for name, c in chosen.items()}
    timed_p2 = column(f2, y2, t2, {}, args.rounds, each=own)  # interleaved, as the others
    for name, only in own.items():
        result = timed_p2[name]
        label = f"n={only['n']}" if "n" in only else f"rtol={only['rtol']:g}"
        p2[name] = result if isinstance(result, str) else (*result, label)  # type: ignore[assignment]
    for name, (solve, _) in contenders().items():
        if solve is not None and name not in chosen:
            p2[name] = "none within 1e-6"
    columns["P2 cheapest to 1e-6"] = p2
    f3 = Rotating()
    torch.manual_seed(3)
    y3, t3 = torch.randn(64, 2), torch.linspace(0, 10, 100)
    columns["P3 100 outputs, adaptive 1e-5"] = column(f3, y3, t3, {"rtol": 1e-5}, args.rounds,
                                                      all_outputs=True)  # fmt: skip
    write_report(columns, args.out)


def write_report(columns: dict[str, dict], out: Path) -> None:
    names = list(contenders())
    lines = [
        "# mali-func against its peers (benchmarks/peers.py)",
        "",
        "Time of one training step relative to the fastest contender of the column (best of the "
        "interleaved rounds, one thread, this machine), and field calls forward + backward in "
        "parentheses (a batched call counts once). P2: each contender at its cheapest setting "
        "whose gradient is within 1e-6 of the reference (setting after the calls). See the "
        "script's docstring for the problems.",
        "",
        "| contender | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name in names:
        cells = []
        for col in columns.values():
            value = col.get(name, "-")
            times = [v[0] for v in col.values() if not isinstance(v, str)]
            cell = _cell(value if isinstance(value, str) else value[:2], min(times))
            if not isinstance(value, str) and len(value) > 2:
                cell += f" {value[2]}"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(columns, names, out.with_suffix(".png"))


def _plot(columns: dict[str, dict], names: list[str], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        ratios = []
        for col in columns.values():
            value = col.get(name, "-")
            times = [v[0] for v in col.values() if not isinstance(v, str)]
            ratios.append(value[0] / min(times) if not isinstance(value, str) else 0.0)
        ax.bar([i + k * width for i in range(len(columns))], ratios, width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(columns))], list(columns))
    ax.set_yscale("log")
    ax.set_ylabel("time / fastest (log)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
