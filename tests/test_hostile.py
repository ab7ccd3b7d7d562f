"""Edge cases a hostile user tries: each gets the right answer or an error that names the cause."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import MLPField
from helpers import F64, assert_close_all, relative_error
from torch import Tensor, nn

from mali_func import FallbackWarning, ODEBlock, ReconstructionWarning, odeint


def test_t_as_a_numpy_array_is_accepted_like_a_list(field: MLPField) -> None:
    y0 = torch.randn(2, 3, dtype=F64)
    got = odeint(field, y0, np.array([0.0, 0.5, 1.0]), n_steps=4)
    want = odeint(field, y0, [0.0, 0.5, 1.0], n_steps=4)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_step_size_too_small_to_count_is_refused(field: MLPField) -> None:
    with pytest.raises(ValueError, match="step_size=5e-324 is too small"):
        odeint(field, torch.randn(2, 3, dtype=F64), [0.0, 1.0], step_size=5e-324)


@pytest.mark.parametrize("gradient", ["mali", "backprop"])
def test_an_empty_batch_gives_empty_gradients(field: MLPField, gradient: str) -> None:
    y0 = torch.zeros(0, 3, dtype=F64, requires_grad=True)
    ys = odeint(field, y0, [0.0, 1.0], n_steps=5, gradient=gradient)
    ys.sum().backward()
    assert y0.grad is not None and y0.grad.shape == (0, 3)


class Constant(nn.Module):
    """A field that ignores ``y``: its output does not depend on the state."""

    def __init__(self) -> None:
        super().__init__()
        self.rate = nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=F64))

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return torch.ones_like(y) * self.rate * torch.cos(t)


def test_a_field_that_ignores_the_state_gets_the_backprop_gradient() -> None:
    field = Constant()
    y0 = torch.randn(2, 3, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64, requires_grad=True)
    results = []
    for gradient in ("mali", "backprop"):
        ys = odeint(field, y0, t, n_steps=6, gradient=gradient)
        results.append(torch.autograd.grad(ys.pow(2).sum(), [y0, t, field.rate]))
    assert_close_all(results[0], results[1], rtol=1e-10)


def test_a_field_of_nothing_that_requires_grad_gives_the_backprop_gradient() -> None:
    def ones(t: Tensor, y: Tensor) -> Tensor:
        return torch.ones_like(y)

    y0 = torch.randn(2, 3, dtype=F64, requires_grad=True)
    results = []
    for gradient in ("mali", "backprop"):
        ys = odeint(ones, y0, [0.0, 1.0], n_steps=4, gradient=gradient)
        results.append(torch.autograd.grad(ys.pow(2).sum(), [y0]))
    assert_close_all(results[0], results[1], rtol=1e-12)


@pytest.mark.parametrize("method", ["alf", "rk4"])
def test_second_derivatives_through_torch_func_equal_backprop(field: MLPField, method: str) -> None:
    y0 = torch.randn(2, 3, dtype=F64)
    results = []
    for gradient in ("mali", "backprop"):

        def loss(y: Tensor, gradient: str = gradient) -> Tensor:
            ys = odeint(field, y, [0.0, 1.0], n_steps=8, gradient=gradient, method=method)
            return ys[-1].pow(3).sum()

        results.append(torch.func.grad(lambda y, f=loss: torch.func.grad(f)(y).sum())(y0))
    assert_close_all(results[:1], results[1:], rtol=1e-10)


@pytest.mark.parametrize("gradient", ["mali", "checkpoint"])
def test_create_graph_through_mali_is_refused_with_what_to_use(field: MLPField, gradient) -> None:
    y0 = torch.randn(2, 3, dtype=F64, requires_grad=True)
    ys = odeint(field, y0, [0.0, 1.0], n_steps=4, gradient=gradient)
    with pytest.raises(RuntimeError, match=r"create_graph=True.*gradient='mali' or 'checkpoint'.*"
                       r"torch\.func\.grad"):  # fmt: skip
        torch.autograd.grad(ys[-1].sum(), y0, create_graph=True)


@pytest.mark.parametrize("transform", ["grad", "vmap_grad"])
def test_drift_under_torch_func_transforms_falls_back_to_the_exact_gradient(
    field: MLPField, transform: str
) -> None:
    y0 = torch.randn(3, 3, dtype=F64)

    def loss(y: Tensor, gradient: str = "mali", fallback: bool = True) -> Tensor:
        ys = odeint(
            field, y, [0.0, 1.0], n_steps=200, eta=0.45, gradient=gradient, fallback=fallback
        )
        return ys[-1].pow(2).sum()

    def run(**kw: object) -> Tensor:
        fn = torch.func.grad(lambda y: loss(y, **kw))  # type: ignore[arg-type]
        return fn(y0) if transform == "grad" else torch.func.vmap(fn)(y0)

    with pytest.warns(FallbackWarning, match="recomputed exactly by checkpointing"):
        verified = run()
    expected = run(gradient="backprop")
    torch.testing.assert_close(verified, expected, rtol=1e-10, atol=1e-12)
    with pytest.warns(ReconstructionWarning, match="drifted"):
        raw = run(fallback=False)
    assert not torch.allclose(raw, expected, rtol=1e-6)


class Normed(nn.Module):
    """A field with batch statistics (and, optionally, dropout)."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3, dtype=F64)
        self.norm = nn.BatchNorm1d(3, dtype=F64)
        self.drop = nn.Dropout(dropout)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self.drop(torch.tanh(self.norm(self.lin(y))))


@pytest.mark.parametrize("method", ["alf", "rk4"])
def test_batch_norm_buffers_after_a_training_step_equal_backprop(method: str) -> None:
    torch.manual_seed(0)
    y0 = torch.randn(8, 3, dtype=F64, requires_grad=True)
    states, grads = [], []
    for gradient in ("mali", "backprop"):
        torch.manual_seed(1)
        field = Normed().train()
        ys = odeint(field, y0, [0.0, 1.0], n_steps=10, method=method, gradient=gradient)
        grads.append(torch.autograd.grad(ys[-1].pow(2).sum(), [y0, *field.parameters()]))
        states.append([b.clone() for b in field.buffers()])
    for a, b in zip(*states):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # lin.bias has a zero gradient (batch norm removes the mean): compare at an absolute floor.
    assert_close_all(grads[0], grads[1], rtol=1e-10, floor=1.0)


def test_dropout_in_training_mode_is_refused_with_mali() -> None:
    field = Normed(dropout=0.2).train()
    y0 = torch.randn(8, 3, dtype=F64)
    with pytest.raises(ValueError, match=r"Dropout layer 'drop' is in training mode"):
        odeint(field, y0, [0.0, 1.0], n_steps=4)
    odeint(field, y0, [0.0, 1.0], n_steps=4, gradient="backprop")  # autograd keeps the masks
    with torch.no_grad():  # no gradient asked for: nothing to replay
        odeint(field, y0, [0.0, 1.0], n_steps=4)
    odeint(field.eval(), y0, [0.0, 1.0], n_steps=4)


def test_an_in_place_layer_after_an_ode_block_keeps_the_gradient(field: MLPField) -> None:
    x = torch.randn(4, 3, dtype=F64, requires_grad=True)
    results = []
    for gradient in ("mali", "backprop"):
        block = ODEBlock(field, n_steps=6, gradient=gradient)
        out = nn.ReLU(inplace=True)(block(x))
        results.append(torch.autograd.grad(out.pow(2).sum(), [x, *field.parameters()]))
    assert_close_all(results[0], results[1], rtol=1e-10)


class Kinetic(nn.Module):
    """Keeps its last output's energy for a regulariser: a stale attribute that requires grad."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2, dtype=F64)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        out = torch.tanh(self.lin(y))
        self.kinetic = out.pow(2).mean()
        return out


def test_an_output_the_field_keeps_is_not_refused_on_the_next_step() -> None:
    field, y0 = Kinetic(), torch.randn(4, 2, dtype=F64)
    for _ in range(2):  # the second solve starts with a kinetic that requires grad
        odeint(field, y0, [0.0, 1.0], n_steps=5).sum().backward()
        assert field.kinetic.requires_grad


class LowPrecision(nn.Module):
    """An MLP field that asserts it computes in bfloat16."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 4))

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        out = self.net(y)
        assert out.dtype == torch.bfloat16  # the field computes under autocast, also in reverse
        return out


def _autocast_grads(method: str, gradient: str, cache: bool) -> tuple[Tensor, Tensor]:
    torch.manual_seed(0)
    field = LowPrecision()
    y0 = torch.randn(8, 4, requires_grad=True)
    with torch.autocast("cpu", torch.bfloat16, cache_enabled=cache):
        ys = odeint(field, y0, [0.0, 1.0], n_steps=5, method=method, gradient=gradient)
    assert ys.dtype == torch.float32  # the state keeps its own dtype
    ys.pow(2).sum().backward()  # MALI's reverse re-enters the same autocast
    assert y0.grad is not None
    return y0.grad, torch.cat([p.grad.flatten() for p in field.parameters()])


@pytest.mark.parametrize("method", ["alf", "rk4"])
def test_autocast_runs_the_field_in_low_precision_and_mali_equals_backprop(method: str) -> None:
    """Under autocast both gradients differentiate the same bfloat16 field. Without autocast's
    weight cache they are the same sums and agree to float32 round-off (measured: bit-equal).
    With the cache (the default) backprop sums each weight's gradient over all field evaluations
    (5 for ALF, 40 for coupled RK4 here) in bfloat16 (8 bits, eps 3.9e-3), MALI step by step in
    float32: the parameter gradients then differ by backprop's bfloat16 summation error
    (measured, max-norm relative: 4.2e-3 ALF, 1.3e-2 RK4; MALI's is the closer to float32),
    hence 3e-2. The state's gradient does not pass through the cache: round-off either way."""
    for cache, rtol_params in ((False, 1e-6), (True, 3e-2)):
        mali = _autocast_grads(method, "mali", cache)
        backprop = _autocast_grads(method, "backprop", cache)
        assert relative_error(mali[0], backprop[0]) < 1e-6, cache
        assert relative_error(mali[1], backprop[1]) < rtol_params, cache


def test_autocast_casts_tuple_states_of_a_plain_callable_with_args() -> None:
    w = torch.randn(3, 3, requires_grad=True)
    y0 = (torch.randn(5, 3), torch.zeros(5))

    def cnf(t: Tensor, y: tuple[Tensor, Tensor], w: Tensor) -> tuple[Tensor, Tensor]:
        dz = torch.tanh(y[0] @ w)  # bfloat16 under autocast
        return dz, -(dz * y[0]).sum(-1)

    with torch.autocast("cpu", torch.bfloat16):
        z, logp = odeint(cnf, y0, [0.0, 1.0], n_steps=4, args=(w,))
    assert (z.dtype, logp.dtype) == (torch.float32, torch.float32)
    (z.sum() + logp.sum()).backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
