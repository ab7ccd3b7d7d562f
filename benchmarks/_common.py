"""Shared pieces of the benchmarks: the problems, the fresh-process runner, markdown tables.

Every measured point runs in a fresh Python process (``run_child``), so its peak resident memory
and its first ("cold") timing are not shaped by what ran before. A child is started as
``python <script> --child <args...>`` and must print one JSON object as its last line of stdout.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

RESULTS = Path(__file__).resolve().parent / "results"
CHILD_TIMEOUT_S = 600


class CountingField(nn.Module):
    """``f(t, z) = Linear-tanh-Linear(z) - damping * z`` that counts its own calls.

    Every call of ``forward`` counts as one field evaluation, wherever it comes from: the forward
    solve, a backward pass that re-evaluates the field (MALI, the adjoint method), or a check.
    """

    def __init__(self, dim: int, hidden: int, damping: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim))
        self.damping = damping
        self.calls = 0

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        self.calls += 1
        out = self.net(z)
        return out - self.damping * z if self.damping else out


class SmallField(nn.Module):
    """``f(t, z) = Linear(2,64)-tanh-Linear(64,2)(z)`` (seeded), without Python side effects: a
    compiled ``while_loop`` body may not mutate Python state, so not :class:`CountingField`."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 2))

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        return self.net(z)


def core_problem(batch: int = 256) -> tuple[CountingField, Tensor]:
    """The anchors' problem: ``Linear(64,256)-tanh-Linear(256,64)``, float32, one thread."""
    torch.set_num_threads(1)
    field = CountingField(64, 256)
    torch.manual_seed(1)
    return field, torch.randn(batch, 64, requires_grad=True)


def peak_rss_mb() -> float:
    """Peak resident set of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_of(fn: Callable[[], object], rounds: int = 5) -> float:
    """The fastest of ``rounds`` calls, in seconds."""
    return min(timed(fn) for _ in range(rounds))


def run_child(
    script: Path,
    args: Sequence[str],
    timeout: float = CHILD_TIMEOUT_S,
    env: dict[str, str] | None = None,
) -> Any:
    """Run ``script --child *args`` in a fresh interpreter; its last stdout line, parsed as JSON.

    ``env`` adds variables to the child's environment (one thread each for OpenMP and MKL).
    Returns ``None`` (and reports on stderr) when the child fails or runs past ``timeout``.
    """
    cmd = [sys.executable, str(script), "--child", *args]
    full = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full)
    except subprocess.TimeoutExpired:
        sys.stderr.write(f"{script.name} {' '.join(args)}: timed out after {timeout:.0f} s\n")
        return None
    if proc.returncode != 0 or not proc.stdout.strip():
        sys.stderr.write(f"{script.name} {' '.join(args)} failed:\n{proc.stderr[-2000:]}\n")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> str:
    """A markdown table; ``align`` has one letter per column, ``l`` or ``r`` (default ``l``)."""
    align = align.ljust(len(headers), "l")
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(x: float | None, spec: str = ".2f") -> str:
    """Format a number, or ``n/a`` for a missing one."""
    return "n/a" if x is None else format(x, spec)


def write(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` (creating its folder), ending in one newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")
    return path


def save_json(path: Path, data: object) -> Path:
    """Keep raw numbers next to the tables, for plots and later comparisons."""
    return write(path, json.dumps(data, indent=1))


def machine() -> dict[str, str]:
    """CPU, core count and the versions that the numbers depend on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("torchdiffeq", "TorchDiffEqPack", "matplotlib"):
        try:
            from importlib.metadata import version

            versions[mod] = version(mod.lower())
        except Exception:
            versions[mod] = "not installed"
    return {"cpu": cpu, "cores": str(os.cpu_count()), **versions}
