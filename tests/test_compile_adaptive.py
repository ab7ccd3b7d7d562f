"""Adaptive solves under torch.compile(fullgraph=True): compiled equals eager, failures are NaN."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from helpers import CNF, SmoothField, assert_close_all
from torch import nn
from torch._dynamo.testing import AotEagerAndRecordGraphs

from mali_func import DriftMonitor, odeint

F64 = torch.float64


def Field(dim: int = 2, hidden: int = 16, dtype: torch.dtype = F64) -> SmoothField:
    return SmoothField(dim, hidden, dtype)


def make_loss(field: nn.Module, gradient: str, **options):
    def loss_fn(y0: torch.Tensor, t: torch.Tensor):
        ys, stats = odeint(field, y0, t, gradient=gradient, stats=True, **options)
        return ys.pow(2).mean() + ys[1].sin().sum(), ys, stats

    return loss_fn


def run(fn, field: nn.Module, y0: torch.Tensor, t: torch.Tensor):
    y0 = y0.clone().requires_grad_()
    t = t.clone().requires_grad_()
    loss, ys, stats = fn(y0, t)
    grads = torch.autograd.grad(loss, [y0, t, *field.parameters()])
    return (loss.detach(), ys.detach(), *grads), stats


def assert_same_stats(a, b) -> None:
    assert [s.item() for s in a] == [s.item() for s in b]


pytestmark = pytest.mark.usefixtures("fresh_dynamo")


@pytest.mark.parametrize("gradient", ["mali", "backprop"])
@pytest.mark.parametrize("times", [[0.0, 0.4, 1.0, 1.7], [1.5, 0.2]])
def test_compiled_equals_eager_float64(gradient: str, times: list[float]) -> None:
    field = Field()
    y0, t = torch.randn(8, 2, dtype=F64), torch.tensor(times, dtype=F64)
    loss_fn = make_loss(field, gradient, rtol=1e-6, atol=1e-7)
    ref, ref_stats = run(loss_fn, field, y0, t)
    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
    out, stats = run(compiled, field, y0, t)
    # Under compile "backprop" takes the MALI reverse loop: equal up to reconstruction round-off.
    assert_close_all(out, ref, rtol=1e-10 if gradient == "mali" else 1e-8)
    assert_same_stats(stats, ref_stats)
    assert stats.n_accepted.item() > 20


@pytest.mark.parametrize("gradient", ["mali", "backprop"])
def test_tuple_state_compiled_equals_eager(gradient: str) -> None:
    field = CNF(Field())
    y0, t = torch.randn(8, 2, dtype=F64), torch.tensor([0.0, 0.3, 1.0], dtype=F64)

    def loss_fn(z0: torch.Tensor, t: torch.Tensor, gradient: str):
        y0 = (z0, torch.zeros(z0.shape[0], dtype=F64))
        (zs, lps), stats = odeint(field, y0, t, gradient=gradient, rtol=1e-6, stats=True)
        return zs.pow(2).mean() + lps[1].sum() + lps[-1].mean(), zs, stats

    ref, ref_stats = run(lambda z, t: loss_fn(z, t, "mali"), field, y0, t)
    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
    out, stats = run(lambda z, t: compiled(z, t, gradient), field, y0, t)
    assert_close_all(out, ref, rtol=1e-10)
    assert_same_stats(stats, ref_stats)


def test_compiled_equals_eager_float32() -> None:
    field = Field(dtype=torch.float32)
    y0, t = torch.randn(16, 2), torch.tensor([0.0, 0.5, 1.0])
    loss_fn = make_loss(field, "mali", rtol=1e-4, atol=1e-5)
    ref, ref_stats = run(loss_fn, field, y0, t)
    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
    out, stats = run(compiled, field, y0, t)
    assert_close_all(out, ref, rtol=1e-5)
    assert_same_stats(stats, ref_stats)


def test_compiled_equals_eager_inductor() -> None:
    field = Field()
    y0, t = torch.randn(8, 2, dtype=F64), torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    loss_fn = make_loss(field, "mali", rtol=1e-5, atol=1e-6)
    ref, ref_stats = run(loss_fn, field, y0, t)
    out, stats = run(torch.compile(loss_fn, fullgraph=True), field, y0, t)
    assert_close_all(out, ref, rtol=1e-9)
    assert_same_stats(stats, ref_stats)


def test_exceeding_max_steps_gives_nan_and_a_flag_under_compile() -> None:
    field = Field()
    y0, t = torch.randn(4, 2, dtype=F64), torch.tensor([0.0, 1.0, 5.0], dtype=F64)

    def solve(y0: torch.Tensor):
        return odeint(field, y0, t, rtol=1e-9, atol=1e-9, max_steps=20, stats=True)

    ys, stats = torch.compile(solve, backend="aot_eager", fullgraph=True)(y0)
    assert stats.failed.item()
    assert stats.n_accepted.item() + stats.n_rejected.item() == 20
    assert torch.isnan(ys).all()
    with pytest.raises(RuntimeError, match="max_steps=20"):
        solve(y0)


def test_step_size_underflow_gives_nan_and_a_flag_without_grad() -> None:
    def solve(y0: torch.Tensor):
        t = torch.tensor([0.0, 2.0], dtype=F64)
        return odeint(lambda t, y: y * torch.sqrt(1 - t), y0, t, stats=True)  # NaN beyond t = 1

    ys, stats = torch.compile(solve, backend="aot_eager", fullgraph=True)(torch.ones(1, dtype=F64))
    assert stats.failed.item() and torch.isnan(ys).all()


def test_inference_under_no_grad() -> None:
    field = Field()
    y0, t = torch.randn(4, 2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)

    def solve(y0: torch.Tensor) -> torch.Tensor:
        return odeint(field, y0, t, rtol=1e-5)

    with torch.no_grad():
        out = torch.compile(solve, backend="aot_eager", fullgraph=True)(y0)
        torch.testing.assert_close(out, solve(y0), rtol=1e-12, atol=1e-12)


def test_monitor_receives_the_error_under_compile() -> None:
    field = Field()
    monitor = DriftMonitor(dtype=F64)
    y0 = torch.randn(8, 2, dtype=F64, requires_grad=True)

    def solve(y0: torch.Tensor) -> torch.Tensor:
        return odeint(field, y0, torch.tensor([0.0, 1.0], dtype=F64), rtol=1e-5, monitor=monitor)

    torch.compile(solve, backend="aot_eager", fullgraph=True)(y0)[-1].sum().backward()
    assert monitor.error is not None and 0 <= monitor.error.item() < 1e-8


def test_one_loop_each_way_and_no_host_sync() -> None:
    field = Field()
    backend = AotEagerAndRecordGraphs()
    y0 = torch.randn(4, 2, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64, requires_grad=True)

    def loss(y0: torch.Tensor, t: torch.Tensor, fallback: bool) -> torch.Tensor:
        return odeint(field, y0, t, rtol=1e-4, fallback=fallback).pow(2).sum()

    torch.compile(loss, backend=backend, fullgraph=True)(y0, t, False).backward()
    for graphs in (backend.fw_graphs, backend.bw_graphs):
        (graph,) = graphs
        code = graph.print_readable(print_output=False)
        assert code.count("torch.ops.higher_order.while_loop(") == 1
        assert "_local_scalar_dense" not in code
    # With the verified gradient (the default) the backward adds one torch.cond, whose taken
    # branch holds the checkpointed fallback's loops: still no host sync.
    backend = AotEagerAndRecordGraphs()
    torch.compile(loss, backend=backend, fullgraph=True)(y0, t, True).backward()
    (graph,) = backend.bw_graphs
    code = graph.print_readable(print_output=False)
    assert code.count("torch.ops.higher_order.cond(") == 1
    assert "_local_scalar_dense" not in code


class CubicField(torch.nn.Module):
    """torchdiffeq's gradient test field ``y**3 @ A``: float32 MALI reconstruction fails."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor([[-0.1, 2.0], [-2.0, -0.1]]))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (y**3) @ self.a


@pytest.mark.usefixtures("fresh_dynamo")
def test_a_compiled_adaptive_solve_falls_back_inside_the_graph() -> None:
    """torch.cond on the reconstruction check: a failing compiled MALI backward returns the
    compiled checkpointed gradient (the same computation), not the drifted one."""
    field = CubicField()
    t = torch.linspace(0, 25, 10)

    def grads(compiled: bool, **options: object) -> list[torch.Tensor]:
        def loss(y: torch.Tensor) -> torch.Tensor:
            ys = odeint(field, y, t, method="tsit5", max_steps=500, **options)  # type: ignore[arg-type]
            return ys.pow(2).sum()

        y0 = torch.tensor([[2.0, 0.0]], requires_grad=True)
        field.zero_grad()
        # aot_eager: the torch.cond is in the captured graph either way (inductor's code for
        # compiled adaptive solves: test_compiled_equals_eager_inductor). The references are
        # eager (compiled checkpointing and raw MALI equal eager: tests/test_all_modes.py).
        (torch.compile(loss, fullgraph=True, backend="aot_eager") if compiled else loss)(
            y0
        ).backward()
        assert y0.grad is not None and field.a.grad is not None
        return [y0.grad.clone(), field.a.grad.clone()]

    verified = grads(True)
    exact = grads(False, gradient="checkpoint")
    raw = grads(False, fallback=False)
    for v, e, r in zip(verified, exact, raw):
        torch.testing.assert_close(v, e, rtol=1e-6, atol=1e-6)
        assert ((r - e).abs().max() / e.abs().max()).item() > 1e-3
