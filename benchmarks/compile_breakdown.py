"""Where the compile time of a compiled MALI training step goes: dynamo, AOTAutograd, inductor.

Two problems, each a training step compiled with ``torch.compile(fullgraph=True)`` (default
inductor backend):

* ``digits``: the main job (``examples/digits_classifier.py``): ``DigitsModel`` (conv field,
  6 ALF steps, MALI, a ``DriftMonitor``), ``CrossEntropyLoss(label_smoothing=0.05)`` of a batch
  of 64 compiled, then backward, Adam and the one-cycle schedule eagerly, as the main job does;
* ``mlp``: the compile benchmark's step (``_training_step`` in ``benchmarks/extras.py``): field
  ``Linear(2,64)-tanh-Linear(64,2)``, batch 256, 20 steps, ``mean(z(1)^2)``, MALI.

Each measurement runs in a fresh process with ``TORCHINDUCTOR_COMPILE_THREADS=1`` and one torch
thread. *cold*: an empty ``TORCHINDUCTOR_CACHE_DIR``; *warm*: a second fresh process on the same
cache directory. *opt-in* (``--opt-in``): the same cold/warm pair with the two caches this solve
bypasses by default switched on (``unsafe_marked_cacheable_functions`` for ``while_loop``,
``autograd_cache_allow_custom_autograd_functions``), to show what a cache hit would save; its
loss and gradients are compared with the default cold run's.

The phases come from ``torch._dynamo.utils.compile_times`` (``dynamo_timed`` spans, seconds,
nested), split into parts that do not overlap:

* dynamo: ``_compile.compile_inner`` less ``OutputGraph.call_user_compiler`` (bytecode tracing,
  guards);
* AOTAutograd: ``call_user_compiler`` less inductor's forward compile, plus the lazy backward
  compile (``backward._backward_impl``) less inductor's backward compile (joint tracing, joint
  passes, partitioning; a cache lookup on a hit);
* inductor: ``compile_fx.<locals>.fw_compiler_base`` + ``bw_compiler``, split into the C++
  compiler's runs (``compile_file``) and the rest (lowering, scheduling, Python codegen);
* rest: the first step's wall time less all of the above (running that step, Adam, guards).

A second kind of child counts how often dynamo traces the field's ``forward`` per compile (it
counts dynamo's inlining of the field's ``forward`` code, grouped by the function it is called
from) and how many field copies end in the graphs (conv or linear calls in the dynamo graph and
its subgraphs; aten ops in AOTAutograd's forward and backward graphs), for ALF and for
``method="rk4"`` (the reversible coupling, ``coupling="auto"``).

    python benchmarks/compile_breakdown.py [--problems digits mlp] [--methods alf rk4]
        [--opt-in] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples"
PROBLEMS = ("digits", "mlp")
TRACE_METHODS = ("alf", "rk4")
COMMAND = "python benchmarks/compile_breakdown.py"


# ---------------------------------------------------------------------------------------------
# Parent: fresh processes, tables
# ---------------------------------------------------------------------------------------------


def _child(args: list[str], cache: str | None) -> Any:
    from _common import run_child

    env = {"TORCHINDUCTOR_COMPILE_THREADS": "1"}
    if cache is not None:
        env["TORCHINDUCTOR_CACHE_DIR"] = cache
    start = time.perf_counter()
    out = run_child(Path(__file__).resolve(), args, timeout=900, env=env)
    if out is not None:
        out["process_s"] = time.perf_counter() - start
    return out


def measure(
    problems: list[str],
    methods: list[str],
    opt_in: bool,
    trace_methods: list[str],
    repeats: int = 1,
) -> dict[str, Any]:
    timings: list[dict[str, Any]] = []
    for problem in problems:
        for method in methods:
            for variant in (False, True) if opt_in else (False,):
                for run in range(repeats):
                    cache = tempfile.mkdtemp(prefix="inductor-cache-")
                    try:
                        for temperature in ("cold", "warm"):
                            flag = "1" if variant else "0"
                            r = _child(["time", problem, method, flag], cache)
                            if r is None:
                                continue
                            r["cache"], r["run"] = temperature, run
                            timings.append(r)
                            print(
                                f"{problem} {method} {'opt-in ' if variant else ''}{temperature}"
                                f" #{run}: first step {r['phases']['first_step_s']:.1f} s wall,"
                                f" {r['first_step_cpu_s']:.1f} s CPU,"
                                f" load {r['load_average']:.1f}",
                                file=sys.stderr,
                            )
                    finally:
                        shutil.rmtree(cache, ignore_errors=True)
    traces = []
    for problem in problems:
        for method in trace_methods:
            cache = tempfile.mkdtemp(prefix="inductor-cache-")
            try:
                r = _child(["trace", problem, method], cache)
            finally:
                shutil.rmtree(cache, ignore_errors=True)
            if r is not None:
                traces.append(r)
    return {"timings": timings, "traces": traces}


def _machine() -> dict[str, str]:
    import subprocess

    sys.path.insert(0, str(HERE))
    from _common import machine

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=HERE.parent
        ).stdout.strip()

    dirty = git("status", "--porcelain", "--", "mali_func")
    return {
        **machine(),
        "commit": git("rev-parse", "--short", "HEAD") + (" + edits" if dirty else ""),
    }


def report(results: dict[str, Any], command: str) -> str:
    sys.path.insert(0, str(HERE))
    from _common import md_table

    m = results["machine"]
    lines = [
        "# Where the compile time of a compiled MALI training step goes",
        "",
        "```bash",
        command,
        "```",
        "",
        f"mali_func at commit {m.get('commit', '?')}. "
        f"{m['cpu']}, {m['cores']} cores (shared: *load* is the 1-minute load average when the "
        "step started; other jobs ran on the machine, so wall and CPU seconds are inflated by "
        f"about the load over 1-2), torch {m['torch']}; every figure a fresh process with "
        "`TORCHINDUCTOR_COMPILE_THREADS=1`, one torch thread (`OMP_NUM_THREADS=1`). "
        "*cold*: empty `TORCHINDUCTOR_CACHE_DIR`; *warm*: a second fresh process on the same "
        "directory. Seconds, from "
        "`torch._dynamo.utils.compile_times()` (see the script's docstring for the split); "
        "*first step* is the wall time of the first compiled training step (forward, the lazy "
        "backward compile, backward, optimizer), *warm step* the best of three after it.",
        "",
    ]
    best: dict[tuple[Any, ...], dict[str, Any]] = {}
    spread: dict[tuple[Any, ...], list[float]] = {}
    for r in results["timings"]:
        key = (r["problem"], r["method"], r["opt_in"], r["cache"])
        spread.setdefault(key, []).append(r["phases"]["first_step_s"])
        if key not in best or r["phases"]["first_step_s"] < best[key]["phases"]["first_step_s"]:
            best[key] = r
    rows = []
    for key, r in best.items():
        p, c = r["phases"], r["counters"]
        fx = c["inductor"]
        aot = c["aot_autograd"]
        cache_state = (
            f"fx {fx.get('fxgraph_cache_hit', 0)}h/{fx.get('fxgraph_cache_miss', 0)}m/"
            f"{fx.get('fxgraph_cache_bypass', 0)}b, aot {aot.get('autograd_cache_hit', 0)}h/"
            f"{aot.get('autograd_cache_miss', 0)}m/{aot.get('autograd_cache_bypass', 0)}b"
        )
        setting = f"{r['problem']} ({r['method']})" + (", opt-in caches" if r["opt_in"] else "")
        runs = "/".join(f"{x:.0f}" for x in spread[key])
        rows.append(
            [setting, r["cache"], f"{p['first_step_s']:.1f} ({runs})",
             f"{r['first_step_cpu_s']:.1f}", f"{r['load_average']:.1f}", f"{p['dynamo_s']:.1f}",
             f"{p['aot_s']:.1f}", f"{p['inductor_s']:.1f}",
             f"{p['cxx_compile_s']:.1f} ({p['cxx_compiles']})", f"{p['inductor_rest_s']:.1f}",
             f"{p['rest_s']:.1f}", f"{r['warm_step_s']:.3f}", cache_state]
        )  # fmt: skip
    headers = ["problem", "cache", "first step (all runs)", "CPU", "load", "dynamo",
               "AOTAutograd", "inductor", "of which C++ compile (runs)", "inductor rest",
               "rest", "warm step", "caches hit/miss/bypass"]  # fmt: skip
    lines += [md_table(headers, rows, "llrrrrrrrrrrl"), ""]
    reasons = sorted({b for r in results["timings"] for b in r["bypass"]})
    if reasons:
        lines += ["Cache bypasses logged (default settings):", ""]
        lines += [f"* `{b}`" for b in reasons]
        lines.append("")
    checks = []
    by_key = best
    for (problem, method, opt_in, cache), r in by_key.items():
        ref = by_key.get((problem, method, False, "cold"))
        if ref is None or (not opt_in and cache == "cold"):
            continue
        diff = max(
            abs(a - b) / max(abs(b), 1e-30)
            for a, b in zip(r["signature"], ref["signature"], strict=True)
        )
        checks.append(
            f"* {problem} ({method}){' opt-in' if opt_in else ''} {cache}: loss "
            f"{r['loss']:.6g} vs {ref['loss']:.6g}, parameters/gradients after the step differ "
            f"by {diff:.1e} (relative, largest)"
        )
    if checks:
        lines += ["Same step as the default cold run:", "", *checks, ""]
    lines += [
        "## Traces of the field per compile",
        "",
        "How often dynamo traces (inlines) the field's `forward` while compiling the step, by "
        "the functions it is called from (innermost first), and the field's ops in each graph "
        "including its `while_loop` / `autograd.Function` subgraphs: the dynamo graph "
        "(`conv2d` for digits, 2 per field plus 1 of the stem; `linear` for mlp, 2 per field), "
        "and AOTAutograd's forward and backward graphs (aten ops; digits' stem adds one "
        "`convolution` and one `convolution_backward`). `rk4` is the reversible coupling with "
        '`coupling="auto"`; its tableau\'s `stability_coefficients` (a `cached_property`) is '
        "filled eagerly first, since a compiled coupled solve in a fresh process fails without "
        "that (`_prewarm`).",
        "",
    ]
    rows = []
    for r in results["traces"]:
        g = r["graphs"]
        ops = ", ".join(
            f"{kind}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
            for kind, counts in g.items()
        )
        where = "; ".join(f"{v} x `{k}`" for k, v in sorted(r["callers"].items()))
        rows.append([f"{r['problem']} ({r['method']})", str(r["field_traces"]), where, ops])
    lines.append(md_table(["problem", "field traces", "traced from", "ops in the graphs"], rows))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", choices=PROBLEMS, default=list(PROBLEMS))
    parser.add_argument(
        "--methods", nargs="+", default=["alf"], help="methods to time (default: alf)"
    )
    parser.add_argument(
        "--trace-methods", nargs="+", default=list(TRACE_METHODS), help="methods to count"
    )
    parser.add_argument(
        "--opt-in", action="store_true", help="also time with the bypassed caches switched on"
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="cold/warm pairs per setting (the table: fastest)"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--from-json", type=Path, help="re-render the markdown of a json")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.child:
        from compile_probes import time_child, trace_child

        kind, problem, method, *rest = ns.child
        if kind == "time":
            out = time_child(problem, method, rest == ["1"])
        else:
            out = trace_child(problem, method)
        print(json.dumps(out))
        return
    sys.path.insert(0, str(HERE))
    from _common import save_json, write

    if ns.from_json:
        results = json.loads(ns.from_json.read_text())
        write(ns.out / "compile_breakdown.md", report(results, results["command"]))
        print((ns.out / "compile_breakdown.md").read_text())
        return
    command = COMMAND + "".join(f" {a}" for a in sys.argv[1:])
    results = measure(ns.problems, ns.methods, ns.opt_in, ns.trace_methods, ns.repeats)
    results["machine"] = _machine()
    results["command"] = command
    write(ns.out / "compile_breakdown.md", report(results, command))
    save_json(ns.out / "compile_breakdown.json", results)
    print((ns.out / "compile_breakdown.md").read_text())


if __name__ == "__main__":
    main()
