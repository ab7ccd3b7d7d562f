"""Regression tests for the second hostile probe's cases (each failed before its fix)."""

from __future__ import annotations

import pytest
import torch
from helpers import F64, REEVALUATING
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


class Hamiltonian(nn.Module):
    """A Hamiltonian network: the field is the symplectic gradient of a learned energy, taken
    on a leaf the field makes itself from its input."""

    def __init__(self) -> None:
        super().__init__()
        self.energy = nn.Sequential(nn.Linear(2, 16, dtype=F64), nn.Tanh(),
                                    nn.Linear(16, 1, dtype=F64))  # fmt: skip

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        with torch.enable_grad():
            x = y.detach().requires_grad_()
            (grad,) = torch.autograd.grad(self.energy(x).sum(), x, create_graph=True)
        return torch.stack([grad[..., 1], -grad[..., 0]], -1)


@pytest.mark.parametrize(("gradient", "options"), REEVALUATING)
def test_a_hamiltonian_field_with_its_own_leaf_gets_backprops_gradient(
    gradient: str, options: dict[str, object]
) -> None:
    grads = []
    for mode in (gradient, "backprop"):
        torch.manual_seed(0)
        field = Hamiltonian()
        y0 = torch.randn(4, 2, dtype=F64)
        ys = odeint(field, y0, [0.0, 1.0], n_steps=10, gradient=mode, **options)  # type: ignore[arg-type]
        ys[-1].pow(2).sum().backward()
        # The energy's output bias has no effect: backprop leaves it None, MALI zero.
        grads.append([torch.zeros_like(p) if p.grad is None else p.grad
                      for p in field.parameters()])  # fmt: skip
    assert grads[1][0].abs().max() > 0.1
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _gradient_penalty(gradient: str, captured: bool) -> Tensor:
    """``grad(W -> |grad_y solve(W)|^2)``: the field reads ``W`` one transform level up."""
    torch.manual_seed(0)
    w0, y0 = torch.randn(2, 2, dtype=F64), torch.randn(2, dtype=F64)

    def outer(w: Tensor) -> Tensor:
        def inner(y: Tensor, w_: Tensor) -> Tensor:
            if captured:
                f = lambda t, x: torch.tanh(x @ w)  # noqa: E731
                ys = odeint(f, y, [0.0, 1.0], n_steps=5, gradient=gradient)
            else:
                f = lambda t, x, w__: torch.tanh(x @ w__)  # noqa: E731
                ys = odeint(f, y, [0.0, 1.0], n_steps=5, gradient=gradient, args=(w_,))
            return ys[-1].sum()

        return torch.func.grad(inner)(y0, w).pow(2).sum()

    return torch.func.grad(outer)(w0)


@pytest.mark.parametrize("gradient", ["mali", "checkpoint", "backprop"])
def test_a_capture_one_transform_level_up_is_refused(gradient: str) -> None:
    with pytest.raises(TypeError, match=r"captured: 'w'"):
        _gradient_penalty(gradient, captured=True)


def test_the_same_penalty_through_args_equals_backprop() -> None:
    torch.testing.assert_close(
        _gradient_penalty("mali", captured=False),
        _gradient_penalty("backprop", captured=False),
        rtol=1e-10,
        atol=1e-12,
    )


@pytest.mark.parametrize(
    "options",
    [
        {"n_steps": 3},
        {"method": "tsit5", "rtol": 1e-6},
        {"n_steps": 3, "method": "rk4", "coupling": None, "gradient": "checkpoint"},
    ],
    ids=["mali_fixed", "mali_adaptive", "checkpoint"],
)
def test_vmap_of_a_block_then_an_ordinary_backward_equals_a_loop(options: dict) -> None:
    """``vmap(block)(x).sum().backward()`` crashed ("flat_bdims must not be None")."""
    torch.manual_seed(0)
    block = ODEBlock(Linear2().double(), **options)
    x = torch.randn(4, 1, 2, dtype=F64)
    torch.func.vmap(block)(x).sum().backward()
    batched = [p.grad.clone() for p in block.parameters()]  # type: ignore[union-attr]
    block.zero_grad()
    for xi in x:
        block(xi).sum().backward()
    for a, b in zip(batched, block.parameters()):
        torch.testing.assert_close(a, b.grad, rtol=1e-10, atol=1e-12)


def _closing_over_a_module():
    net = nn.Linear(2, 2)
    return lambda t, y: torch.tanh(net(y))


GLOBAL_NET = nn.Linear(2, 2)


@pytest.mark.parametrize(
    "field",
    [_closing_over_a_module(), lambda t, y: torch.tanh(GLOBAL_NET(y))],
    ids=["closure", "global"],
)
def test_a_compiled_fullgraph_solve_refuses_a_captured_module_with_the_capture_error(field) -> None:
    """Was "Unsupported: builtin isinstance() ..." from dynamo, raised while the message was being
    built (naming the captured variables reads closures and globals). Now the capture error is
    raised; fullgraph reports any exception raised while tracing as dynamo's "Observed exception"
    with the original error in its text, eager and non-fullgraph code raise the TypeError itself."""
    torch._dynamo.reset()

    def loss(y: Tensor) -> Tensor:
        return odeint(field, y, torch.tensor([0.0, 1.0]), n_steps=3)[-1].sum()

    with pytest.raises(Exception, match=r"TypeError.*func reads a tensor that requires grad"):
        torch.compile(loss, backend="aot_eager", fullgraph=True)(torch.randn(3, 2))
    torch._dynamo.reset()
    with pytest.raises(TypeError, match="func reads a tensor that requires grad"):
        torch.compile(loss, backend="aot_eager")(torch.randn(3, 2))
    torch._dynamo.reset()
