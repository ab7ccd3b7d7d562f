"""The reverse reconstruction is measured, reported to a monitor, and warned about."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import MLPField

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


def test_warning_can_be_disabled(field: MLPField) -> None:
    y0 = torch.randn(4, 3, dtype=F64, requires_grad=True)
    ys = odeint(field, y0, [0.0, 1.0], n_steps=60, eta=0.7, reconstruction_tol=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ys[-1].sum().backward()
