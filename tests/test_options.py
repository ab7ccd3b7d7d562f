"""Options as objects: each object gives exactly what its shorthand keywords give; an option set
twice, an unknown keyword or a malformed object raises, naming it."""

from __future__ import annotations

import inspect

import pytest
import torch
from helpers import F64
from torch import nn

from mali_func import (
    ALF,
    MALI,
    Adaptive,
    Backprop,
    Checkpoint,
    CoupledRK,
    Fixed,
    ODEBlock,
    RungeKutta,
    odeint,
)


class Field(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3, 3, dtype=F64)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(y)) - 0.5 * y


def _solve_and_grad(**options: object) -> list[torch.Tensor]:
    field = Field()
    y0 = torch.linspace(-1, 1, 6, dtype=F64).reshape(2, 3).requires_grad_()
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    ys = odeint(field, y0, t, **options)  # type: ignore[arg-type]
    grads = torch.autograd.grad(ys.sin().sum(), [y0, *field.parameters()])
    return [ys.detach(), *grads]


PAIRS = [
    ({"steps": Fixed(n=5)}, {"n_steps": 5}),
    ({"steps": Fixed(size=0.2)}, {"step_size": 0.2}),
    ({"steps": Fixed(n=[2, 3], unroll=2)}, {"n_steps": [2, 3], "unroll": 2}),
    ({"method": "tsit5", "steps": Adaptive(rtol=1e-6, atol=1e-8, max_steps=500)},
     {"method": "tsit5", "rtol": 1e-6, "atol": 1e-8, "max_steps": 500}),
    ({"n_steps": 4, "method": ALF(eta=0.9)}, {"n_steps": 4, "eta": 0.9}),
    ({"n_steps": 4, "method": CoupledRK("rk4", coupling=0.9)},
     {"n_steps": 4, "method": "rk4", "coupling": 0.9}),
    ({"n_steps": 4, "method": RungeKutta("rk4"), "gradient": Checkpoint(budget=3)},
     {"n_steps": 4, "method": "rk4", "coupling": None, "gradient": "checkpoint",
      "checkpoints": 3}),
    ({"n_steps": 4, "gradient": MALI(fallback=False, reconstruction_tol=1e-9)},
     {"n_steps": 4, "fallback": False, "reconstruction_tol": 1e-9}),
    ({"n_steps": 4, "gradient": Backprop()}, {"n_steps": 4, "gradient": "backprop"}),
]  # fmt: skip


@pytest.mark.parametrize(("objects", "keywords"), PAIRS)
def test_an_object_gives_exactly_what_its_shorthands_give(objects, keywords) -> None:
    for a, b in zip(_solve_and_grad(**objects), _solve_and_grad(**keywords), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"steps": Fixed(n=3), "n_steps": 4}, "n_steps is given twice"),
        ({"steps": Adaptive(rtol=1e-5), "rtol": 1e-4}, "rtol is given twice"),
        ({"steps": Adaptive(), "n_steps": 3}, "n_steps asks for a fixed grid and steps=Adaptive"),
        ({"steps": Adaptive(), "step_size": 0.1}, "step_size asks for a fixed grid"),
        ({"gradient": Checkpoint(budget=2), "checkpoints": 3}, "checkpoints is given twice"),
        ({"gradient": MALI(fallback=False), "fallback": True}, "fallback is given twice"),
        ({"method": ALF(), "scheme": ALF()}, "the scheme is given twice"),
        ({"n_steps": 3, "tol": 1e-3}, "odeint\\(\\) got an unexpected keyword argument 'tol'"),
        ({"steps": 5}, "steps must be Fixed\\(...\\) or Adaptive\\(...\\), got int"),
        ({"method": 3}, "method must be a method name or a ReversibleScheme, got int"),
    ],
)
def test_an_option_given_twice_or_unknown_is_named(options, message) -> None:
    with pytest.raises(TypeError, match=message):
        odeint(lambda t, y: -y, torch.ones(2), [0.0, 1.0], **options)


@pytest.mark.parametrize("fields", [{}, {"n": 3, "size": 0.1}])
def test_a_fixed_grid_needs_exactly_one_of_n_and_size(fields) -> None:
    with pytest.raises(ValueError, match="Fixed needs exactly one of n and size"):
        Fixed(**fields)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"n": 0}, r"n_steps must be at least 1, got 0 \(Fixed\(n=...\)"),
        ({"n": [2, 0]}, r"n_steps\[1\] must be at least 1"),
        ({"size": -0.1}, r"step_size must be positive and finite, got -0.1 \(Fixed\(size"),
        ({"size": float("inf")}, "step_size must be positive and finite, got inf"),
    ],
)
def test_a_fixed_grid_is_checked_when_built(fields, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Fixed(**fields)


def test_a_block_takes_the_same_objects() -> None:
    x = torch.linspace(-1, 1, 6, dtype=F64).reshape(2, 3)
    with_objects = ODEBlock(Field(), steps=Fixed(n=4), gradient=Checkpoint(budget=2),
                            method=RungeKutta("rk4"))  # fmt: skip
    with_keywords = ODEBlock(Field(), n_steps=4, gradient="checkpoint", checkpoints=2,
                             method="rk4", coupling=None)  # fmt: skip
    torch.testing.assert_close(with_objects(x), with_keywords(x), rtol=0, atol=0)
    with pytest.raises(TypeError, match="ODEBlock\\(\\) takes no 'args'"):
        ODEBlock(Field(), args=())


def test_odeint_has_at_most_twelve_named_parameters() -> None:
    params = inspect.signature(odeint).parameters.values()
    named = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]
    assert len(named) <= 12, [p.name for p in named]


@pytest.mark.parametrize(
    ("objects", "keywords"),
    [
        ({"steps": Fixed(n=4)}, {"n_steps": 4}),
        ({"method": "rk4", "steps": Fixed(n=4), "gradient": MALI()},
         {"method": "rk4", "n_steps": 4, "gradient": "mali"}),
        ({"method": "rk4", "steps": Fixed(n=4), "gradient": Checkpoint(budget=2)},
         {"method": "rk4", "n_steps": 4, "gradient": "checkpoint", "checkpoints": 2}),
        ({"steps": Adaptive(rtol=1e-5, atol=1e-7)}, {"rtol": 1e-5, "atol": 1e-7}),
    ],
)  # fmt: skip
def test_odeint_adjoint_reads_the_objects_as_their_shorthands(objects, keywords) -> None:
    """torchdiffeq's defaults (dopri5, 1e-7/1e-9 on adaptive solves, the plain step under
    checkpointing) are decided on the expanded options: a Fixed grid gets no tolerances, MALI()
    keeps the reversible coupling, Adaptive's tolerances are not replaced."""
    from mali_func import odeint_adjoint

    results = []
    for options in (objects, keywords):
        field = Field()
        y0 = torch.linspace(-1, 1, 6, dtype=F64).reshape(2, 3).requires_grad_()
        ys = odeint_adjoint(field, y0, torch.tensor([0.0, 1.0], dtype=F64), **options)
        results.append([ys, *torch.autograd.grad(ys.sum(), [y0, *field.parameters()])])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
