"""Regression tests for the second hostile probe's cases (each failed before its fix)."""

from __future__ import annotations

import pytest
import torch
from helpers import F64
from torch import Tensor, nn

from mali_func import ODEBlock, odeint


class Subclassed(torch.Tensor):
    """A tensor subclass of a user's own (its values can be read like any tensor's)."""


def test_tensor_subclasses_get_the_argument_checks() -> None:
    t = torch.tensor([0.0, 1.0, 0.5]).as_subclass(Subclassed)
    with pytest.raises(ValueError, match="strictly increasing or strictly decreasing"):
        odeint(lambda t, y: -y, torch.ones(2), t, n_steps=2)
    y0 = torch.ones(2).as_subclass(Subclassed)
    with pytest.raises(RuntimeError, match="adaptive solve failed"):
        odeint(lambda t, y: y**2, y0, [0.0, 2.0], method="tsit5", rtol=1e-6)


def test_times_that_collapse_in_the_states_dtype_name_the_cast() -> None:
    t = torch.tensor([0.0, 1.0, 1.0 + 1e-9], dtype=F64)
    with pytest.raises(ValueError, match=r"monotonic in torch.float64 but not once cast.*float32"):
        odeint(lambda t, y: -y, torch.ones(2), t, n_steps=2)


class Linear2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self.lin(y)


def test_a_dtype_round_trip_does_not_round_an_ode_blocks_times() -> None:
    block = ODEBlock(Linear2(), t_eval=[0.03, 0.1], n_steps=2)
    block.bfloat16().float()
    torch.testing.assert_close(
        block.times, torch.tensor([0.0, 0.03, 0.1, 1.0], dtype=F64), rtol=0, atol=0
    )


def test_setting_an_ode_blocks_times_moves_its_grid() -> None:
    torch.manual_seed(0)
    block = ODEBlock(Linear2(), n_steps=4)
    x = torch.randn(3, 2)
    block.t1 = 2.0
    expected = odeint(block.field, x, [0.0, 2.0], n_steps=4)[-1]
    torch.testing.assert_close(block(x), expected)
    block.t_eval = [0.5, 1.0]
    assert block(x).shape == (2, 3, 2)
    with pytest.raises(ValueError, match="t0 and t1 must differ"):
        block.t0 = 2.0
    with pytest.raises(TypeError, match="t1 must be a real number"):
        block.t1 = "late"  # type: ignore[assignment]


@pytest.mark.parametrize("gradient", ["mali", "checkpoint", "backprop"])
def test_a_field_modifying_its_input_in_place_is_refused_and_y0_kept(gradient: str) -> None:
    y0 = torch.ones(2)
    options = {"method": "rk4", "coupling": None} if gradient == "checkpoint" else {}
    with pytest.raises(TypeError, match="modifies its input y in place"):
        odeint(lambda t, y: y.mul_(-1), y0, [0.0, 1.0], n_steps=2, gradient=gradient, **options)  # type: ignore[arg-type]
    torch.testing.assert_close(y0, torch.ones(2))

    class InPlace(nn.Module):
        def forward(self, t: Tensor, y: Tensor) -> Tensor:
            y += 1.0
            return y

    leaf = torch.ones(2, requires_grad=True)
    with pytest.raises(TypeError, match="modifies its input y in place"):
        odeint(InPlace(), leaf, [0.0, 1.0], n_steps=2, gradient=gradient, **options)  # type: ignore[arg-type]


class Misbehaving:
    """A controller that returns one kind of wrong proposal."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def init(self, h0: Tensor) -> tuple[Tensor, ...]:
        return ()

    def propose(self, memory: tuple, err: Tensor, h: Tensor, order: int) -> tuple:
        accept = err <= 1
        wrong = {
            "nan": (accept, h * float("nan"), ()),
            "zero": (accept, h * 0, ()),
            "negative": (accept, -h, ()),
            "float": (accept, 0.1, ()),
            "shape": (accept, h.reshape(1), ()),
            "int_accept": (accept.long(), h, ()),
            "two": (accept, h),
        }
        return wrong[self.kind]


@pytest.mark.parametrize("kind", ["nan", "zero", "negative"])
def test_a_controller_proposing_a_bad_step_is_named(kind: str) -> None:
    with pytest.raises(RuntimeError, match="controller Misbehaving proposed a step size that is"):
        odeint(lambda t, y: -y, torch.ones(2), [0.0, 1.0], method="tsit5",
               controller=Misbehaving(kind))  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("float", "returned h_next = float 0.1; expected a floating tensor"),
        ("shape", r"returned h_next = torch.float32 of shape \(1,\)"),
        ("int_accept", "returned accept = torch.int64 of shape"),
        ("two", r"must return \(accept, h_next, memory\)"),
    ],
)
def test_a_controller_returning_the_wrong_types_gets_a_type_error(kind: str, message: str) -> None:
    with pytest.raises(TypeError, match=f"controller Misbehaving.propose {message}"):
        odeint(lambda t, y: -y, torch.ones(2), [0.0, 1.0], method="tsit5",
               controller=Misbehaving(kind))  # fmt: skip


@pytest.mark.parametrize("method", ["tsit5", "dopri5"])
def test_a_float16_adaptive_solve_starts_and_finishes(method: str) -> None:
    """The first-step estimate and the error norm are measured in float32: in float16 their
    squares overflowed, and the solve failed at t = 0 with 'max_steps ... not enough'."""
    y0 = torch.tensor([1.0, 2.0], dtype=torch.float16)
    rotation = lambda t, y: torch.stack([y[1], -y[0]])  # noqa: E731
    ys, stats = odeint(rotation, y0, [0.0, 2.0], method=method, stats=True)
    exact = odeint(rotation, y0.double(), [0.0, 2.0], method=method, rtol=1e-9, atol=1e-12)
    assert ys.dtype == torch.float16 and not bool(stats.failed)
    torch.testing.assert_close(ys[-1].double(), exact[-1], rtol=2e-2, atol=2e-2)
