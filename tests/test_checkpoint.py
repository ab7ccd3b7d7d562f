"""gradient="checkpoint" and the plain Runge-Kutta step: exact gradients from a bounded set of
stored states, on every scheme and grid, with the budget's memory and recomputation."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import F64, assert_close_all
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap

from mali_func import ODEBlock, ReversibleScheme, RungeKutta, odeint
from mali_func.gradients._checkpoint import default_budget, plan
from mali_func.schemes import TABLEAUS

pytestmark = pytest.mark.usefixtures("fresh_dynamo")


class TimeField(nn.Module):
    """An MLP of ``(y, t)``: the time gradient is not trivially zero."""

    def __init__(self, dim: int = 3, dtype: torch.dtype = F64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim + 1, 16, dtype=dtype), nn.Tanh(), nn.Linear(16, dim, dtype=dtype)
        )
        self.calls = 0

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        self.calls += 1
        return self.net(torch.cat([y, t.expand(*y.shape[:-1], 1)], -1)) - 0.5 * y


def problem(times: list[float] | None = None) -> tuple[TimeField, Tensor, Tensor]:
    torch.manual_seed(0)
    t = torch.tensor([0.0, 0.3, 0.5, 1.2] if times is None else times, dtype=F64)
    return TimeField(), torch.randn(5, 3, dtype=F64), t


def gradients(field: nn.Module, y0: Tensor, t: Tensor, **kw) -> tuple[Tensor, ...]:
    y0, t = y0.clone().requires_grad_(), t.clone().requires_grad_()
    ys = odeint(field, y0, t, **kw)
    loss = ys.pow(2).sum() + ys[1].sin().sum()
    return torch.autograd.grad(loss, [y0, t, *field.parameters()])


SCHEMES = {
    "rk4": {"method": "rk4", "coupling": None},
    "tsit5": {"method": "tsit5", "coupling": None},
    "alf": {"method": "alf"},
    "rk4_auto": {"method": "rk4"},
    "reversible_heun": {"method": "reversible_heun"},
}


# -- equal to backprop through the same steps ------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("budget", [None, 1, 4, 1000])
def test_fixed_grid_gradients_equal_backprop(scheme: str, budget: int | None) -> None:
    field, y0, t = problem()
    kw = {**SCHEMES[scheme], "n_steps": 7}
    ref = gradients(field, y0, t, gradient="backprop", **kw)
    got = gradients(field, y0, t, gradient="checkpoint", checkpoints=budget, **kw)
    assert_close_all(got, ref, rtol=1e-10)


@pytest.mark.parametrize("scheme", ["tsit5", "alf"])
@pytest.mark.parametrize("budget", [None, 2, 6])
def test_adaptive_gradients_equal_backprop_through_the_accepted_steps(scheme, budget) -> None:
    field, y0, t = problem()
    kw = {**SCHEMES[scheme], "rtol": 1e-6, "atol": 1e-8}
    ref = gradients(field, y0, t, gradient="backprop", **kw)
    got = gradients(field, y0, t, gradient="checkpoint", checkpoints=budget, **kw)
    assert_close_all(got, ref, rtol=1e-10)


@settings(max_examples=25, deadline=None)
@given(
    steps=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    budget=st.one_of(st.none(), st.integers(1, 12)),
)
def test_any_step_counts_and_budget_give_the_backprop_gradient(steps, budget) -> None:
    times = [0.0, 0.4, 0.9, 1.5][: len(steps) + 1]
    field, y0, t = problem(times)
    kw = {"method": "midpoint", "coupling": None, "n_steps": max(steps)}
    ref = gradients(field, y0, t, gradient="backprop", **kw)
    got = gradients(field, y0, t, gradient="checkpoint", checkpoints=budget, **kw)
    assert_close_all(got, ref, rtol=1e-10)


def test_the_gradient_matches_finite_differences() -> None:
    field, y0, t = problem([0.0, 1.0])
    y0 = y0[:1].clone().requires_grad_()

    def loss(x: Tensor) -> Tensor:
        kw = {"method": "rk4", "coupling": None, "n_steps": 10}
        return odeint(field, x, t, gradient="checkpoint", checkpoints=3, **kw)[-1].pow(2).sum()

    (got,) = torch.autograd.grad(loss(y0), y0)
    eps, fd = 1e-6, torch.zeros_like(y0)
    for i in range(y0.numel()):
        e = torch.zeros_like(y0).flatten()
        e[i] = eps
        e = e.reshape(y0.shape)
        with torch.no_grad():
            fd.view(-1)[i] = (loss(y0 + e) - loss(y0 - e)) / (2 * eps)
    torch.testing.assert_close(got, fd, rtol=1e-7, atol=1e-9)


# -- budget: levels, memory, recomputation ---------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 100_000), budget=st.one_of(st.none(), st.integers(1, 400)))
def test_the_plan_covers_the_steps_within_the_budget(n: int, budget: int | None) -> None:
    p = plan(n, budget)
    assert p.rows**p.levels >= n
    limit = default_budget(n) if budget is None else budget
    assert p.levels * p.rows <= max(limit, 2 * p.levels)  # rows >= 2 unless one level suffices
    if budget is None:
        assert p.levels <= 2  # the default: one recomputation at most


@pytest.mark.parametrize(("n", "budget", "levels"), [(100, None, 2), (100, 100, 1), (1000, 30, 3)])
def test_field_evaluations_show_one_recomputation_per_extra_level(n, budget, levels) -> None:
    """Forward: n steps, storing level 0. Backward, eagerly: each step re-run once under a VJP
    (the last level's blocks, whole), after (levels - 2) re-runs that record the levels between.
    Euler: one evaluation a step."""
    field, y0, t = problem([0.0, 1.0])
    assert plan(n, budget).levels == levels
    y0 = y0.clone().requires_grad_()
    ys = odeint(field, y0, t, method="euler", coupling=None, n_steps=n, gradient="checkpoint",
                checkpoints=budget)  # fmt: skip
    forward_calls = field.calls
    ys[-1].sum().backward()
    backward_calls = field.calls - forward_calls
    assert forward_calls == n + 1  # + the output check at t0
    extra = max(levels - 2, 0)
    assert n + extra * n * 0.5 <= backward_calls <= n + extra * n


@pytest.mark.parametrize(("t1", "rtol"), [(3.0, 1e-3), (10.0, 1e-11)])
def test_an_eager_adaptive_backward_re_runs_each_accepted_step_once(t1: float, rtol: float) -> None:
    """The forward keeps level 0 (every stride-th accepted state, thinned as the steps grow), so
    the backward re-runs each accepted step once, with its graph, and no replay records level 0
    (it was 1.5-1.9x the forward's calls: issue #31). rtol 1e-11 over [0, 10]: enough to thin."""
    field, y0, t = problem([0.0, t1])
    y0 = y0.clone().requires_grad_()
    ys, stats = odeint(field, y0, t, method="tsit5", coupling=None, rtol=rtol, atol=rtol,
                       gradient="checkpoint", stats=True)  # fmt: skip
    forward_calls = field.calls
    grads = torch.autograd.grad(ys[-1].pow(2).sum(), [y0, *field.parameters()])
    per_step = (forward_calls - int(stats.n_rejected) * 7 - 3) // int(stats.n_accepted)
    assert per_step == 7
    # The re-run needs no estimate: tsit5's seventh stage (weight 0) is not evaluated there.
    assert field.calls - forward_calls == 6 * int(stats.n_accepted)
    if rtol == 1e-11:
        assert int(stats.n_accepted) > 100  # the kept rows were thinned (budget 2 sqrt(N) + 2)
    field.calls = 0
    ys_b = odeint(field, y0, t, method="tsit5", coupling=None, rtol=rtol, atol=rtol,
                  gradient="backprop")  # fmt: skip
    want = torch.autograd.grad(ys_b[-1].pow(2).sum(), [y0, *field.parameters()])
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_memory_of_stored_states_stays_within_the_budget() -> None:
    """What the solve keeps for its backward: its inputs, outputs and level 0 (budget 40 at 400
    steps: two levels of 20 rows, the first stored by the forward pass)."""
    field, y0, t = problem([0.0, 1.0])
    y0 = y0.clone().requires_grad_()
    ys = odeint(field, y0, t, method="euler", coupling=None, n_steps=400, gradient="checkpoint",
                checkpoints=40)  # fmt: skip
    node = ys.grad_fn.next_functions[0][0]  # the solve, under the clone handed to the caller
    saved = sum(x.numel() for x in node.saved_tensors)
    inputs = t.numel() + y0.numel() + sum(p.numel() for p in field.parameters())
    rows = (saved - inputs - ys.numel()) / y0.numel()
    assert rows == 21  # 20 block starts and the final state
    ys[-1].sum().backward()


# -- every scheme, user schemes, modes -------------------------------------------------------------


class ForwardOnly(ReversibleScheme):
    """A user scheme with ``step`` only (explicit Euler): checkpointing needs nothing else."""

    def step(self, field, t, h, state, params):
        return tuple(y + h * f for y, f in zip(state, field(t, state, params)))


def test_a_user_scheme_with_only_a_step_is_differentiated() -> None:
    field, y0, t = problem()
    ref = gradients(field, y0, t, scheme=ForwardOnly(), n_steps=6, gradient="backprop")
    got = gradients(field, y0, t, scheme=ForwardOnly(), n_steps=6, gradient="checkpoint")
    assert_close_all(got, ref, rtol=1e-10)


def test_the_plain_step_is_the_runge_kutta_step() -> None:
    """One RK4 step of y' = y is the Taylor polynomial of degree 4."""
    y = odeint(lambda t, y: y, torch.ones(1, dtype=F64), [0.0, 0.5], method="rk4",
               coupling=None, n_steps=1, gradient="backprop")  # fmt: skip
    h = 0.5
    assert y[-1].item() == pytest.approx(1 + h + h**2 / 2 + h**3 / 6 + h**4 / 24, rel=1e-15)


@pytest.mark.parametrize("name", ["midpoint", "rk4", "tsit5"])
def test_the_plain_step_converges_at_the_tableau_order(name: str) -> None:
    y0 = torch.tensor([1.0, 0.0], dtype=F64)

    def error(n: int) -> float:
        y = odeint(lambda t, y: torch.stack([y[1], -y[0]]), y0, [0.0, 2.0], method=name,
                   coupling=None, n_steps=n, gradient="backprop")[-1]  # fmt: skip
        return (y - torch.tensor([math.cos(2.0), -math.sin(2.0)], dtype=F64)).norm().item()

    order = math.log2(error(16) / error(32))
    assert order == pytest.approx(TABLEAUS[name].order, abs=0.3)


def test_vmap_grad_equals_a_loop_of_backprop() -> None:
    field, y0, t = problem()

    class Loss(nn.Module):
        def __init__(self, gradient: str) -> None:
            super().__init__()
            self.field, self.gradient = field, gradient

        def forward(self, y: Tensor) -> Tensor:
            budget = 3 if self.gradient == "checkpoint" else None
            ys = odeint(self.field, y, t, method="rk4", coupling=None, n_steps=5,
                        gradient=self.gradient, checkpoints=budget)  # fmt: skip
            return ys.pow(2).sum()

    model = Loss("checkpoint")
    params = {k: v.detach() for k, v in model.named_parameters()}
    per_sample = grad(lambda p, y: functional_call(model, p, (y,)))
    batched = vmap(per_sample, in_dims=(None, 0))(params, y0)
    for i in range(y0.shape[0]):
        ref = torch.autograd.grad(Loss("backprop")(y0[i]), list(field.parameters()))
        assert_close_all([batched[k][i] for k in params], ref, rtol=1e-10)


def test_forward_mode_equals_backprop() -> None:
    field, y0, t = problem()

    def solve(gradient: str):
        def run(y: Tensor) -> Tensor:
            kw = {"method": "tsit5", "coupling": None, "n_steps": 4}
            return odeint(field, y, t, gradient=gradient, **kw)

        return run

    tangent = torch.randn_like(y0)
    _, got = jvp(solve("checkpoint"), (y0,), (tangent,))
    _, want = jvp(solve("backprop"), (y0,), (tangent,))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# Compiled (aot_eager, inductor) against eager backprop, fixed and adaptive, with the time
# gradient: tests/test_all_modes.py (test_checkpointed_gradients_in_every_mode_...).


def test_compiled_graph_size_does_not_grow_with_the_steps() -> None:
    field, y0, t = problem([0.0, 1.0])
    nodes: list[int] = []

    def count(gm: torch.fx.GraphModule, example_inputs):
        nodes.append(len(gm.graph.nodes))
        return gm

    def loss(y: Tensor, n: int) -> Tensor:
        ys = odeint(field, y, t, method="rk4", coupling=None, gradient="checkpoint", n_steps=n)
        return ys.pow(2).sum()

    for n in (10, 1000):
        torch._dynamo.reset()
        y = y0.clone().requires_grad_()
        torch.compile(loss, backend=count, fullgraph=True)(y, n).backward()
    assert len(nodes) == 2 and nodes[0] == nodes[1]


def test_a_compiled_plan_too_deep_to_trace_is_refused_with_the_fix() -> None:
    field, y0, t = problem()

    def loss(y: Tensor) -> Tensor:
        ys = odeint(field, y, t, method="tsit5", coupling=None, gradient="checkpoint",
                    checkpoints=4)  # fmt: skip
        return ys.sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    with pytest.raises(Exception, match=r"checkpoints=4 for max_steps=10000 needs 14 levels.*"
                                        r"checkpoints=200"):  # fmt: skip
        compiled(y0.clone().requires_grad_())


def test_an_ode_block_trains_with_checkpoints() -> None:
    field, y0, _ = problem()
    block = ODEBlock(field, n_steps=6, method="tsit5", coupling=None, gradient="checkpoint",
                     checkpoints=3)  # fmt: skip
    reference = ODEBlock(field, n_steps=6, method="tsit5", coupling=None, gradient="backprop")
    got = torch.autograd.grad(block(y0).pow(2).sum(), list(field.parameters()))
    want = torch.autograd.grad(reference(y0).pow(2).sum(), list(field.parameters()))
    assert_close_all(got, want, rtol=1e-10)


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "4"])
def test_a_bad_budget_is_refused(bad) -> None:
    field, y0, t = problem()
    with pytest.raises(ValueError, match="checkpoints must be an int >= 1"):
        odeint(field, y0, t, n_steps=4, gradient="checkpoint", checkpoints=bad)


def test_a_budget_without_checkpointing_is_refused() -> None:
    field, y0, t = problem()
    with pytest.raises(ValueError, match="checkpoints is the budget of gradient='checkpoint'"):
        odeint(field, y0, t, n_steps=4, checkpoints=8)


def test_mali_with_the_plain_step_is_refused_with_what_to_use() -> None:
    field, y0, t = problem()
    with pytest.raises(ValueError, match=r"RungeKutta\(rk4\).*inverse.*gradient='checkpoint'.*"
                                         r"coupling='auto'"):  # fmt: skip
        odeint(field, y0, t, method="rk4", coupling=None, n_steps=4)


def test_mali_with_a_scheme_without_inverse_names_the_scheme() -> None:
    field, y0, t = problem()
    with pytest.raises(ValueError, match=r"ForwardOnly.*inverse.*gradient='checkpoint'"):
        odeint(field, y0, t, scheme=ForwardOnly(), n_steps=4)


def test_coupling_none_leaves_alf_as_it_is_and_a_number_is_still_refused() -> None:
    field, y0, t = problem()
    a = odeint(field, y0, t, method="alf", coupling=None, n_steps=4)
    torch.testing.assert_close(a, odeint(field, y0, t, method="alf", n_steps=4))
    with pytest.raises(ValueError, match="coupling applies to the Runge-Kutta methods"):
        odeint(field, y0, t, method="alf", coupling=0.5, n_steps=4)
    with pytest.raises(ValueError, match="coupling applies"):
        odeint(field, y0, t, method="alf", coupling="auto", n_steps=4)


def test_the_default_coupling_is_still_the_reversible_auto_coupling() -> None:
    field, y0, t = problem()
    assert repr(RungeKutta(TABLEAUS["rk4"])) == "RungeKutta(rk4)"
    y = odeint(field, y0, t, method="rk4", n_steps=4)  # MALI: the reversible coupling
    z = odeint(field, y0, t, method="rk4", coupling="auto", n_steps=4)
    torch.testing.assert_close(y, z, rtol=0, atol=0)
