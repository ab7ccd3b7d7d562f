"""benchmarks/paper_reverse.py (claim 4 of issue #30) in its quick mode: MALI's backward rebuilds
the forward trajectory to round-off, the adjoint's does not, and the gradient errors follow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_reverse_error_and_gradient_error_go_together(tmp_path: Path) -> None:
    pytest.importorskip("torchdiffeq")
    cmd = [sys.executable, "benchmarks/paper_reverse.py", "--quick", "--out", str(tmp_path)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    results = json.loads((tmp_path / "reverse.json").read_text())["results"]
    assert (tmp_path / "reverse.png").stat().st_size > 0
    mali, adjoint, checkpoint = (results[k]["0.01"][0] for k in ("mali", "adjoint", "checkpoint"))
    assert checkpoint["reverse_error"] == 0.0 and checkpoint["gradient_error"] < 1e-5
    assert mali["reverse_error"] < 1e-3 and mali["gradient_error"] < 1e-4  # float32 round-off
    assert adjoint["reverse_error"] > 100 * mali["reverse_error"]
    assert adjoint["gradient_error"] > 100 * mali["gradient_error"]
    for runs in results.values():
        for run in runs.values():
            assert 0.3 < run[0]["test_acc"] <= 1.0  # trained beyond chance (0.1) in 20 steps
