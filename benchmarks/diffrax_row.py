"""The diffrax rows of the adaptive table: the same problem, solved in JAX.

Released diffrax (0.7.x) has no reversible adjoint; its exact-gradient default, and what a JAX
user would compare with, is ``Tsit5`` with ``RecursiveCheckpointAdjoint`` (checkpointed backprop
through the solver's steps). Two interpreters take part:

* :func:`rows` (our venv, with torch, called by ``benchmarks/adaptive_steps.py``) writes the
  adaptive problem (its MLP weights, ``y0``) and its reference solution and gradients to an
  ``.npz`` and runs this file in the JAX interpreter;
* ``--run FILE.npz`` (a venv with ``jax[cpu]`` and ``diffrax``, one thread, float64): solves
  ``f(y) = W2 tanh(W1 y) - 0.1 y`` over [0, 5] with ``diffrax.Tsit5`` and a ``PIDController`` at
  rtol = atol = each tolerance, differentiates ``mean(y(5)^2)`` in ``(W1, W2)`` with ``jax.grad``
  and prints JSON rows: accepted and rejected steps, field evaluations, solution and gradient
  error against the reference (the gradient error is the larger of the two weight matrices'
  relative 2-norm errors, as in the torch rows), and the warm time of one gradient.

Field evaluations are counted exactly, as the torch rows count them: a ``jax.debug.callback`` in
the field bumps a counter each time an evaluation runs (its JVP calls it on the primal only, and
the transposed pass has none), once in a forward-only solve (the forward count) and once in the
gradient (forward + the evaluations that ``RecursiveCheckpointAdjoint`` recomputes from its
checkpoints in the backward; the backward's VJPs reuse those recomputations' linearisations).
The timed gradient runs without the callback.

The rows appear when ``MALI_DIFFRAX_PYTHON`` (or ``/work/jaxvenv/bin/python``) is an interpreter
that imports both; otherwise the table notes them as skipped. Install:
``pip install -e '.[diffrax]'`` (this venv), or a separate ``python -m venv jaxvenv &&
jaxvenv/bin/pip install 'jax[cpu]' diffrax`` named by ``MALI_DIFFRAX_PYTHON``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

CANDIDATES = (
    os.environ.get("MALI_DIFFRAX_PYTHON", ""),
    sys.executable,  # after pip install -e '.[diffrax]'
    "/work/jaxvenv/bin/python",
)


def jax_python() -> str | None:
    """An interpreter that imports jax and diffrax, or ``None``."""
    for path in CANDIDATES:
        if path and Path(path).exists():
            probe = subprocess.run([path, "-c", "import jax, diffrax"], capture_output=True)
            if probe.returncode == 0:
                return path
    return None


def rows(tols: tuple[float, ...], problem: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The diffrax rows for ``tols`` (``None`` when no JAX interpreter is available)."""
    python = jax_python()
    if python is None:
        return None
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "problem.npz"
        np.savez(path, **{k: v.detach().numpy() for k, v in problem.items()})
        env = {**os.environ, "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false "
               "intra_op_parallelism_threads=1", "JAX_ENABLE_X64": "1"}  # fmt: skip
        args = [python, __file__, "--run", str(path), "--tols", *map(str, tols)]
        proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"diffrax rows failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(path: Path, tols: list[float]) -> list[dict[str, Any]]:  # pragma: no cover (JAX venv)
    import time

    import diffrax
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    data = dict(np.load(path))
    y0 = jnp.asarray(data["y0"])
    params = (jnp.asarray(data["w1"]), jnp.asarray(data["w2"]))
    ref_y, ref_g = data["ref_y"], (data["ref_g1"], data["ref_g2"])
    calls = [0]

    def bump() -> None:
        calls[0] += 1

    def make_field(counted: bool) -> Any:
        def field(t: Any, y: Any, p: Any) -> Any:
            if counted:
                jax.debug.callback(bump)
            w1, w2 = p
            return jnp.tanh(y @ w1.T) @ w2.T - 0.1 * y

        return field

    def make_solve(tol: float, counted: bool) -> Any:
        term = diffrax.ODETerm(make_field(counted))

        def solve(p: Any) -> Any:
            return diffrax.diffeqsolve(
                term, diffrax.Tsit5(), t0=0.0, t1=5.0, dt0=None, y0=y0, args=p,
                stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol),
                adjoint=diffrax.RecursiveCheckpointAdjoint(), max_steps=100_000,
            )  # fmt: skip

        return solve

    def counted_calls(fn: Any) -> int:
        calls[0] = 0
        jax.block_until_ready(fn(params))
        jax.effects_barrier()  # every callback has run
        return calls[0]

    out = []
    for tol in tols:
        solve, solve_counted = make_solve(tol, False), make_solve(tol, True)
        grad = jax.jit(jax.grad(lambda p, s=solve: jnp.mean(s(p).ys[-1] ** 2)))
        grad_counted = jax.jit(jax.grad(lambda p, s=solve_counted: jnp.mean(s(p).ys[-1] ** 2)))
        sol = jax.jit(solve)(params)
        g = jax.block_until_ready(grad(params))
        start = time.perf_counter()
        jax.block_until_ready(grad(params))
        seconds = time.perf_counter() - start
        forward = counted_calls(jax.jit(solve_counted))
        total = counted_calls(grad_counted)
        y1 = np.asarray(sol.ys[-1])
        sol_err = float(np.linalg.norm(y1 - ref_y) / np.linalg.norm(ref_y))
        grad_err = max(
            float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b)) for a, b in zip(g, ref_g)
        )
        out.append({"tol": tol, "accepted": int(sol.stats["num_accepted_steps"]),
                    "rejected": int(sol.stats["num_rejected_steps"]), "forward_evals": forward,
                    "backward_evals": total - forward, "solution_error": sol_err,
                    "gradient_error": grad_err, "grad_seconds": seconds})  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path)
    parser.add_argument("--tols", type=float, nargs="+", default=[1e-3, 1e-5, 1e-7])
    ns = parser.parse_args()
    if ns.run is None:
        parser.error("--run FILE.npz (benchmarks/adaptive_steps.py writes it)")
    print(json.dumps(run(ns.run, ns.tols)))


if __name__ == "__main__":
    sys.exit(main())
