"""The main job runs end to end in its fast mode and learns far better than chance."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_digits_classifier_fast_mode_beats_chance(tmp_path: Path) -> None:
    """The main job as `make demo` runs it (compiled); its --no-compile switch only leaves out
    torch.compile around the same training step, whose eager gradients the library's tests check."""
    proc = subprocess.run(
        [sys.executable, "examples/digits_classifier.py", "--fast", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    acc = float(re.search(r"\| test accuracy\s+\| ([0-9.]+)", proc.stdout).group(1))
    reloaded = float(
        re.search(r"\| reloaded checkpoint accuracy\s+\| ([0-9.]+)", proc.stdout).group(1)
    )
    assert acc > 0.5  # chance is 0.1
    assert reloaded == acc
    mali = float(re.search(r"memory per step, MALI\s+\| ([0-9.]+)", proc.stdout).group(1))
    backprop = float(re.search(r"memory per step, backprop\s+\| ([0-9.]+)", proc.stdout).group(1))
    assert mali < backprop
    # The DriftMonitor saw every step's reconstruction (compiled too): a number, and small.
    drift = float(re.search(r"reconstruction error\s+\| ([0-9.e+-]+)", proc.stdout).group(1))
    assert 0 < drift < 1e-3
    assert (tmp_path / "training.png").stat().st_size > 10_000
    onnx_err = float(re.search(r"max rel\. error ([0-9.e+-]+)", proc.stdout).group(1))
    assert onnx_err < 1e-4
    assert (tmp_path / "digits.onnx").stat().st_size > 10_000
    assert (tmp_path / "digits_ode.pt").exists()
