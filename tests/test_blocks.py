"""ODEBlock: gradients, conv fields, state_dict, functional_call, vmap, repr and bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import MLPField
from torch import nn
from torch.func import functional_call, grad, vmap

from mali_func import Adaptive, ODEBlock

F64 = torch.float64


class ConvField(nn.Module):
    """A time-dependent conv field: the time enters as an extra input channel."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels + 1, channels, 3, padding=1, dtype=F64)
        self.norm = nn.GroupNorm(2, channels, dtype=F64)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, dtype=F64)
        self.register_buffer("scale", torch.tensor(0.5, dtype=F64))

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tt = t.expand(x.shape[0], 1, *x.shape[2:])
        h = torch.tanh(self.norm(self.conv1(torch.cat([x, tt], 1))))
        return self.scale * self.conv2(h)


def block_grads(block: nn.Module, x: torch.Tensor):
    out = block(x)
    return torch.autograd.grad(out.pow(2).sum(), [x, *block.parameters()])


@pytest.mark.parametrize("t_eval", [None, [0.3, 0.8, 1.0]])
def test_conv_block_mali_gradients_equal_backprop(t_eval) -> None:
    field = ConvField()
    mali = ODEBlock(field, n_steps=6, t_eval=t_eval)
    ref = ODEBlock(field, n_steps=6, t_eval=t_eval, gradient="backprop")
    x = torch.randn(2, 4, 5, 5, dtype=F64, requires_grad=True)
    out = mali(x)
    assert out.shape == ((2, 4, 5, 5) if t_eval is None else (3, 2, 4, 5, 5))
    for a, b in zip(block_grads(mali, x), block_grads(ref, x)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_backwards_in_time_block_equals_backprop(field: MLPField) -> None:
    x = torch.randn(3, 3, dtype=F64, requires_grad=True)
    mali = ODEBlock(field, t0=1.0, t1=-0.5, t_eval=[0.5, -0.5], n_steps=5)
    ref = ODEBlock(field, t0=1.0, t1=-0.5, t_eval=[0.5, -0.5], n_steps=5, gradient="backprop")
    for a, b in zip(block_grads(mali, x), block_grads(ref, x)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_state_dict_round_trip_keeps_outputs(tmp_path) -> None:
    block = ODEBlock(ConvField(), n_steps=4)
    x = torch.randn(2, 4, 5, 5, dtype=F64)
    path = tmp_path / "block.pt"
    torch.save(block.state_dict(), path)
    assert "times" not in block.state_dict()
    fresh = ODEBlock(ConvField(), n_steps=4)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    torch.testing.assert_close(fresh(x), block(x), rtol=0, atol=0)


def test_to_dtype_follows_the_parameters() -> None:
    block = ODEBlock(MLPField(), n_steps=4).to(torch.float32)
    out = block(torch.randn(2, 3))
    assert out.dtype == torch.float32


def test_vmap_grad_through_a_model_with_a_block() -> None:
    model = nn.Sequential(
        nn.Linear(2, 3, dtype=F64), ODEBlock(MLPField(), n_steps=5), nn.Linear(3, 1, dtype=F64)
    )
    params = {k: v.detach() for k, v in model.named_parameters()}
    xs = torch.randn(4, 2, dtype=F64)

    def loss(p, x):
        return functional_call(model, p, (x.unsqueeze(0),)).sum()

    batched = vmap(grad(loss), in_dims=(None, 0))(params, xs)
    for i in range(4):
        model.zero_grad()
        model(xs[i : i + 1]).sum().backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(batched[name][i], p.grad, rtol=1e-10, atol=1e-12)


def test_repr_shows_the_configuration() -> None:
    text = repr(ODEBlock(MLPField(), t1=2.0, n_steps=8, gradient="backprop"))
    assert text.startswith("ODEBlock(\n  t0=0.0, t1=2.0, steps=Fixed(n=8), gradient=Backprop()\n")
    assert "(field): MLPField" in text


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"field": lambda t, x: x}, TypeError, "field must be an nn.Module"),
        ({"t1": 0.0}, ValueError, "t0 and t1 must differ"),
        ({"t0": "0"}, TypeError, "t0 must be a real number"),
        ({"rtol": 1e-3}, ValueError, "rtol configure adaptive steps, which n_steps replace"),
        ({"tol": 1e-3}, TypeError, r"ODEBlock\(\) got an unexpected keyword argument 'tol'"),
        ({"t_eval": [0.5, 0.2]}, ValueError, "t_eval must be strictly monotonic"),
        ({"t_eval": [0.5, 1.5]}, ValueError, r"t_eval must lie within \[t0, t1\]"),
        ({"t_eval": []}, ValueError, "at least one time"),
        ({"t1": float("inf")}, ValueError, "t1 must be finite, got inf"),
        ({"t_eval": [float("nan")]}, ValueError, "t_eval must hold finite times"),
        ({"t_eval": 0.5}, TypeError, "t_eval must be a sequence of times, got float"),
        ({"t_eval": "0.5"}, TypeError, "t_eval must be a sequence of times, got str"),
        ({"t_eval": ["0.5"]}, TypeError, "t_eval must hold real numbers, got str"),
        ({"t_eval": torch.tensor([[0.5, 1.0]])}, ValueError, "t_eval must be a 1-D real tensor"),
        ({"n_steps": None, "steps": Adaptive(), "step_size": 0.1}, TypeError, "step_size asks"),
        # odeint's own option checks, run when the block is built rather than at its first call
        (
            {"gradient": "adjoint"},
            ValueError,
            r"gradient must be MALI\(\), Checkpoint\(\), Backprop\(\) or one of",
        ),
        ({"method": "rk45"}, ValueError, "method must be one of"),
        ({"n_steps": 0}, ValueError, "n_steps must be at least 1"),
        ({"n_steps": [2, 3]}, ValueError, "one count per interval"),
        ({"eta": 0.5}, ValueError, "eta must lie in"),
        ({"unroll": 0}, ValueError, "unroll must be an int >= 1"),
        ({"reconstruction_tol": 0.0}, ValueError, "reconstruction_tol must be positive"),
        ({"checkpoints": 4}, ValueError, "checkpoints is the budget of gradient='checkpoint'"),
        ({"monitor": "log"}, TypeError, "monitor must be a DriftMonitor"),
        ({"method": "rk4", "coupling": 1.5}, ValueError, "coupling must lie in"),
        ({"n_steps": None, "rtol": -1.0}, ValueError, "rtol must be non-negative"),
        ({"n_steps": None, "step_size": -0.1}, ValueError, "step_size"),
    ],
)
def test_bad_block_arguments_are_named(kwargs: dict, error: type, match: str) -> None:
    call = {"field": MLPField(), "n_steps": 4, **kwargs}
    with pytest.raises(error, match=match):
        ODEBlock(call.pop("field"), **call)


def test_a_tuple_input_to_a_block_is_refused_pointing_to_odeint() -> None:
    block = ODEBlock(MLPField(), n_steps=4)
    x = torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"ODEBlock takes one tensor x, got tuple.*odeint"):
        block((x, x))
