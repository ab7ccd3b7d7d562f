"""torch.func sees through the solve: per-sample gradients, jacrev, functional_call."""

from __future__ import annotations

import pytest
import torch
from conftest import MLPField
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

from mali_func import odeint

F64 = torch.float64


class Model(nn.Module):
    """A model that calls odeint inside its forward, as users write them."""

    def __init__(self, gradient: str = "mali") -> None:
        super().__init__()
        self.field = MLPField()
        self.head = nn.Linear(3, 1, dtype=F64)
        self.gradient = gradient

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = odeint(self.field, x, [0.0, 0.5, 1.0], n_steps=6, gradient=self.gradient)
        return self.head(ys[-1]).squeeze(-1) + ys[1].sum(-1)


@pytest.mark.parametrize("gradient", ["mali", "backprop"])
def test_vmap_grad_per_sample_gradients_equal_a_loop(gradient: str) -> None:
    model = Model(gradient)
    params = {k: v.detach() for k, v in model.named_parameters()}
    xs = torch.randn(5, 3, dtype=F64)
    targets = torch.randn(5, dtype=F64)

    def loss(p, x, y):
        return (functional_call(model, p, (x.unsqueeze(0),)).squeeze(0) - y) ** 2

    batched = vmap(grad(loss), in_dims=(None, 0, 0))(params, xs, targets)
    for i in range(5):
        single = grad(loss)(params, xs[i], targets[i])
        for name in params:
            torch.testing.assert_close(batched[name][i], single[name], rtol=1e-10, atol=1e-12)


def test_per_sample_gradients_equal_autograd_backprop() -> None:
    model = Model("mali")
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.randn(3, dtype=F64)

    def loss(p, x):
        return functional_call(model, p, (x.unsqueeze(0),)).sum()

    g = grad(loss)(params, x)
    ref = Model("backprop")
    ref.load_state_dict(model.state_dict())
    ref(x.unsqueeze(0)).sum().backward()
    for name, p in ref.named_parameters():
        torch.testing.assert_close(g[name], p.grad, rtol=1e-10, atol=1e-12)


def test_grad_with_respect_to_y0_equals_autograd(field: MLPField) -> None:
    y0 = torch.randn(3, dtype=F64)

    def final(y):
        return odeint(field, y, [0.0, 1.0], n_steps=10)[-1].pow(2).sum()

    y = y0.clone().requires_grad_()
    final(y).backward()
    torch.testing.assert_close(grad(final)(y0), y.grad, rtol=1e-10, atol=1e-12)


def test_jacrev_equals_backprop_jacobian(field: MLPField) -> None:
    y0 = torch.randn(3, dtype=F64)
    jac = jacrev(lambda y: odeint(field, y, [0.0, 1.0], n_steps=10)[-1])(y0)
    ref = torch.autograd.functional.jacobian(
        lambda y: odeint(field, y, [0.0, 1.0], n_steps=10, gradient="backprop")[-1], y0
    )
    torch.testing.assert_close(jac, ref, rtol=1e-10, atol=1e-12)


def test_vmap_of_the_solve_equals_a_loop(field: MLPField) -> None:
    ys = torch.randn(4, 2, 3, dtype=F64)
    batched = vmap(lambda y: odeint(field, y, [0.0, 1.0], n_steps=5))(ys)
    for i in range(4):
        torch.testing.assert_close(batched[i], odeint(field, ys[i], [0.0, 1.0], n_steps=5))


def test_vmap_over_plain_callable_args_gives_per_sample_gradients() -> None:
    y0 = torch.randn(3, dtype=F64)
    ws = torch.randn(4, 3, 3, dtype=F64)

    def loss(w):
        return odeint(lambda t, y, w: torch.tanh(w @ y), y0, [0.0, 1.0], n_steps=8, args=(w,))[
            -1
        ].sum()

    batched = vmap(grad(loss))(ws)
    for i in range(4):
        w = ws[i].clone().requires_grad_()
        loss(w).backward()
        torch.testing.assert_close(batched[i], w.grad, rtol=1e-10, atol=1e-12)


def test_vmap_grad_through_an_odeblock_followed_by_groupnorm_equals_a_loop() -> None:
    # Under vmap the block's output is a strided view of the solution; torch's group_norm
    # batching rule needs a contiguous input, so the block hands back a contiguous copy.
    from mali_func import ODEBlock

    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Tanh()).to(F64)

    class Field(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = conv

        def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.conv(y)

    model = nn.Sequential(ODEBlock(Field(), n_steps=3), nn.GroupNorm(1, 2).to(F64))
    params = {k: v.detach() for k, v in model.named_parameters()}
    xs = torch.randn(4, 2, 5, 5, dtype=F64)

    def loss(p, x):
        return functional_call(model, p, (x.unsqueeze(0),)).pow(3).sum()

    batched = vmap(grad(loss), in_dims=(None, 0))(params, xs)
    for i in range(4):
        single = grad(loss)(params, xs[i])
        for name in params:
            torch.testing.assert_close(batched[name][i], single[name], rtol=1e-10, atol=1e-12)
