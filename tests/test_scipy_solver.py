"""``odeint_adjoint(..., method="scipy_solver")``: SciPy's solvers forward, the continuous adjoint
backward (float64 throughout), against the matrix exponential, backprop through a tight dopri5
solve, and finite differences."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from helpers import F64, relative_error
from torch import Tensor, nn

from mali_func import CallbackWarning, ReconstructionWarning, odeint, odeint_adjoint
from mali_func.interop._scipy import SOLVERS

pytest.importorskip("scipy")

A = torch.tensor([[-0.3, 1.0], [-1.0, -0.2]], dtype=F64)
T = torch.tensor([0.0, 0.4, 1.5], dtype=F64)
TIGHT = {"rtol": 1e-10, "atol": 1e-12}


def _linear(t: Tensor, y: Tensor) -> Tensor:
    return y @ A.T


class _Field(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2, dtype=F64)
        self.unused = nn.Parameter(torch.ones(3, dtype=F64))

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return torch.tanh(self.lin(y)) * torch.cos(t)


@pytest.mark.parametrize("solver", SOLVERS)
def test_each_solver_matches_the_matrix_exponential(solver: str) -> None:
    y0 = torch.tensor([1.0, -0.5], dtype=F64)
    ys = odeint_adjoint(_linear, y0, T, method="scipy_solver", options={"solver": solver}, **TIGHT)
    want = torch.stack([torch.linalg.matrix_exp(A * s) @ y0 for s in T])
    assert relative_error(ys, want) < 1e-6


@pytest.mark.parametrize("solver", ["LSODA", "RK45", "DOP853"])
def test_adjoint_gradients_match_backprop_through_a_tight_dopri5(solver: str) -> None:
    torch.manual_seed(0)
    field = _Field()
    y0 = torch.tensor([[0.3, -1.0], [1.2, 0.4]], dtype=F64, requires_grad=True)
    t = T.clone().requires_grad_()
    weights = torch.randn(3, 2, 2, dtype=F64)

    def grads(**solve) -> tuple[Tensor, ...]:
        loss = (odeint_adjoint(field, y0, t, **solve) * weights).sum()
        leaves = (y0, t, field.lin.weight, field.lin.bias, field.unused)
        return torch.autograd.grad(loss, leaves, allow_unused=True)

    got = grads(method="scipy_solver", options={"solver": solver}, **TIGHT)
    want = grads(method="dopri5", gradient="backprop", rtol=1e-12, atol=1e-13)
    assert torch.equal(got[-1], torch.zeros(3, dtype=F64))  # the unused parameter
    assert want[-1] is None
    for g, w in zip(got[:-1], want[:-1], strict=True):
        assert relative_error(g, w) < 1e-6


def test_gradcheck_through_the_state_the_times_and_args() -> None:
    def field(t: Tensor, y: Tensor, m: Tensor) -> Tensor:
        return y @ m.T + torch.sin(t)

    def solve(y0: Tensor, t: Tensor, m: Tensor) -> Tensor:
        return odeint_adjoint(
            field, y0, t, method="scipy_solver", options={"solver": "DOP853"}, args=(m,), **TIGHT
        )

    inputs = (torch.tensor([0.5, -0.2], dtype=F64), T.clone(), A.clone())
    assert torch.autograd.gradcheck(
        solve, tuple(x.requires_grad_() for x in inputs), atol=1e-6, rtol=1e-5
    )


def test_tuple_state_gets_each_part_and_its_gradient() -> None:
    def field(t: Tensor, y: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        return y[1], -y[0]

    x0 = torch.tensor([1.0], dtype=F64, requires_grad=True)
    v0 = torch.tensor([0.0], dtype=F64, requires_grad=True)
    xs, vs = odeint_adjoint(field, (x0, v0), T, method="scipy_solver", **TIGHT)
    torch.testing.assert_close(xs[:, 0], torch.cos(T), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(vs[:, 0], -torch.sin(T), rtol=1e-7, atol=1e-9)
    xs[-1].sum().backward()
    torch.testing.assert_close(x0.grad, torch.cos(T[-1:]), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(v0.grad, torch.sin(T[-1:]), rtol=1e-6, atol=1e-8)


def test_adjoint_params_of_a_plain_function_are_differentiated() -> None:
    w = torch.tensor(0.7, dtype=F64, requires_grad=True)
    y0 = torch.tensor([2.0], dtype=F64)

    def field(t: Tensor, y: Tensor) -> Tensor:
        return -w * y

    ys = odeint_adjoint(field, y0, T, method="scipy_solver", adjoint_params=(w,), **TIGHT)
    (g,) = torch.autograd.grad(ys[-1].sum(), w)
    s = float(T[-1])
    assert g.item() == pytest.approx(-2.0 * s * math.exp(-0.7 * s), rel=1e-6)
    with pytest.raises(TypeError, match=r"args="):
        odeint_adjoint(field, y0, T, method="scipy_solver")


def test_a_one_element_t_returns_y0_stacked() -> None:
    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    ys = odeint_adjoint(_linear, y0, T[:1], method="scipy_solver")
    assert ys.shape == (1, 2) and torch.equal(ys[0], y0)


def test_reconstruction_drift_of_the_backward_solve_is_reported() -> None:
    y0 = torch.tensor([1.0, 0.5], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 2.0], dtype=F64)
    ys = odeint_adjoint(lambda t, y: -50 * y, y0, t, 1e-3, 1e-6, method="scipy_solver")
    with pytest.warns(ReconstructionWarning, match="tolerances away from the forward"):
        ys[-1].sum().backward()


def test_a_well_resolved_backward_solve_does_not_warn() -> None:
    y0 = torch.tensor([1.0, 0.5], dtype=F64, requires_grad=True)
    ys = odeint_adjoint(_linear, y0, T, method="scipy_solver", **TIGHT)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReconstructionWarning)
        ys.sum().backward()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"options": {"solver": "euler"}}, ValueError, r"options\['solver'\] must be one of"),
        ({"options": {"step_size": 0.1}}, ValueError, r"unknown options \['step_size'\]"),
        ({"n_steps": 4}, ValueError, r"torchdiffeq's arguments only; \['n_steps'\]"),
        ({"t": torch.zeros(2, 2, dtype=F64)}, ValueError, "t must be 1-D"),
        ({"t": torch.tensor([0.0, 1.0, 0.5], dtype=F64)}, ValueError, "strictly increasing"),
        ({"y0": torch.tensor([1, 2])}, TypeError, "y0 must have a floating-point dtype"),
        ({"y0": torch.tensor([math.nan, 1.0], dtype=F64)}, ValueError, "y0 must be finite"),
        ({"rtol": -1.0}, ValueError, "rtol must be positive and finite"),
        ({"func": lambda t, y: y[:1]}, ValueError, "func must return a tensor of the shape"),
        ({"event_fn": lambda t, y: y.sum()}, ValueError, r"event_fn with method='scipy_solver'"),
        ({"adjoint_params": (1.0,)}, TypeError, r"adjoint_params\[0\] must be a tensor"),
    ],
)
def test_bad_input_is_named(kwargs: dict, error: type, match: str) -> None:
    call = {"func": _linear, "y0": torch.ones(2, dtype=F64), "t": T, **kwargs}
    with pytest.raises(error, match=match):
        odeint_adjoint(call.pop("func"), call.pop("y0"), call.pop("t"), method="scipy_solver",
                       **call)  # fmt: skip


def test_transforms_and_odeint_refuse_it_with_an_alternative() -> None:
    y0 = torch.ones(3, 2, dtype=F64)

    def solve(y: Tensor) -> Tensor:
        return odeint_adjoint(_linear, y, T, method="scipy_solver")

    with pytest.raises(RuntimeError, match=r"eager code only.*'dopri5'"):
        torch.func.vmap(solve)(y0)
    with pytest.raises(ValueError, match=r"odeint_adjoint runs it"):
        odeint(_linear, y0, T, method="scipy_solver")


def test_step_callbacks_warn_that_scipy_does_not_call_them() -> None:
    class Field(nn.Module):
        def forward(self, t: Tensor, y: Tensor) -> Tensor:
            return -y

        def callback_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None: ...

    with pytest.warns(CallbackWarning, match="callback_step: scipy_solver .* calls no step"):
        odeint_adjoint(Field(), torch.ones(2, dtype=F64), T, method="scipy_solver")
