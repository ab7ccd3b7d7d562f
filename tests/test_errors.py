"""Bad input raises an error that names the argument and what was expected."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import MLPField

from mali_func import ALF, odeint

F64 = torch.float64
Y0 = torch.ones(2, 3, dtype=F64)
T = torch.tensor([0.0, 1.0], dtype=F64)


def f(t, y):
    return -y


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"y0": torch.ones(3, dtype=torch.int64)}, TypeError, "y0 must have a floating-point"),
        ({"y0": "x"}, TypeError, "y0 must be a floating-point tensor"),
        ({"y0": ()}, TypeError, "y0 must be a floating-point tensor"),
        ({"y0": (Y0, Y0.float())}, TypeError, "share one dtype"),
        ({"y0": torch.tensor([1.0, math.nan], dtype=F64)}, ValueError, "y0 must be finite"),
        ({"y0": torch.tensor([math.inf], dtype=F64)}, ValueError, "y0 must be finite"),
        ({"t": torch.tensor([0, 1])}, TypeError, "t must have a floating-point"),
        ({"t": torch.zeros(2, 2, dtype=F64)}, ValueError, "t must be 1-D"),
        ({"t": torch.zeros(0, dtype=F64)}, ValueError, "at least 1 time"),
        ({"t": [0.0, 1.0, 1.0]}, ValueError, "strictly increasing or strictly decreasing"),
        ({"t": [0.0, 1.0, 0.5]}, ValueError, "strictly increasing or strictly decreasing"),
        ({"t": [0.0, math.nan]}, ValueError, "t must be finite"),
        ({"t": "0 1"}, TypeError, "t must be a 1-D tensor"),
        ({"rtol": 1e-3}, ValueError, "rtol apply to adaptive solves only"),
        ({"unroll": 0}, ValueError, "unroll must be an int >= 1"),
        ({"unroll": 2.0}, ValueError, "unroll must be an int >= 1"),
        ({"n_steps": None, "rtol": -1.0}, ValueError, "rtol must be non-negative"),
        ({"n_steps": None, "atol": "1"}, TypeError, "atol must be a real number"),
        ({"n_steps": None, "rtol": 0.0, "atol": 0.0}, ValueError, "cannot both be 0"),
        ({"n_steps": None, "max_steps": 0}, ValueError, "max_steps must be at least 1"),
        ({"n_steps": None, "first_step": 0.0}, ValueError, "first_step must be positive"),
        ({"stats": 1}, TypeError, "stats must be a bool"),
        ({"step_size": 0.1}, ValueError, "not both"),
        ({"n_steps": 0}, ValueError, "n_steps must be at least 1"),
        ({"n_steps": 2.0}, TypeError, "n_steps must be an int"),
        ({"n_steps": True}, TypeError, "n_steps must be an int"),
        ({"n_steps": None, "step_size": -0.1}, ValueError, "step_size must be positive"),
        ({"n_steps": None, "step_size": math.inf}, ValueError, "positive and finite"),
        ({"n_steps": None, "step_size": "1"}, TypeError, "step_size must be a real number"),
        ({"eta": 0.5}, ValueError, "eta must lie in"),
        ({"eta": 0.0}, ValueError, "eta must lie in"),
        ({"eta": 1.5}, ValueError, "eta must lie in"),
        ({"eta": "1"}, TypeError, "eta must be a real number"),
        (
            {"gradient": "adjoint"},
            ValueError,
            r"gradient must be MALI\(\), Checkpoint\(\), Backprop\(\) or one of",
        ),
        ({"reconstruction_tol": -1.0}, ValueError, "reconstruction_tol must be positive"),
        ({"monitor": object()}, TypeError, "monitor must be a DriftMonitor"),
        ({"func": 3}, TypeError, "func must be callable"),
        ({"options": {"maxstep": 1.0}}, ValueError, r"unknown key 'maxstep'.*'max_num_steps'"),
        ({"options": {"perturb": True}}, ValueError, r"options\['perturb'\] applies to the Runge"),
        ({"options": {"step_size": 0.1}}, ValueError, "options\\['step_size'\\] or n_steps"),
        ({"options": [("step_size", 0.1)]}, TypeError, "options must be a dict"),
        ({"method": "implicit_adams"}, ValueError, r"no reversible form.*'tsit5'"),
        ({"event_fn": lambda t, y: t}, ValueError, "event_fn does not depend on the state y"),
        ({"adjoint_params": torch.ones(2)}, TypeError, "adjoint_params must be a sequence"),
        ({"adjoint_params": 3}, TypeError, "adjoint_params must be a sequence of tensors.*got int"),
        ({"adjoint_params": [Y0, "w"]}, TypeError, r"adjoint_params\[1\] must be a tensor"),
        (
            {"method": "fixed_adams"},
            ValueError,
            r"'fixed_adams' \(torchdiffeq\) has no reversible.*odeint_adjoint runs it",
        ),
        ({"method": "scipy_solver"}, ValueError, r"no reversible form.*'rk4'"),
        ({"method": "rk45"}, ValueError, r"method must be one of \[.*'dopri5'"),
        ({"method": "rk4", "scheme": ALF()}, ValueError, "either method or scheme"),
        ({"options": {"grid_constructor": 1}}, TypeError, r"grid_constructor.*must be callable"),
        (
            {"n_steps": None, "step_size": 0.1, "options": {"step_size": 0.1}},
            ValueError,
            r"options\['step_size'\] or step_size=",
        ),
        (
            {"n_steps": None, "max_steps": 9, "options": {"max_num_steps": 9}},
            ValueError,
            r"options\['max_num_steps'\] or max_steps=",
        ),
        (
            {"n_steps": None, "options": {"max_num_steps": 10.5}},
            TypeError,
            r"options\['max_num_steps'\] must be a whole number, got 10.5",
        ),
        ({"args": (1.0,)}, TypeError, r"args\[0\] must be a torch.Tensor"),
        ({"args": torch.ones(2)}, TypeError, r"args must be a tuple or list.*got Tensor"),
        ({"args": 1.0}, TypeError, r"args must be a tuple or list.*got float"),
        ({"scheme": "alf"}, TypeError, "scheme must be a ReversibleScheme"),
        ({"scheme": ALF(0.9), "eta": 0.8}, ValueError, "set it on the scheme"),
    ],
)
def test_bad_argument_is_named(kwargs: dict, error: type, match: str) -> None:
    call = {"func": f, "y0": Y0, "t": T, "n_steps": 4, **kwargs}
    with pytest.raises(error, match=match):
        odeint(call.pop("func"), call.pop("y0"), call.pop("t"), **call)


def test_field_returning_another_shape_names_shape_and_dtype() -> None:
    expected = r"expected shape \(2, 3\) and dtype torch.float64, got shape \(3,\)"
    with pytest.raises(ValueError, match=expected):
        odeint(lambda t, y: y[0], Y0, T, n_steps=2)


def test_field_returning_another_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match=r"got shape \(2, 3\) and dtype torch.float32"):
        odeint(lambda t, y: y.float(), Y0, T, n_steps=2)


def test_field_returning_a_non_tensor_is_refused() -> None:
    with pytest.raises(TypeError, match="func must return tensors like y0"):
        odeint(lambda t, y: 1.0, Y0, T, n_steps=2)


def test_tuple_state_field_must_return_a_tuple() -> None:
    with pytest.raises(TypeError, match="tuple of 2 tensors"):
        odeint(lambda t, y: y[0], (Y0, Y0), T, n_steps=2)


def test_captured_tensor_requiring_grad_is_refused() -> None:
    w = torch.randn(3, 3, dtype=F64, requires_grad=True)
    with pytest.raises(TypeError, match=r"pass such tensors as odeint\(..., args="):
        odeint(lambda t, y: y @ w, Y0, T, n_steps=2)


def test_captured_module_parameters_are_refused(field: MLPField) -> None:
    with pytest.raises(TypeError, match="requires grad but is not passed explicitly"):
        odeint(lambda t, y: field(t, y), torch.ones(2, 3, dtype=F64), T, n_steps=2)


def test_captured_tensor_without_grad_is_fine() -> None:
    w = torch.randn(3, 3, dtype=F64)
    ys = odeint(lambda t, y: y @ w, Y0, T, n_steps=2)
    assert ys.shape == (2, 2, 3)


def test_t_on_another_device_is_refused() -> None:
    t = torch.tensor([0.0, 1.0], dtype=F64, device="meta")
    with pytest.raises(ValueError, match="t must be on the device of y0"):
        odeint(f, Y0, t, n_steps=2)


def test_t_of_another_floating_dtype_is_cast_not_refused() -> None:
    """As torchdiffeq does: the times take y0's dtype (an integer t is still refused, above), and
    a gradient with respect to t comes back in t's own dtype."""
    t = torch.tensor([0.0, 1.0], dtype=torch.float32, requires_grad=True)
    ys = odeint(f, Y0, t, n_steps=4)
    assert ys.dtype == F64
    ys[-1].sum().backward()
    assert t.grad is not None and t.grad.dtype == torch.float32


def test_tolerances_with_a_fixed_grid_method_name_the_method_not_n_steps() -> None:
    with pytest.raises(ValueError, match=r"rtol apply to adaptive solves, and method 'rk4' has no"):
        odeint(lambda t, y: -y, torch.ones(2), [0.0, 1.0], method="rk4", rtol=1e-5)
