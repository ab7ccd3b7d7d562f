"""Programs from plain ``torch.export.export`` and ``to_pt2``: any grad mode, any output times.

A fixed grid exports as ``scan``, whose autograd is exact: the program's gradient equals the
eager model's. An adaptive solve exports as ``while_loop``, which torch 2.13 differentiates
wrongly, so its outputs refuse a gradient with an error that says so; its forward values equal
the eager solve's (the error norm once divided by 1 instead of the element count in non-strict
export, and took other steps).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from mali_func import ODEBlock, odeint
from mali_func.export import to_pt2


class _Field(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(y))


def _model(**options: object) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), ODEBlock(_Field(), **options), nn.Linear(3, 2))
    return model.double()


def _gradients(model: nn.Module, forward: object, x: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    forward(x).square().sum().backward()  # type: ignore[operator]
    return [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]


@pytest.mark.parametrize("grad_mode", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("gradient", ["mali", "checkpoint", "backprop"])
def test_an_exported_fixed_grid_program_differentiates_as_the_model(grad_mode, gradient) -> None:
    model = _model(method="rk4", n_steps=6, gradient=gradient, t_eval=[0.5, 1.0])
    x = torch.randn(5, 2, dtype=torch.float64)
    with torch.set_grad_enabled(grad_mode):
        program = torch.export.export(model, (x,)).module()
    want = _gradients(model, model, x)
    got = _gradients(model, program, x)
    torch.testing.assert_close(program(x), model(x), rtol=1e-13, atol=1e-13)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["alf", "dopri5"])
def test_an_exported_adaptive_program_matches_eager_and_refuses_a_gradient(method) -> None:
    model = _model(method=method)
    x = torch.randn(5, 2, dtype=torch.float64)
    program = torch.export.export(model, (x,)).module()
    with torch.no_grad():
        torch.testing.assert_close(program(x), model(x), rtol=1e-12, atol=1e-12)
    out = program(x).square().sum()
    with pytest.raises(RuntimeError, match=r"exported adaptive solve .* has no gradient"):
        out.backward()


def test_an_exported_adaptive_solve_takes_the_eager_steps() -> None:
    class Counts(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.field = _Field()

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            t = torch.tensor([0.0, 1.0], dtype=x.dtype)
            y, stats = odeint(self.field, x, t, method="alf", stats=True)
            return y[-1], stats.n_accepted, stats.n_rejected

    torch.manual_seed(1)
    model, x = Counts().double(), torch.randn(5, 3, dtype=torch.float64)
    with torch.no_grad():
        want = model(x)
        got = torch.export.export(model, (x,)).module()(x)
    assert [int(v) for v in got[1:]] == [int(v) for v in want[1:]]


# Small tableaus (AOTInductor's C++ build grows with the stages): a fixed grid and an adaptive pair.
@pytest.mark.parametrize("options", [{"method": "heun", "n_steps": 4}, {"method": "bosh3"}])
def test_pt2_exports_a_block_with_interior_output_times(tmp_path, options) -> None:
    torch.manual_seed(0)
    model = ODEBlock(_Field(), t_eval=[0.25, 0.5, 1.0], **options)
    x = torch.randn(5, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = to_pt2(model, (x,), tmp_path / "block.pt2")
    assert report.max_rel_error is not None and report.max_rel_error <= 1e-5
    package = torch._inductor.aoti_load_package(str(tmp_path / "block.pt2"))
    y = torch.randn(7, 3)
    with torch.no_grad():
        torch.testing.assert_close(package(y), model(y), rtol=1e-5, atol=1e-6)
