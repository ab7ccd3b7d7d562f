"""Importing the package has no side effects on torch, and exports only the public surface."""

from __future__ import annotations

import subprocess
import sys

import mali_func

SNAPSHOT = """
import torch._functorch.config as fc, torch._inductor.config as ic, torch._dynamo.config as dc
def snap():
    return {m.__name__: repr(m.get_config_copy()) for m in (fc, ic, dc)}
before = snap()
import mali_func, mali_func.export
after = snap()
changed = [k for k in before if before[k] != after[k]]
print("changed:", changed)
"""


def test_import_leaves_every_torch_config_unchanged() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SNAPSHOT], capture_output=True, text=True, check=True
    ).stdout
    assert "changed: []" in out, out


def test_public_surface_holds_no_internal_classes() -> None:
    expected = {
        "ALF",
        "Adaptive",
        "Backprop",
        "Checkpoint",
        "Fixed",
        "MALI",
        "ButcherTableau",
        "Controller",
        "CoupledRK",
        "CallbackWarning",
        "CouplingWarning",
        "DPODEBlock",
        "DriftMonitor",
        "FallbackWarning",
        "IntegralController",
        "ODEBlock",
        "ParasiticModeWarning",
        "ReconstructionWarning",
        "ReversibleHeun",
        "ReversibleScheme",
        "RungeKutta",
        "SolveStats",
        "odeint",
        "odeint_adjoint",
        "odeint_event",
        "prepare_for_opacus",
    }
    assert set(mali_func.__all__) == expected
    assert not hasattr(mali_func, "Chain") and not hasattr(mali_func, "ReversibleChain")
