"""Can torch 2.13 compile one base increment of a coupled Runge-Kutta step and reuse it?

A coupled step (:mod:`mali_func.schemes._coupled`) calls its base increment twice forward and
pulls both back in the reverse loop, so a compiled training step holds four copies of the
tableau's stages: inductor builds 75 C++ kernels for coupled rk4 against ALF's 43 (mlp problem,
``benchmarks/results/compile_coupled.md``). The tool meant for this,
:func:`torch.compiler.nested_compile_region` (one subgraph, compiled once, called at every site),
is probed here where the engine would need it, on a toy RK4 increment of a 2-layer MLP field:

* ``top-level autograd``: the region called by a compiled function and differentiated by
  autograd (the documented use);
* ``top-level torch.func.vjp``: the region under :func:`torch.func.vjp` (the engine's reverse
  step pulls each base increment back that way);
* ``while_loop body``: the region inside a ``while_loop`` body, no gradient (the engine's
  forward solve is one);
* ``vjp in a while_loop body``: both, as the MALI reverse loop does.

``--kernels`` also compiles the mlp training step of coupled rk4 (MALI, 20 steps) into an empty
inductor cache and counts its C++ kernel sources, exactly and with numeric literals masked: how
many builds passing the tableau's coefficients as tensors (one source for stages alike but for
their numbers) could save at most.

    python benchmarks/compile_regions.py [--kernels] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMMAND = "python benchmarks/compile_regions.py"

PROBES = ("top-level autograd", "top-level torch.func.vjp", "while_loop body",
          "vjp in a while_loop body")  # fmt: skip


def _probe(name: str, region: bool) -> str:
    """Compile one use of the field (inductor, fullgraph), as a region or inlined, and compare
    it with eager."""
    import torch
    from torch._higher_order_ops.while_loop import while_loop
    from torch.nn.functional import linear

    torch.manual_seed(0)
    w = tuple(torch.randn(s) * 0.3 for s in [(32, 8), (32,), (8, 32), (8,)])

    def mlp(t: torch.Tensor, y: torch.Tensor, *p: torch.Tensor) -> torch.Tensor:
        return linear(torch.tanh(linear(y, p[0], p[1])), p[2], p[3]) * torch.cos(t)

    field = torch.compiler.nested_compile_region(mlp) if region else mlp

    def increment(t: torch.Tensor, h: torch.Tensor, y: torch.Tensor, p: tuple) -> torch.Tensor:
        k1 = field(t, y, *p)
        k2 = field(t + h / 2, y + h / 2 * k1, *p)
        k3 = field(t + h / 2, y + h / 2 * k2, *p)
        k4 = field(t + h, y + h * k3, *p)
        return h * (k1 + 2 * k2 + 2 * k3 + k4) / 6

    t0, h = torch.tensor(0.0), torch.tensor(0.1)

    def pulled(y: torch.Tensor, a: torch.Tensor, t: torch.Tensor) -> tuple:
        out, pull = torch.func.vjp(lambda y_, *p: increment(t, h, y_, p), y, *w)
        return out, *pull(a)

    def run(y: torch.Tensor, a: torch.Tensor, eager: bool = False) -> tuple:
        if name == "top-level autograd":
            return (increment(t0, h, y, w) + increment(t0 + h, -h, y, w),)
        if name == "top-level torch.func.vjp":
            return pulled(y, a, t0)

        def body(i: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> tuple:
            if name == "while_loop body":
                return i + 1, t + h, y + increment(t, h, y, w) - increment(t + h, -h, y, w)
            out, g_y, *_ = pulled(y, a, t)
            return i + 1, t + h, y + out + 1e-3 * g_y

        carry = (torch.tensor(0), t0, y)
        if eager:  # an eager while_loop compiles its body itself: the reference is a Python loop
            for _ in range(3):
                carry = body(*carry)
            return carry
        return while_loop(lambda i, *_: i < 3, body, carry)

    y, a = torch.randn(4, 8), torch.randn(4, 8)
    if name == "top-level autograd":
        y.requires_grad_()
    want = run(y, a, eager=True)
    try:
        got = torch.compile(run, fullgraph=True)(y, a)
    except Exception as exc:  # the probe's answer: which error torch gives
        return f"fails: `{type(exc).__name__}: {_first_line(exc)}`"
    error = max(float((g - w_).abs().max()) for g, w_ in zip(got, want))
    return f"works (max difference to eager {error:.1e})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = next((x for x in text if "Error" in x or "Exception" in x), text[0] if text else "")
    return line.strip()[:160].replace("`", "'")


def _kernel_sources() -> dict[str, int]:
    """C++ kernels of the compiled coupled-rk4 mlp training step: all, distinct, distinct when
    numeric literals are masked."""
    import torch

    sys.path.insert(0, str(HERE))
    from extras import SmallField

    import mali_func

    torch.set_num_threads(1)
    field = SmallField()
    torch.manual_seed(1)
    y0, t = torch.randn(256, 2), torch.tensor([0.0, 1.0])

    def loss(y: torch.Tensor) -> torch.Tensor:
        ys = mali_func.odeint(field, y, t, n_steps=20, gradient="mali", method="rk4")
        return ys[-1].pow(2).mean()

    torch.compile(loss, fullgraph=True)(y0).backward()
    cache = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    sources = [p.read_text() for p in cache.rglob("*.cpp")]
    masked = Counter(re.sub(r"-?\d+\.\d+(e[-+]?\d+)?|\b\d+L?\b", "N", s) for s in sources)
    return {"kernels": len(sources), "distinct": len(set(sources)), "masked": len(masked)}


def _child(args: list[str]) -> None:
    if args[0] == "probe":
        print(_probe(args[1], args[2] == "region"))
    else:
        print(_kernel_sources())


def _run_child(args: list[str], env: dict[str, str]) -> tuple[str, float]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True,
                         text=True, env=env, timeout=1200)  # fmt: skip
    lines = out.stdout.strip().splitlines()
    answer = lines[-1] if lines else f"crashed: {out.stderr.strip().splitlines()[-1:]}"
    return answer, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", action="store_true", help="count the rk4 step's kernels")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child)
        return
    import torch

    base = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    rows = []
    for name in PROBES:
        cells = []
        for kind in ("region", "inlined"):
            with tempfile.TemporaryDirectory() as cache:
                answer, seconds = _run_child(
                    ["probe", name, kind], {**base, "TORCHINDUCTOR_CACHE_DIR": cache}
                )
            cells.append(f"{answer} ({seconds:.0f} s)")
        rows.append(f"| {name} | {' | '.join(cells)} |")
    lines = [
        "# torch.compiler.nested_compile_region where a coupled step would need it",
        "",
        f"```bash\n{COMMAND}{' --kernels' if args.kernels else ''}\n```",
        "",
        f"torch {torch.__version__}, inductor, `fullgraph=True`, a fresh process and an empty "
        "cache per probe (module docs: the toy increment and the four uses).",
        "",
        "| use | field as a `nested_compile_region` | field inlined (today's code) |",
        "|---|---|---|",
        *rows,
    ]
    if args.kernels:
        with tempfile.TemporaryDirectory() as cache:
            answer, seconds = _run_child(["kernels"], {**base, "TORCHINDUCTOR_CACHE_DIR": cache})
        lines += ["", f"Coupled rk4 mlp training step ({seconds:.0f} s): C++ kernel sources "
                  f"{answer} (all / distinct / literals masked)."]  # fmt: skip
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compile_regions.md").write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
