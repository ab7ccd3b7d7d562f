"""examples/continuous_flow.py (the FFJORD-style flow) in its quick mode: every gradient trains the
same flow, the exact ones alike, and the flow learns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

MALI, CHECKPOINT, BACKPROP = "MALI (coupled tsit5)", "checkpoint (tsit5)", "backprop (tsit5)"


@pytest.mark.slow
def test_the_continuous_flow_trains_alike_through_every_exact_gradient(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "examples/continuous_flow.py", "--quick", "--out", str(tmp_path)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    results = json.loads((tmp_path / "continuous_flow.json").read_text())
    assert {"tolerances", "iters", "seeds", "planar", "digits"} <= set(results)
    assert set(results["planar"]) == {"two moons"}
    for by_method in (results["planar"]["two moons"], results["digits"]):
        assert {MALI, CHECKPOINT, BACKPROP} <= set(by_method)
        ck, bp, mali = by_method[CHECKPOINT][0], by_method[BACKPROP][0], by_method[MALI][0]
        # Checkpointing and backprop differentiate the same discrete solve: the same training.
        assert abs(ck["test"] - bp["test"]) <= 1e-4 * abs(bp["test"])
        # The coupled pair is another integrator: close, not equal.
        assert abs(mali["test"] - bp["test"]) <= 0.02 * abs(bp["test"])
        for runs in by_method.values():
            assert runs[0]["test"] < runs[0]["test_initial"]  # it learns
        assert mali["calls_per_iter"] > bp["calls_per_iter"]  # two stage sets a coupled step
        # Backprop keeps every step's graph; MALI keeps none of them after the forward.
        assert bp["forward_saved_bytes"] > 2 * mali["forward_saved_bytes"]
        assert bp["peak_saved_bytes"] >= bp["forward_saved_bytes"]
    moons = results["planar"]["two moons"][MALI][0]
    assert moons["test_initial"] - moons["test"] > 0.3  # nats, after 30 iterations
    png = tmp_path / "flow_two_moons.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (tmp_path / "continuous_flow.md").read_text()
    assert "two moons" in report and "bits/dim" in report
