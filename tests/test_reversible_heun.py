"""Reversible Heun (Kidger et al. 2021): order, exact inverse, MALI equals backprop, stability."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import MLPField
from helpers import F64, assert_close_all

from mali_func import ReversibleHeun, odeint

ROTATION = torch.tensor([[0.0, 2.0], [-2.0, 0.0]], dtype=F64)


def test_solution_error_converges_at_second_order() -> None:
    y0 = torch.tensor([[1.0, 0.5]], dtype=F64)
    exact = y0 @ torch.linalg.matrix_exp(2.0 * ROTATION).T
    steps = [40, 80, 160, 320]
    errors = []
    for n in steps:
        ys = odeint(lambda t, y: y @ ROTATION.T, y0, [0, 2.0], n_steps=n, method="reversible_heun")
        errors.append((ys[-1] - exact).abs().max().item())
    slopes = [math.log(a / b) / math.log(2) for a, b in itertools.pairwise(errors)]
    assert all(abs(s - 2) < 0.3 for s in slopes), (errors, slopes)


def test_inverse_undoes_the_step(field: MLPField) -> None:
    scheme = ReversibleHeun()

    def pure(t, y, params):
        return (field(t, y[0]),)

    t, h = torch.tensor(0.3, dtype=F64), torch.tensor(0.05, dtype=F64)
    y = torch.randn(5, 3, dtype=F64)
    state = scheme.init(pure, t, (y,), ())
    state = scheme.step(pure, t - h, h, state, ())  # a state whose y and y_hat differ
    back = scheme.inverse(pure, t, h, scheme.step(pure, t, h, state, ()), ())
    assert_close_all(back, state, rtol=1e-13)


def test_one_field_evaluation_per_forward_step(field: MLPField) -> None:
    y0 = torch.randn(4, 3, dtype=F64)
    field.calls = 0
    with torch.no_grad():
        odeint(field, y0, [0.0, 1.0], n_steps=10, method="reversible_heun")
    assert field.calls == 1 + 10  # f(y0) for the state (also the output check), 10 steps


@pytest.mark.parametrize("tuple_state", [False, True])
def test_mali_equals_backprop_through_the_same_steps(field: MLPField, tuple_state: bool) -> None:
    y0 = torch.randn(4, 3, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.6, 1.5], dtype=F64, requires_grad=True)

    class Pair(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.field = field

        def forward(self, t_: torch.Tensor, y: tuple[torch.Tensor, torch.Tensor]) -> object:
            return self.field(t_, y[0]), -0.5 * y[1] + y[0].sum(-1)

    f = Pair() if tuple_state else field
    results = []
    for gradient in ("mali", "backprop"):
        start = (y0, y0[:, 0] * 2) if tuple_state else y0
        ys = odeint(f, start, t, n_steps=25, method="reversible_heun", gradient=gradient)
        ys = torch.cat([y.flatten() for y in ys]) if tuple_state else ys
        loss = ys.pow(2).sum() + ys.sin().sum()
        results.append(torch.autograd.grad(loss, [y0, t, *field.parameters()]))
    assert_close_all(results[0], results[1], rtol=1e-10)


def _spectral_radius(w: complex) -> float:
    """Spectral radius of the step map on ``y' = mu y`` with ``h mu = w`` (complex, h = 1)."""
    scheme, mu = ReversibleHeun(), torch.tensor(w, dtype=torch.complex128)

    def pure(t, y, params):
        return (mu * y[0],)

    t, h = torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64)
    cols = [
        torch.cat(scheme.step(pure, t, h, tuple(e[i : i + 1] for i in range(3)), ()))
        for e in torch.eye(3, dtype=torch.complex128)
    ]
    return torch.linalg.eigvals(torch.stack(cols, dim=1)).abs().max().item()


def test_stable_on_the_imaginary_axis_and_not_on_the_negative_reals() -> None:
    for y in (0.1, 0.5, 0.9):
        assert _spectral_radius(1j * y) == pytest.approx(1.0, abs=1e-9)
    assert _spectral_radius(1.5j) > 1.01
    assert _spectral_radius(-0.1) > 1.0 + 1e-3  # the parasitic mode grows on contracting dynamics


def test_bad_input() -> None:
    y0, t = torch.randn(2, 3, dtype=F64), [0.0, 1.0]
    with pytest.raises(ValueError, match=r"n_steps.*alf"):
        odeint(lambda t, y: -y, y0, t, method="reversible_heun")
    with pytest.raises(ValueError, match="coupling applies"):
        odeint(lambda t, y: -y, y0, t, n_steps=3, method="reversible_heun", coupling=0.9)
    with pytest.raises(ValueError, match="eta"):
        odeint(lambda t, y: -y, y0, t, n_steps=3, method="reversible_heun", eta=0.9)
