"""A user-defined reversible step (examples/custom_scheme.py) trains through the same engine."""

from __future__ import annotations

import torch
from helpers import load_example as load_named

from mali_func import odeint

F64 = torch.float64


def load_example():
    return load_named("custom_scheme")


def test_coupling_inverse_undoes_step() -> None:
    ex = load_example()
    field = ex.CouplingField(3).to(F64)

    def pure(t, y, params):
        return field(t, y)

    state = (torch.randn(5, 3, dtype=F64), torch.randn(5, 3, dtype=F64))
    t, h = torch.tensor(0.2, dtype=F64), torch.tensor(0.1, dtype=F64)
    scheme = ex.AdditiveCoupling()
    back = scheme.inverse(pure, t, h, scheme.step(pure, t, h, state, ()), ())
    for x, y in zip(back, state):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-14)


def test_user_defined_step_gradients_equal_backprop() -> None:
    ex = load_example()
    field = ex.CouplingField(3).to(F64)
    a0 = torch.randn(5, 3, dtype=F64, requires_grad=True)
    b0 = torch.randn(5, 3, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.4, 1.0], dtype=F64, requires_grad=True)
    results = []
    for gradient in ("mali", "backprop"):
        a, b = odeint(
            field, (a0, b0), t, n_steps=30, scheme=ex.AdditiveCoupling(), gradient=gradient
        )
        loss = a.sin().sum() + b[-1].pow(2).sum()
        results.append(torch.autograd.grad(loss, [a0, b0, t, *field.parameters()]))
    for m, r in zip(*results):
        torch.testing.assert_close(m, r, rtol=1e-10, atol=1e-12)
