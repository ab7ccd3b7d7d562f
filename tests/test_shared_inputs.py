"""Field inputs that are not plain, distinct leaves: substituted, duplicated, derived or hidden.

The engine differentiates the tensors passed to it one by one; each must get its own partial
derivative (no double counting through another input), and a module must be evaluated with the
tensors the solve was given (also after ``torch.func.functional_call`` has restored its own).
A module that reads a tensor which is none of the solve's inputs (a global, a layer in a plain
list) is refused. Every case is compared with backprop through the same steps, in float64.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers import F64, assert_close_all
from torch import Tensor, nn
from torch.func import functional_call

from mali_func import ODEBlock, odeint

CONFIGS: dict[str, dict[str, Any]] = {
    "alf": {"n_steps": 8},
    "tsit5_adaptive": {"method": "tsit5", "rtol": 1e-6, "atol": 1e-8},
    "rk4": {"method": "rk4", "n_steps": 8},
    "reversible_heun": {"method": "reversible_heun", "n_steps": 8},
    "plain_rk4_checkpoint": {
        "method": "rk4", "n_steps": 8, "coupling": None, "gradient": "checkpoint"
    },
}  # fmt: skip


def _gradients(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(engine options, the same steps differentiated by backprop)."""
    engine = {"gradient": "mali", **kwargs}
    return engine, {**engine, "gradient": "backprop"}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self.net(y)


@pytest.mark.parametrize("config", CONFIGS)
def test_functional_call_with_other_tensors_gets_their_backprop_gradient(config: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 2, dtype=F64)
    grads = []
    for options in _gradients(CONFIGS[config]):
        torch.manual_seed(1)
        block = ODEBlock(Net().double(), **options)
        params = {
            k: (v.detach() * 1.1).requires_grad_() for k, v in block.named_parameters()
        }  # fmt: skip
        out = functional_call(block, params, (x,))
        grads.append(torch.autograd.grad(out.pow(2).sum(), list(params.values())))
        assert all(p.grad is None for p in block.parameters())  # its own tensors are not used
    assert_close_all(grads[0], grads[1], rtol=1e-9)


class Shifted(nn.Module):
    """A buffer computed from the module's own parameter, as the attribute error suggests."""

    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.tensor([0.1, -0.2], dtype=F64))
        self.register_buffer("shift", None, persistent=False)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return torch.tanh(y) * 0.5 + self.shift * y.sin() + self.b


@pytest.mark.parametrize("config", CONFIGS)
def test_a_buffer_derived_from_a_parameter_is_not_counted_twice(config: str) -> None:
    torch.manual_seed(0)
    y0 = torch.randn(3, 2, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    field, grads = Shifted(), []
    for options in _gradients(CONFIGS[config]):
        field.shift = field.b.exp()  # exp saves its output: the backward reaches it twice
        ys = odeint(field, y0, t, **options)
        grads.append(torch.autograd.grad(ys[-1].sum(), field.b))
    assert_close_all(grads[0], grads[1], rtol=1e-9)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("derive", ["same", "view", "shifted", "exp"])
def test_args_that_share_a_tensor_get_the_backprop_gradient(config: str, derive: str) -> None:
    torch.manual_seed(0)
    y0 = torch.randn(3, 2, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    w = torch.tensor([0.7, -0.4], dtype=F64, requires_grad=True)

    def second() -> Tensor:
        return {"same": w, "view": w.view(2), "shifted": w + 1.0, "exp": w.exp()}[derive]

    def f(t: Tensor, y: Tensor, a: Tensor, b: Tensor) -> Tensor:
        return torch.tanh(y * a) + 0.3 * b * y.cos()

    grads = []
    for options in _gradients(CONFIGS[config]):
        ys = odeint(f, y0, t, args=(w, second()), **options)
        grads.append(torch.autograd.grad(ys[-1].square().sum(), w))
    assert_close_all(grads[0], grads[1], rtol=1e-9)


SHARED = nn.Linear(2, 2).double()  # a layer another part of a model also uses
SCALE = torch.ones(2, dtype=F64, requires_grad=True)


class HoldsInList(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.refs = [SHARED]  # a plain list: not a submodule, so not a parameter of the field

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return torch.tanh(self.refs[0](y))


class ReadsGlobal(nn.Module):
    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return -y * SCALE


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize(
    ("field", "named"), [(HoldsInList, "func.refs[0]"), (ReadsGlobal, "SCALE")]
)  # fmt: skip
def test_a_module_reading_a_tensor_outside_its_inputs_is_refused_naming_it(
    config: str, field: type[nn.Module], named: str
) -> None:
    y0 = torch.randn(3, 2, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    engine, backprop = _gradients(CONFIGS[config])
    with pytest.raises(TypeError, match=rf"requires grad.*{named.replace('[', '.')}.*args="):
        odeint(field(), y0, t, **engine)
    odeint(field(), y0, t, **backprop).sum().backward()  # autograd sees it: no refusal
    with torch.no_grad():
        odeint(field(), y0, t, **engine)  # no gradient asked for: no refusal


@pytest.mark.parametrize("config", CONFIGS)
def test_tensors_computed_from_other_inputs_are_not_refused(config: str) -> None:
    """A hypernetwork's output as the field's parameters and an encoded ``y0``: both inputs."""
    torch.manual_seed(0)
    block = ODEBlock(Net().double(), t_eval=[0.0, 0.6, 1.0], **_gradients(CONFIGS[config])[0])
    shapes = {k: v.shape for k, v in block.named_parameters()}
    encoder = nn.Linear(3, 2).double()
    hyper = nn.Linear(1, sum(s.numel() for s in shapes.values())).double()
    x = torch.randn(4, 3, dtype=F64)
    grads = []
    for gradient in ("engine", "backprop"):
        if gradient == "backprop":
            block = ODEBlock(block.field, t_eval=[0.0, 0.6, 1.0], **_gradients(CONFIGS[config])[1])
        flat = hyper(torch.ones(1, dtype=F64))
        params = dict(zip(shapes, (c.view(s) for c, s in zip(
            flat.split([s.numel() for s in shapes.values()]), shapes.values()
        ))))  # fmt: skip
        ys = functional_call(block, params, (encoder(x),))
        inputs = (*hyper.parameters(), *encoder.parameters())
        grads.append(torch.autograd.grad(ys.square().sum(), inputs))
    assert_close_all(grads[0], grads[1], rtol=1e-9)


class Drift(nn.Module):
    """``y' = b``: the field's value is its parameter itself."""

    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.tensor([[0.5, -1.0]], dtype=F64))

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self.b


@pytest.mark.parametrize("config", CONFIGS)
def test_a_field_that_returns_its_parameter_as_it_is_gets_the_backprop_gradient(
    config: str,
) -> None:
    y0 = torch.zeros(1, 2, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    grads = []
    for options in _gradients(CONFIGS[config]):
        field = Drift()
        ys = odeint(field, y0, t, **options)
        assert torch.allclose(ys[-1], field.b.detach())
        grads.append(torch.autograd.grad((ys[-1] * ys[-1].detach().cos()).sum(), field.b))
    assert_close_all(grads[0], grads[1], rtol=1e-9)


class Counts(nn.Module):
    """Reassigns a buffer as it runs (as hand-written running statistics do)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2).double()
        self.register_buffer("calls", torch.zeros((), dtype=F64))

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        self.calls = self.calls + 1
        return torch.tanh(self.lin(y))


@pytest.mark.parametrize("gradient", ["mali", "backprop"])
def test_a_buffer_the_module_reassigns_advances_at_every_evaluation(gradient: str) -> None:
    field = Counts()
    y0 = torch.randn(3, 2, dtype=F64)
    _, stats = odeint(field, y0, [0.0, 1.0], n_steps=10, gradient=gradient, stats=True)
    # 10 steps, the start f(t0, y0) and the end check of the parasitic mode (two evaluations)
    assert field.calls.item() == stats.n_f_evals.item() == 13


class TiedBuffer(nn.Module):
    """One tensor registered as a parameter here and as a buffer in a submodule."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3).double()
        self.b = nn.Module()
        self.b.register_buffer("w", self.a.weight)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return torch.tanh(self.a(y)) + 0.1 * y @ self.b.w


class Scriptable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3).double()

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return torch.tanh(self.lin(y))


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.filterwarnings("ignore:.*torch.jit.script. is deprecated:DeprecationWarning")
@pytest.mark.parametrize("kind", ["tied_buffer", "jit_script"])
def test_unusual_modules_get_the_backprop_gradient(config: str, kind: str) -> None:
    torch.manual_seed(0)
    field = TiedBuffer() if kind == "tied_buffer" else torch.jit.script(Scriptable())
    y0 = torch.randn(2, 3, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    grads = []
    for options in _gradients(CONFIGS[config]):
        ys = odeint(field, y0, t, **options)
        grads.append(torch.autograd.grad(ys[-1].square().sum(), list(field.parameters())))
    assert_close_all(grads[0], grads[1], rtol=1e-9)


W = torch.randn(2, 3, dtype=F64, requires_grad=True)
FIRST, SECOND = W.unbind(0)  # y0 is FIRST; the field reads its sibling SECOND as a global


class ReadsSibling(Net):
    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return torch.tanh(y) * SECOND


def test_a_tensor_from_the_same_op_as_y0_is_not_mistaken_for_an_input() -> None:
    with pytest.raises(TypeError, match=r"requires grad.*'SECOND'"):
        odeint(ReadsSibling(), FIRST, [0.0, 1.0], n_steps=4)


class LazyField(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.LazyLinear(3, dtype=F64)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return torch.tanh(self.lin(y))


def test_a_lazy_module_is_refused_until_initialized() -> None:
    field = LazyField()
    y0 = torch.randn(2, 3, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(ValueError, match=r"uninitialized lazy parameters \(lin.weight, lin.bias"):
        odeint(field, y0, t, n_steps=4)
    field(t[0], y0)  # initializes them
    odeint(field, y0, t, n_steps=4).sum().backward()
    assert field.lin.weight.grad is not None


def test_a_compiled_solve_refuses_a_module_reading_a_tensor_outside_its_inputs(
    fresh_dynamo,
) -> None:
    """Dynamo's trace has no autograd graph to read: one detached evaluation finds the tensor
    (before, the compiled MALI gradient of SCALE was 3e-3 of backprop's, with no error)."""
    y0 = torch.randn(3, 2, dtype=F64)

    def loss(y: Tensor) -> Tensor:
        return odeint(ReadsGlobal(), y, torch.tensor([0.0, 1.0], dtype=F64), n_steps=4).sum()

    with pytest.raises(TypeError, match=r"requires grad.*'SCALE'.*args="):
        torch.compile(loss, backend="aot_eager")(y0)
    backprop = torch.compile(
        lambda y: odeint(ReadsGlobal(), y, [0.0, 1.0], n_steps=4, gradient="backprop").sum(),
        backend="aot_eager",
    )
    assert torch.autograd.grad(backprop(y0), SCALE)[0].abs().sum() > 0
