"""The reverse reconstruction is measured, reported to a monitor, and warned about."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import MLPField
from torch import nn

from mali_func import DriftMonitor, ReconstructionWarning, odeint

F64 = torch.float64


def test_monitor_reports_round_off_for_an_undamped_solve(field: MLPField) -> None:
    monitor = DriftMonitor()
    y0 = torch.randn(4, 3, dtype=F64, requires_grad=True)
    odeint(field, y0, [0.0, 1.0], n_steps=20, monitor=monitor)[-1].sum().backward()
    assert monitor.error is not None
    assert 0 <= monitor.error.item() < 1e-12


def test_monitor_is_empty_before_backward_and_reset_by_a_new_solve(field: MLPField) -> None:
    monitor = DriftMonitor()
    assert monitor.error is None
    y0 = torch.randn(4, 3, dtype=F64, requires_grad=True)
    odeint(field, y0, [0.0, 1.0], n_steps=5, monitor=monitor)[-1].sum().backward()
    first = monitor.error
    odeint(field, y0, [0.0, 1.0], n_steps=5, monitor=monitor)
    assert first is not None and monitor.error is None


def test_heavily_damped_long_solve_warns_and_reports_large_drift(field: MLPField) -> None:
    monitor = DriftMonitor()
    y0 = torch.randn(4, 3, dtype=F64, requires_grad=True)
    ys = odeint(field, y0, [0.0, 1.0], n_steps=60, eta=0.7, monitor=monitor)
    with pytest.warns(ReconstructionWarning, match="reconstruction_tol"):
        ys[-1].sum().backward()
    assert monitor.error is not None and monitor.error.item() > 1e-3


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_the_default_tolerance_holds_float64_to_far_less_than_float32(dtype) -> None:
    """eta = 0.95 amplifies round-off by 1/0.9 a step: after 250 steps a float64 reconstruction
    is off by about 1e-5 (five digits lost), which the default (1e-7 in float64) reports and the
    float32 tolerance 1e-3 would not."""
    torch.manual_seed(0)
    lin = nn.Linear(3, 3).to(dtype)

    def field(t, y, w, b):
        return torch.tanh(y @ w.T + b)

    y0 = torch.randn(4, 3, dtype=dtype, requires_grad=True)
    args = tuple(lin.parameters())
    if dtype == F64:
        monitor = DriftMonitor(dtype=F64)
        ys = odeint(field, y0, [0.0, 2.0], n_steps=250, eta=0.95, args=args, monitor=monitor)
        with pytest.warns(ReconstructionWarning, match="reconstruction_tol=1e-07"):
            ys[-1].sum().backward()
        assert monitor.error is not None and 1e-7 < monitor.error.item() < 1e-3
        ys = odeint(
            field, y0, [0.0, 2.0], n_steps=250, eta=0.95, args=args, reconstruction_tol=1e-3
        )
    else:  # a healthy float32 solve (drift about 1e-6) is not reported
        ys = odeint(field, y0, [0.0, 2.0], n_steps=250, args=args)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReconstructionWarning)
        ys[-1].sum().backward()


def test_warning_can_be_disabled(field: MLPField) -> None:
    y0 = torch.randn(4, 3, dtype=F64, requires_grad=True)
    ys = odeint(field, y0, [0.0, 1.0], n_steps=60, eta=0.7, reconstruction_tol=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ys[-1].sum().backward()
