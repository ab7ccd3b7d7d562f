"""MALI's gradient is the exact gradient of the discrete solve: equal to backprop through it."""

from __future__ import annotations

import pytest
import torch
from conftest import MLPField
from helpers import assert_close_all
from torch import nn

from mali_func import ALF, ReversibleScheme, odeint

F64 = torch.float64


def grads(field: nn.Module, y0, t, gradient: str, **options):
    ys = odeint(field, y0, t, gradient=gradient, **options)
    loss = (ys**2).sum() + torch.sin(ys[1:]).sum()
    return torch.autograd.grad(loss, [y0, t, *field.parameters()])


def assert_all_close(a, b, rtol: float = 1e-10) -> None:
    assert_close_all(a, b, rtol, floor=1e-300)


@pytest.mark.parametrize("eta", [1.0, 0.95, 0.9])
@pytest.mark.parametrize("times", [[0.0, 1.0], [0.0, 0.2, 0.7, 1.3], [2.0, 1.5, 0.0]])
def test_mali_equals_backprop(field: MLPField, eta: float, times: list[float]) -> None:
    y0 = torch.randn(5, 3, dtype=F64, requires_grad=True)
    t = torch.tensor(times, dtype=F64, requires_grad=True)
    mali = grads(field, y0, t, "mali", n_steps=12, eta=eta)
    ref = grads(field, y0, t, "backprop", n_steps=12, eta=eta)
    assert_all_close(mali, ref)


def test_mali_equals_backprop_with_step_size(field: MLPField) -> None:
    y0 = torch.randn(4, 3, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.35, 1.0], dtype=F64, requires_grad=True)
    assert_all_close(
        grads(field, y0, t, "mali", step_size=0.1), grads(field, y0, t, "backprop", step_size=0.1)
    )


def test_gradcheck_against_finite_differences(field: MLPField) -> None:
    y0 = torch.randn(2, 3, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.4, 1.0], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda y0, t: odeint(field, y0, t, n_steps=5), (y0, t))

    def with_weight(w):
        return odeint(
            lambda t, y, w: torch.tanh(y @ w.T), y0.detach(), t.detach(), args=(w,), n_steps=4
        )

    w = torch.randn(3, 3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(with_weight, (w,))


def test_tuple_state_gradients_equal_backprop() -> None:
    net = MLPField()

    class CNF(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, t, state):
            z, _ = state
            dz = self.net(t, z)
            return dz, -(dz**2).sum(-1)

    cnf = CNF()
    z0 = torch.randn(4, 3, dtype=F64, requires_grad=True)
    l0 = torch.zeros(4, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    results = []
    for gradient in ("mali", "backprop"):
        zs, ls = odeint(cnf, (z0, l0), t, n_steps=8, gradient=gradient)
        assert zs.shape == (3, 4, 3) and ls.shape == (3, 4)
        loss = zs[-1].pow(2).sum() + ls.sum() + zs[1].sum()
        results.append(torch.autograd.grad(loss, [z0, l0, *cnf.parameters()]))
    assert_all_close(*results)


def test_plain_callable_with_args_gets_gradients() -> None:
    w = torch.randn(3, 3, dtype=F64, requires_grad=True)
    y0 = torch.randn(3, dtype=F64, requires_grad=True)
    out = []
    for gradient in ("mali", "backprop"):
        ys = odeint(
            lambda t, y, w: torch.tanh(w @ y),
            y0,
            [0.0, 1.0],
            n_steps=10,
            args=(w,),
            gradient=gradient,
        )
        out.append(torch.autograd.grad(ys[-1].sum(), [y0, w]))
    assert_all_close(*out)


def test_backward_evaluates_the_field_once_per_step(field: MLPField) -> None:
    y0 = torch.randn(2, 3, dtype=F64, requires_grad=True)
    ys = odeint(field, y0, [0.0, 0.5, 1.0], n_steps=7)
    before = field.calls
    ys[-1].sum().backward()
    assert field.calls - before == 14


class GenericALF(ALF):
    """ALF through the engine's generic reverse (inverse, then VJP of the step)."""

    reverse = ReversibleScheme.reverse


def test_generic_reverse_of_a_custom_scheme_equals_backprop(field: MLPField) -> None:
    y0 = torch.randn(3, 3, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=F64, requires_grad=True)
    generic = grads(field, y0, t, "mali", n_steps=6, scheme=GenericALF(0.9))
    ref = grads(field, y0, t, "backprop", n_steps=6, eta=0.9)
    assert_all_close(generic, ref)


def test_float32_mali_is_close_to_backprop() -> None:
    field = MLPField(dtype=torch.float32)
    y0 = torch.randn(8, 3, requires_grad=True)
    t = torch.tensor([0.0, 1.0], requires_grad=True)
    mali = grads(field, y0, t, "mali", n_steps=50)
    assert_all_close(mali, grads(field, y0, t, "backprop", n_steps=50), rtol=1e-4)
