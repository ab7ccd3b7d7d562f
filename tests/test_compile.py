"""torch.compile(fullgraph=True): compiled equals eager, no graph break, no recompilation."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from helpers import SmoothField as Field
from helpers import assert_close_all
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

from mali_func import DriftMonitor, ODEBlock, odeint


def loss_fn(field: nn.Module, y0: torch.Tensor, t: torch.Tensor, n: int, gradient: str):
    ys = odeint(field, y0, t, n_steps=n, gradient=gradient)
    return ys.pow(2).mean() + ys[1].sum()


def grads(fn, field: nn.Module, y0: torch.Tensor, t: torch.Tensor, *args):
    y0 = y0.clone().requires_grad_()
    t = t.clone().requires_grad_()
    loss = fn(field, y0, t, *args)
    return (loss.detach(), *torch.autograd.grad(loss, [y0, t, *field.parameters()]))


pytestmark = pytest.mark.usefixtures("fresh_dynamo")


@pytest.mark.parametrize("gradient", ["mali", "backprop"])
def test_compiled_equals_eager_aot_eager(gradient: str) -> None:
    field = Field()
    y0, t = torch.randn(16, 2), torch.tensor([0.0, 0.4, 1.0])
    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
    ref = grads(loss_fn, field, y0, t, 12, gradient)
    assert_close_all(grads(compiled, field, y0, t, 12, gradient), ref, rtol=1e-5)


def test_compiled_equals_eager_inductor() -> None:
    field = Field()
    y0, t = torch.randn(32, 2), torch.tensor([0.0, 1.0])
    compiled = torch.compile(loss_fn, fullgraph=True)
    ref = grads(loss_fn, field, y0, t, 20, "mali")
    assert_close_all(grads(compiled, field, y0, t, 20, "mali"), ref, rtol=1e-5)


def test_a_new_step_count_does_not_recompile_again() -> None:
    field = Field()
    y0, t = torch.randn(8, 2), torch.tensor([0.0, 1.0])
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(loss_fn, backend=counter, fullgraph=True)
    for n in (5, 5, 7, 9, 30):
        assert_close_all(
            grads(compiled, field, y0, t, n, "mali"), grads(loss_fn, field, y0, t, n, "mali"), 1e-5
        )
    # The first count is specialized, the second makes it symbolic, later ones reuse that graph.
    assert counter.frame_count == 2


def test_compiled_model_with_an_ode_block_trains_like_eager() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), ODEBlock(Field(), n_steps=6), nn.Linear(2, 1))
    x = torch.randn(10, 3)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out_c = compiled(x)
    out_c.sum().backward()
    g_c = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out_e = model(x)
    out_e.sum().backward()
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-6)
    for a, p in zip(g_c, model.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, rtol=1e-5, atol=1e-6)


def test_monitor_receives_the_error_under_compile() -> None:
    field = Field()
    monitor = DriftMonitor()
    y0 = torch.randn(8, 2, requires_grad=True)

    def solve(y0):
        return odeint(field, y0, torch.tensor([0.0, 1.0]), n_steps=10, monitor=monitor)

    torch.compile(solve, backend="aot_eager", fullgraph=True)(y0)[-1].sum().backward()
    assert monitor.error is not None and 0 <= monitor.error.item() < 1e-4


class CNF(nn.Module):
    """A ``(z, logp)`` field: the second carry is fed by the first."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Field()

    def forward(self, t, state):
        z, _ = state
        dz = self.net(t, z)
        return dz, -(dz**2).sum(-1)


@pytest.mark.parametrize("gradient", ["mali", "backprop"])
def test_compiled_tuple_state_gradients_equal_eager(gradient: str) -> None:
    cnf = CNF().double()
    z0 = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    l0 = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)

    def loss(z0, l0):
        zs, ls = odeint(cnf, (z0, l0), t, n_steps=5, gradient=gradient)
        return zs[-1].pow(2).sum() + ls.sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(compiled(z0, l0), [z0, l0, *cnf.parameters()])
    ref = torch.autograd.grad(loss(z0, l0), [z0, l0, *cnf.parameters()])
    assert_close_all(got, ref, rtol=1e-10)


def test_compiled_inference_without_grad_equals_eager() -> None:
    field = Field()
    y0, t = torch.randn(8, 2), torch.tensor([0.0, 0.5, 1.0])

    def solve(y0):
        return odeint(field, y0, t, n_steps=7)

    with torch.no_grad():
        got = torch.compile(solve, backend="aot_eager", fullgraph=True)(y0)
        torch.testing.assert_close(got, solve(y0))


@pytest.mark.parametrize(("option", "values"), [("eta", (1.0, 0.8, 0.7)), ("coupling", (0.9, 0.8))])
def test_changing_a_scheme_option_between_compiled_calls_equals_eager(option, values) -> None:
    """A float argument that changes becomes symbolic under torch.compile; the scheme takes it."""
    field, y0, t = Field(), torch.randn(8, 2), torch.tensor([0.0, 1.0])
    method = "alf" if option == "eta" else "midpoint"  # any tableau: the smallest compiles fastest

    def loss(field: nn.Module, y0: torch.Tensor, t: torch.Tensor, value: float) -> torch.Tensor:
        options = {option: value}
        return odeint(field, y0, t, n_steps=5, method=method, **options).pow(2).mean()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    for value in values:
        ref = grads(loss, field, y0, t, value)
        assert_close_all(grads(compiled, field, y0, t, value), ref, rtol=1e-5)


def test_a_runge_kutta_solve_compiles_first_thing_in_a_fresh_process() -> None:
    """Nothing a scheme computes lazily may be first read inside a compiled loop body (dynamo
    cannot trace ``functools.cached_property``); in this process eager tests have warmed
    everything, so the check runs in a new one."""
    import subprocess
    import sys

    code = (
        "import torch, mali_func\n"
        "f = torch.nn.Linear(2, 2)\n"
        "t = torch.tensor([0.0, 1.0])\n"
        "def loss(y):\n"
        "    return mali_func.odeint(lambda s, z, w, b: torch.nn.functional.linear(z, w, b),\n"
        "        y, t, n_steps=3, method='rk4', args=(f.weight, f.bias))[-1].sum()\n"
        "grads = []\n"
        "for fn in (torch.compile(loss, backend='aot_eager', fullgraph=True), loss):\n"
        "    y = torch.ones(4, 2).mul(0.3).requires_grad_()\n"
        "    fn(y).backward()\n"
        "    grads.append(y.grad)\n"
        "print(float((grads[0] - grads[1]).abs().max()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert float(out.stdout.strip().splitlines()[-1]) < 1e-6


@pytest.mark.parametrize("n", [3, 9])  # fewer steps than one unrolled block; two blocks and one
def test_unrolled_compiled_loops_equal_eager(n: int) -> None:
    field = Field()
    y0, t = torch.randn(8, 2), torch.tensor([0.0, 0.5, 1.0])

    def unrolled(field: nn.Module, y0: torch.Tensor, t: torch.Tensor, n: int) -> torch.Tensor:
        ys = odeint(field, y0, t, n_steps=n, unroll=4)
        return ys.pow(2).mean() + ys[1].sum()

    compiled = torch.compile(unrolled, backend="aot_eager", fullgraph=True)
    ref = grads(loss_fn, field, y0, t, n, "mali")
    assert_close_all(grads(compiled, field, y0, t, n), ref, rtol=1e-5)


class TwoRate(nn.Module):
    """Decay rates 1 and 40: reversing 2 time units of it amplifies round-off by e^80, so the
    MALI reconstruction of any step count fails (design.md, section 6)."""

    def __init__(self) -> None:
        super().__init__()
        self.k = nn.Parameter(torch.tensor([-1.0, -40.0], dtype=torch.float64))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y * self.k


def test_a_compiled_fixed_grid_falls_back_inside_the_graph_at_any_step_count() -> None:
    """The step count is a tensor (no recompile for a new one), the fallback's checkpoint plan is
    made for a static bound: the compiled verified gradient equals backprop's at every count,
    where the raw MALI gradient is off by orders of magnitude."""
    field, t = TwoRate(), torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)

    def loss(y: torch.Tensor, n: int, **options: object) -> torch.Tensor:
        return odeint(field, y, t, method="rk4", n_steps=n, **options).pow(2).sum()  # type: ignore[arg-type]

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(loss, backend=counter, fullgraph=True)
    for n in (40, 100, 130):
        results = []
        for run, options in ((compiled, {}), (loss, {"gradient": "backprop"}),
                             (loss, {"fallback": False})):  # fmt: skip
            y0 = torch.tensor([[1.0, 1.0]], dtype=torch.float64, requires_grad=True)
            field.zero_grad()
            run(y0, n, **options).backward()
            results.append([y0.grad.clone(), field.k.grad.clone()])
        verified, exact, raw = results
        assert_close_all(verified, exact, rtol=1e-10)
        assert max(((r - e).abs().max() / e.abs().max()).item() for r, e in zip(raw, exact)) > 1
    assert counter.frame_count == 2
