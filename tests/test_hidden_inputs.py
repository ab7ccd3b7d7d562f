"""Tensors a field reads that the engine would not see: module attributes, captures of plain
callables, buffers; each is differentiated exactly or refused with an error naming it."""

from __future__ import annotations

import pytest
import torch
from conftest import MLPField
from helpers import F64, assert_close_all
from torch import Tensor, nn

from mali_func import odeint


class Conditioned(nn.Module):
    """A field reading ``self.c``, set from outside (an encoder's output, a hypernetwork)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2, dtype=F64)
        self.c: torch.Tensor | None = None

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(y) + self.c)


def test_a_module_attribute_that_requires_grad_is_refused_naming_it() -> None:
    field, c = Conditioned(), torch.randn(2, dtype=F64, requires_grad=True)
    field.c = 3 * c
    with pytest.raises(TypeError, match=r"func\.c is a tensor that requires grad.*register_buffer"):
        odeint(field, torch.randn(4, 2, dtype=F64), [0.0, 1.0], n_steps=5)
    with torch.no_grad():  # no gradient asked for: nothing to lose, no error
        odeint(field, torch.randn(4, 2, dtype=F64), [0.0, 1.0], n_steps=5)


def test_the_same_tensor_as_a_buffer_gets_the_backprop_gradient() -> None:
    torch.manual_seed(0)
    c, y0 = torch.randn(2, dtype=F64, requires_grad=True), torch.randn(4, 2, dtype=F64)
    grads = []
    for gradient in ("mali", "backprop"):
        field = Conditioned()
        torch.manual_seed(1)
        field.lin.reset_parameters()
        del field.c
        field.register_buffer("c", 3 * c)
        ys = odeint(field, y0, [0.0, 1.0], n_steps=5, gradient=gradient)
        grads.append(torch.autograd.grad(ys[-1].pow(2).sum(), c)[0])
    assert grads[0].abs().sum() > 1e-3
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=0)


def test_a_capture_read_only_at_later_times_is_refused() -> None:
    w = torch.tensor(2.0, dtype=F64, requires_grad=True)

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -y * (w if float(t) > 0.5 else 1.0)

    y0 = torch.randn(3, 2, dtype=F64)
    # ALF evaluates the field at step midpoints: 0.1, 0.3, 0.5, then 0.7 reads w.
    with pytest.raises(TypeError, match=r"passed explicitly.*found at t = 0\.7"):
        odeint(f, y0, [0.0, 1.0], n_steps=5)
    assert odeint(f, y0, [0.0, 1.0], n_steps=5, gradient="backprop").requires_grad


class Scaled:
    """A callable object holding a tensor that requires grad."""

    def __init__(self, w: Tensor) -> None:
        self.w = w

    def __call__(self, t: Tensor, y: Tensor) -> Tensor:
        return y @ self.w


def test_the_capture_error_names_what_is_captured(field: MLPField) -> None:
    w = torch.randn(3, 3, dtype=F64, requires_grad=True)
    y0 = torch.randn(2, 3, dtype=F64)
    with pytest.raises(TypeError, match=r"passed explicitly \(captured: 'w'\)"):
        odeint(lambda t, y: y @ w, y0, [0.0, 1.0], n_steps=2)
    with pytest.raises(TypeError, match=r"\(captured: 'field'\).*pass the module itself"):
        odeint(lambda t, y: field(t, y), y0, [0.0, 1.0], n_steps=2)
    with pytest.raises(TypeError, match=r"\(captured: 'self\.w'\)"):
        odeint(Scaled(w), y0, [0.0, 1.0], n_steps=2)


def test_a_lambda_closing_over_a_module_runs_under_no_grad(field: MLPField) -> None:
    y0 = torch.randn(3, 3, dtype=F64)
    with torch.no_grad():
        ys = odeint(lambda t, y: field(t, y), y0, [0.0, 1.0], n_steps=4)
    with torch.inference_mode():
        ys_inf = odeint(lambda t, y: field(t, y), y0, [0.0, 1.0], n_steps=4)
    torch.testing.assert_close(ys, ys_inf)
    with pytest.raises(TypeError, match="passed explicitly"):
        odeint(lambda t, y: field(t, y), y0, [0.0, 1.0], n_steps=4)


def test_a_module_attribute_is_refused_under_inference_mode_never() -> None:
    field, c = Conditioned(), torch.randn(2, dtype=F64, requires_grad=True)
    field.c = 3 * c
    with torch.inference_mode():
        odeint(field, torch.randn(4, 2, dtype=F64), [0.0, 1.0], n_steps=5)
    odeint(field, torch.randn(4, 2, dtype=F64), [0.0, 1.0], n_steps=5, gradient="backprop")


class Nested(nn.Module):
    """Conditioning tensors kept in a submodule and in a list."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2, dtype=F64)
        self.enc = nn.Module()
        self.conds: list[Tensor] = []

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return torch.tanh(self.lin(y) + self.enc.h + self.conds[0])


def test_attributes_of_submodules_and_in_lists_are_named() -> None:
    field, c = Nested(), torch.randn(2, dtype=F64, requires_grad=True)
    field.enc.h, field.conds = 3 * c, [2 * c]
    with pytest.raises(TypeError, match=r"func\.conds\[0\] .*also func\.enc\.h.*args="):
        odeint(field, torch.randn(4, 2, dtype=F64), [0.0, 1.0], n_steps=5)
    field.conds = [field.lin.weight[0]]  # a view of a parameter is an input of its own
    with pytest.raises(TypeError, match=r"func\.conds\[0\] "):
        odeint(field, torch.randn(4, 2, dtype=F64), [0.0, 1.0], n_steps=5)
    field.enc.h, field.conds = (3 * c).detach(), [field.lin.bias]  # the parameter itself: fine
    odeint(field, torch.randn(4, 2, dtype=F64), [0.0, 1.0], n_steps=5)


class Declared(Conditioned):
    """The fix the error message gives: ``c`` declared as a (non-persistent) buffer."""

    def __init__(self) -> None:
        super().__init__()
        del self.c
        self.register_buffer("c", None, persistent=False)


def test_the_buffer_the_error_suggests_gets_the_backprop_gradient() -> None:
    c, y0 = torch.randn(2, dtype=F64, requires_grad=True), torch.randn(4, 2, dtype=F64)
    field, grads = Declared(), []
    for gradient in ("mali", "backprop"):
        field.c = 3 * c  # assigned every step, as before: it is a buffer now
        ys = odeint(field, y0, [0.0, 1.0], n_steps=5, gradient=gradient)
        grads.append(torch.autograd.grad(ys[-1].pow(2).sum(), c)[0])
    assert "c" not in field.state_dict()
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=0)


# The three tests below need odeint to take module_attributes() before the field's first
# evaluation and call check_module_attributes(func, before) after it, also while compiling.


def test_a_compiled_solve_refuses_a_module_attribute_that_requires_grad(fresh_dynamo) -> None:
    field, c = Conditioned(), torch.randn(2, dtype=F64, requires_grad=True)
    field.c = 3 * c

    def loss(y: Tensor) -> Tensor:
        return odeint(field, y, torch.tensor([0.0, 1.0], dtype=F64), n_steps=5)[-1].sum()

    # Today: MALI's gradient of c is 1e-3 of backprop's, with no error.
    with pytest.raises(TypeError, match=r"func\.c is a tensor that requires grad"):
        torch.compile(loss, backend="aot_eager")(torch.randn(4, 2, dtype=F64))


@pytest.mark.filterwarnings("ignore:.*weight_norm:FutureWarning")
def test_a_weight_norm_field_is_not_refused_and_equals_backprop() -> None:
    """``torch.nn.utils.weight_norm`` keeps ``weight`` as a plain attribute that requires grad,
    recomputed from its parameters by a pre-hook at every call: not an input."""
    lin = torch.nn.utils.weight_norm(nn.Linear(3, 3, dtype=F64))
    field = Conditioned()
    field.lin, field.c = lin, torch.zeros(3, dtype=F64)
    y0 = torch.randn(4, 3, dtype=F64, requires_grad=True)
    results = []
    for gradient in ("mali", "backprop", "mali"):
        ys = odeint(field, y0, [0.0, 1.0], n_steps=5, gradient=gradient)
        results.append(torch.autograd.grad(ys[-1].pow(2).sum(), [y0, *field.parameters()]))
    assert_close_all(results[0], results[1], rtol=1e-10)
    assert_close_all(results[2], results[1], rtol=1e-10)
