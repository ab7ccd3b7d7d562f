"""A torchdiffeq example script run as written and with the import changed: time, calls, loss.

Runs a script that imports ``torchdiffeq`` (e.g. ``examples/latent_ode.py`` of the torchdiffeq
repository; it is not shipped here) twice, each in a fresh process with one thread: once as
written, once with ``torchdiffeq`` resolved to mali-func, whose ``odeint``/``odeint_adjoint`` keep
torchdiffeq's signature: the "one changed import" of the README. Every ``func`` handed to an
``odeint`` is wrapped in a module that counts its calls (forward and backward passes alike).
Reported: wall time of the whole script, field calls, and the last loss line it printed.

    python benchmarks/torchdiffeq_dropin.py PATH/latent_ode.py -- --niters 500 --adjoint True
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn


class Counting(nn.Module):
    """``func`` with a call counter; its parameters are ``func``'s."""

    calls = 0

    def __init__(self, func: nn.Module) -> None:
        super().__init__()
        self.func = func

    def forward(self, t: torch.Tensor, y: Any) -> Any:
        Counting.calls += 1
        return self.func(t, y)


def _shim(real: Any) -> types.ModuleType:
    module = types.ModuleType("torchdiffeq")

    def wrap(solve: Any) -> Any:
        def call(func: Any, *args: Any, **kwargs: Any) -> Any:
            return solve(Counting(func) if isinstance(func, nn.Module) else func, *args, **kwargs)

        return call

    module.odeint = wrap(real.odeint)  # type: ignore[attr-defined]
    module.odeint_adjoint = wrap(real.odeint_adjoint)  # type: ignore[attr-defined]
    if hasattr(real, "odeint_event"):  # its odeint_interface is one of the two above: counted
        module.odeint_event = real.odeint_event  # type: ignore[attr-defined]
    return module


def child(which: str, script: str, args: list[str]) -> None:
    torch.set_num_threads(1)
    if which == "mali-func":
        import mali_func.torchdiffeq as real  # the one-line import change
    else:
        import torchdiffeq as real  # type: ignore[no-redef]
    sys.modules["torchdiffeq"] = _shim(real)
    sys.argv = [script, *args]
    os.chdir(Path(script).parent)
    start = time.perf_counter()
    runpy.run_path(script, run_name="__main__")
    print(json.dumps({"seconds": time.perf_counter() - start, "calls": Counting.calls}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("script", type=Path)
    parser.add_argument("script_args", nargs=argparse.REMAINDER)
    ns = parser.parse_args()
    extra = [a for a in ns.script_args if a != "--"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    for which in ("torchdiffeq", "mali-func"):
        cmd = [sys.executable, __file__, "--child", which, str(ns.script.resolve()), *extra]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
        if out.returncode != 0 or not lines:
            print(f"{which}: failed\n{out.stderr[-2000:]}")
            continue
        result = json.loads(lines[-1])
        losses = [ln for ln in lines[:-1] if "loss" in ln.lower() or "elbo" in ln.lower()]
        last = losses[-1] if losses else (lines[-2] if len(lines) > 1 else "")
        print(f"{which}: {result['seconds']:.1f} s, {result['calls']} field calls; {last}")


if __name__ == "__main__":
    main()
