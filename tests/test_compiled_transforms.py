"""torch.compile over torch.func transforms of a solve: compiled per-sample gradients
(``vmap(grad)``) and ``jacrev`` equal their eager counterparts; what torch 2.13 cannot trace is
refused with the alternatives; batch statistics are refused under ``vmap``."""

from __future__ import annotations

import pytest
import torch
from helpers import F64, SmoothField, assert_close_all
from torch import nn
from torch._C._functorch import TransformType
from torch._functorch import autograd_function

import mali_func

pytestmark = pytest.mark.usefixtures("fresh_dynamo")


class Model(nn.Module):
    """A per-sample model: ``x -> odeint(field, x)[-1]``."""

    def __init__(self, dtype: torch.dtype = F64, **solve: object) -> None:
        super().__init__()
        self.field = SmoothField(dim=3, hidden=8, dtype=dtype)
        self.solve = solve

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.tensor([0.0, 0.7], dtype=x.dtype)
        return mali_func.odeint(self.field, x, t, **self.solve)[-1]


def per_sample_grads(model: nn.Module):
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, p, (x,)).pow(2).sum()

    return params, torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))


def loop_grads(model: nn.Module, xs: torch.Tensor) -> dict[str, torch.Tensor]:
    rows = []
    for x in xs:
        model.zero_grad()
        model(x).pow(2).sum().backward()
        rows.append({k: p.grad.clone() for k, p in model.named_parameters()})
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


@pytest.mark.parametrize(
    "solve",
    [
        {"n_steps": 4},
        {"n_steps": 4, "gradient": "backprop"},
        {"n_steps": 3, "method": "rk4", "coupling": "auto"},
        {"n_steps": 4, "eta": 0.8},
    ],
    ids=["alf-mali", "alf-backprop", "rk4-auto-mali", "alf-eta0.8-mali"],
)
def test_compiled_vmap_grad_equals_eager_and_a_loop(solve: dict) -> None:
    model = Model(**solve)
    xs = torch.randn(5, 3, dtype=F64)
    params, g = per_sample_grads(model)
    eager = g(params, xs)
    compiled = torch.compile(g, backend="aot_eager", fullgraph=True)(params, xs)
    loop = loop_grads(model, xs)
    # Damped ALF's inverse amplifies round-off by 1/|1 - 2 eta| a step: another operation order
    # (compiled) differs by that much more.
    rtol = 1e-9 if "eta" in solve else 1e-10
    assert_close_all([compiled[k] for k in eager], [eager[k] for k in eager], rtol=rtol)
    assert_close_all([compiled[k] for k in loop], [loop[k] for k in loop], rtol=rtol)


def test_compiled_vmap_grad_through_odeblock_with_inductor_float32() -> None:
    field = SmoothField(dim=3, hidden=16)
    block = mali_func.ODEBlock(field, t0=0.0, t1=1.0, n_steps=5)
    head = nn.Linear(3, 2)
    model = nn.Sequential(block, head)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = torch.func.functional_call(model, p, (x[None],))
        return nn.functional.cross_entropy(logits, y[None])

    g = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))
    xs, ys = torch.randn(6, 3), torch.randint(0, 2, (6,))
    eager = g(params, xs, ys)
    compiled = torch.compile(g, fullgraph=True)(params, xs, ys)
    assert_close_all([compiled[k] for k in eager], [eager[k] for k in eager], rtol=1e-5)


def test_compiled_jacrev_equals_eager() -> None:
    model = Model(n_steps=4)
    x = torch.randn(3, dtype=F64)
    eager = torch.func.jacrev(model)(x)
    compiled = torch.compile(torch.func.jacrev(model), backend="aot_eager", fullgraph=True)(x)
    assert_close_all([compiled], [eager], rtol=1e-10)


@pytest.mark.parametrize(
    ("solve", "match"),
    [
        ({"rtol": 1e-4, "atol": 1e-6, "method": "tsit5"}, "adaptive steps .* fixed grid"),
        ({"n_steps": 4, "gradient": "checkpoint"}, "gradient='checkpoint' .* gradient='mali'"),
    ],
    ids=["adaptive", "checkpoint"],
)
def test_untraceable_solve_in_a_compiled_transform_is_refused(solve: dict, match: str) -> None:
    model = Model(**solve)
    params, g = per_sample_grads(model)
    xs = torch.randn(2, 3, dtype=F64)
    g(params, xs)  # eagerly it works
    with pytest.raises(RuntimeError, match=match):  # dynamo re-raises it as a RuntimeError
        torch.compile(g, backend="aot_eager", fullgraph=True)(params, xs)


class NormField(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3, dtype=F64)
        self.norm = nn.BatchNorm1d(3, dtype=F64)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.norm(self.lin(y))


@pytest.mark.parametrize("gradient", ["mali", "backprop"])
def test_batch_statistics_under_vmap_are_refused_naming_the_layer(gradient: str) -> None:
    field = NormField()
    t = torch.tensor([0.0, 1.0], dtype=F64)
    xs = torch.randn(4, 2, 3, dtype=F64)

    def loss(x: torch.Tensor) -> torch.Tensor:
        return mali_func.odeint(field, x, t, n_steps=2, gradient=gradient)[-1].sum()

    loss(xs[0])  # on a batch: fine
    with pytest.raises(ValueError, match=r"BatchNorm1d layer 'norm' is in training mode"):
        torch.func.vmap(torch.func.grad(loss))(xs)
    field.eval()
    torch.func.vmap(torch.func.grad(loss))(xs)  # running statistics: per-sample is fine


def test_the_vmap_rule_is_installed_by_a_traced_solve_not_by_import() -> None:
    table = autograd_function.custom_function_call.functorch_table
    before = table[TransformType.Vmap]
    import importlib

    importlib.reload(mali_func)
    if not mali_func.backends._traced_transforms._INSTALLED:  # no compiled transform ran yet here
        assert table[TransformType.Vmap] is before
    model = Model(n_steps=2)
    params, g = per_sample_grads(model)
    torch.compile(g, backend="aot_eager", fullgraph=True)(params, torch.randn(2, 3, dtype=F64))
    assert mali_func.backends._traced_transforms._INSTALLED
