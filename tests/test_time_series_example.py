"""examples/time_series.py (the latent ODE of issue #30) in its quick mode: every gradient trains
the same model, and the exact ones agree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_the_latent_ode_trains_alike_through_every_exact_gradient(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "examples/time_series.py", "--quick", "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=600)  # fmt: skip
    results = json.loads((tmp_path / "time_series.json").read_text())
    assert set(results) == {"MALI (coupled tsit5)", "checkpoint (tsit5)", "backprop (tsit5)"}
    ck, bp = results["checkpoint (tsit5)"][0], results["backprop (tsit5)"][0]
    # Checkpointing and backprop differentiate the same discrete solve: the same training.
    for key in ("interp_mse", "extrap_mse"):
        assert abs(ck[key] - bp[key]) <= 1e-4 * bp[key]
    # The coupled pair is another integrator: close, not equal.
    mali = results["MALI (coupled tsit5)"][0]
    assert abs(mali["interp_mse"] - bp["interp_mse"]) <= 0.05 * bp["interp_mse"]
    assert mali["calls_per_iter"] > bp["calls_per_iter"]  # two stage sets a coupled step
