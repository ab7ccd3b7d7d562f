"""Dense output (``Adaptive(interpolate=True)``): output times cost no steps, the interpolated
outputs are within the solve's tolerance, and every gradient differentiates them exactly."""

from __future__ import annotations

import pytest
import torch
from helpers import F64, SmoothField
from torch import Tensor

from mali_func import Adaptive, FallbackWarning, odeint

DENSE = Adaptive(interpolate=True)
LAND = Adaptive(interpolate=False)


def damped(t: Tensor, y: Tensor) -> Tensor:
    return torch.stack([y[..., 1], -y[..., 0] - 0.1 * y[..., 1]], -1)


@pytest.mark.parametrize(("method", "coupling"), [("tsit5", None), ("dopri5", None),
                                                  ("tsit5", "auto"), ("alf", None)])  # fmt: skip
def test_output_times_do_not_change_the_accepted_steps(method: str, coupling: str | None) -> None:
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    tol = {"rtol": 1e-4, "atol": 1e-7} if method == "alf" else {"rtol": 1e-6, "atol": 1e-9}
    counts = []
    for n in (2, 3, 100):
        t = torch.linspace(0, 10, n, dtype=F64)
        _, stats = odeint(damped, y0, t, method=method, coupling=coupling, steps=DENSE,
                          stats=True, **tol)  # fmt: skip
        counts.append((int(stats.n_accepted), int(stats.n_rejected)))
    assert counts[0] == counts[1] == counts[2]
    t = torch.linspace(0, 10, 100, dtype=F64)
    _, landed = odeint(damped, y0, t, method=method, coupling=coupling, steps=LAND, stats=True,
                       **tol)  # fmt: skip
    assert int(landed.n_accepted) > counts[0][0]


@pytest.mark.parametrize("rtol", [1e-4, 1e-6, 1e-8])
def test_interpolated_outputs_are_within_the_tolerance_of_a_tight_reference(rtol: float) -> None:
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    t = torch.linspace(0, 10, 80, dtype=F64)
    ref = odeint(damped, y0, t, method="tsit5", rtol=1e-12, atol=1e-14)
    dense = odeint(damped, y0, t, method="tsit5", rtol=rtol, atol=rtol * 1e-3, steps=DENSE)
    landed = odeint(damped, y0, t, method="tsit5", rtol=rtol, atol=rtol * 1e-3, steps=LAND)
    assert (dense - ref).abs().max() < 10 * rtol
    # No worse than landing on every output by more than the tolerance itself.
    assert (dense - ref).abs().max() < (landed - ref).abs().max() + rtol


def test_the_first_and_last_outputs_are_the_solve_s_own_rows() -> None:
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    dense = odeint(damped, y0, torch.linspace(0, 3, 7, dtype=F64), rtol=1e-6, steps=DENSE,
                   method="tsit5")  # fmt: skip
    two = odeint(damped, y0, torch.tensor([0.0, 3.0], dtype=F64), rtol=1e-6, method="tsit5")
    assert torch.equal(dense[0], y0) and torch.equal(dense[-1], two[-1])


def _grads(gradient: str, method: str, t: Tensor) -> tuple[Tensor, ...]:
    torch.manual_seed(0)
    field = SmoothField(dim=2, hidden=16, dtype=F64)
    y0 = torch.randn(3, 2, dtype=F64, requires_grad=True)
    t = t.clone().requires_grad_()
    rtol = 1e-5 if method == "alf" else 1e-7  # ALF is second order: many more steps at 1e-7
    out = odeint(field, y0, t, method=method, rtol=rtol, atol=rtol * 1e-2, steps=DENSE,
                 gradient=gradient)  # fmt: skip
    loss = (out**2).sum() + out[..., 0].sin().sum()
    return (out.detach(), *torch.autograd.grad(loss, (y0, t, *field.parameters())))


@pytest.mark.parametrize("gradient", ["mali", "checkpoint"])
@pytest.mark.parametrize("method", ["tsit5", "dopri5", "alf"])
def test_gradients_through_interpolated_outputs_equal_backprop(gradient: str, method: str) -> None:
    for t in (torch.linspace(0, 2, 30, dtype=F64), torch.linspace(1.5, -0.5, 9, dtype=F64)):
        ref = _grads("backprop", method, t)
        got = _grads(gradient, method, t)
        for a, b in zip(got, ref):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)


def test_the_gradient_of_an_interpolated_output_matches_finite_differences() -> None:
    a = torch.tensor(0.7, dtype=F64)
    t = torch.linspace(0, 2, 6, dtype=F64)

    def row(y0: Tensor, a: Tensor) -> Tensor:
        return odeint(lambda t, y, a: -a * y + torch.sin(3 * t), y0, t, args=(a,), steps=DENSE,
                      method="tsit5", rtol=1e-10, atol=1e-12)[2].sum()  # fmt: skip

    y0 = torch.tensor([1.0], dtype=F64)
    g_y0, g_a = torch.func.grad(row, argnums=(0, 1))(y0, a)
    eps = 1e-6
    fd_y0 = (row(y0 + eps, a) - row(y0 - eps, a)) / (2 * eps)
    fd_a = (row(y0, a + eps) - row(y0, a - eps)) / (2 * eps)
    assert torch.allclose(g_y0, fd_y0, rtol=1e-6) and torch.allclose(g_a, fd_a, rtol=1e-6)


def test_vmap_gives_each_sample_its_own_steps_and_matches_a_loop() -> None:
    torch.manual_seed(1)
    field = SmoothField(dim=2, hidden=16, dtype=F64)
    t = torch.linspace(0, 3, 20, dtype=F64)
    y0 = torch.randn(4, 2, dtype=F64) * torch.tensor([[0.1], [1.0], [3.0], [10.0]], dtype=F64)

    def solve(y: Tensor) -> Tensor:
        return odeint(field, y, t, method="tsit5", rtol=1e-7, steps=DENSE)

    def loss(y: Tensor) -> Tensor:
        return solve(y).pow(2).sum()

    assert torch.allclose(torch.func.vmap(solve)(y0), torch.stack([solve(y) for y in y0]),
                          rtol=1e-12, atol=1e-12)  # fmt: skip
    per_sample = torch.func.vmap(torch.func.grad(loss))(y0)
    looped = torch.stack([torch.func.grad(loss)(y) for y in y0])
    assert torch.allclose(per_sample, looped, rtol=1e-10, atol=1e-12)


def test_jacrev_equals_jacfwd_through_interpolated_outputs() -> None:
    torch.manual_seed(2)
    field = SmoothField(dim=2, hidden=8, dtype=F64)
    t = torch.linspace(0, 1, 7, dtype=F64)

    def solve(y: Tensor) -> Tensor:
        return odeint(field, y, t, method="dopri5", rtol=1e-8, steps=DENSE)

    y0 = torch.randn(2, dtype=F64)
    jr, jf = torch.func.jacrev(solve)(y0), torch.func.jacfwd(solve)(y0)
    assert torch.allclose(jr, jf, rtol=1e-10, atol=1e-12)


def test_a_tuple_state_interpolates_every_component() -> None:
    def field(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        z, _ = state
        return -z, -(z**2).sum(-1)

    z0 = torch.tensor([[1.0, 2.0]], dtype=F64, requires_grad=True)
    t = torch.linspace(0, 1, 11, dtype=F64)
    kw = dict(method="tsit5", rtol=1e-9, atol=1e-12)
    z, logp = odeint(field, (z0, torch.zeros(1, dtype=F64)), t, steps=DENSE, **kw)
    assert torch.allclose(z, z0.detach() * torch.exp(-t)[:, None, None], rtol=1e-7)
    exact = -(z0.detach() ** 2).sum() * (1 - torch.exp(-2 * t)) / 2
    assert torch.allclose(logp[:, 0], exact, rtol=1e-7, atol=1e-9)


def test_interpolation_counts_its_evaluations() -> None:
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    kw = dict(method="tsit5", rtol=1e-6, steps=DENSE, stats=True, coupling=None)
    _, two = odeint(damped, y0, torch.tensor([0.0, 5.0], dtype=F64), **kw)
    _, many = odeint(damped, y0, torch.linspace(0, 5, 12, dtype=F64), **kw)
    # A short step to an output takes tsit5's six solution stages: the seventh (weight 0) only
    # feeds the error estimate, which an output does not need.
    assert int(many.n_f_evals) - int(two.n_f_evals) == 10 * 6


def test_interpolate_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="interpolate must be a bool"):
        odeint(damped, torch.ones(2), torch.linspace(0, 1, 3), steps=Adaptive(interpolate="yes"))


@pytest.mark.compile
def test_compiled_interpolated_solve_matches_eager() -> None:
    """One graph (``fullgraph``; the captured graph, not inductor's code, is what differs from
    eager here; the compiled fallback is covered with interior outputs in
    tests/test_compile_adaptive.py)."""
    torch.manual_seed(3)
    field = SmoothField(dim=2, hidden=8)
    t = torch.linspace(0, 2, 9)

    def loss(y: Tensor) -> Tensor:
        ys = odeint(field, y, t, method="tsit5", rtol=1e-5, steps=DENSE, fallback=False)
        return ys.pow(2).sum()

    y0 = torch.randn(3, 2, requires_grad=True)
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    value = compiled(y0)
    (g_c,) = torch.autograd.grad(value, y0)
    (g_e,) = torch.autograd.grad(loss(y0), y0)
    assert torch.allclose(value, loss(y0), rtol=1e-5)
    assert torch.allclose(g_c, g_e, rtol=1e-4, atol=1e-6)


def test_a_failed_reconstruction_falls_back_to_the_exact_gradient_through_interpolation() -> None:
    """torchdiffeq's gradient field in float32: MALI's reconstruction fails; the fallback
    re-runs the same accepted steps by checkpointing, interior outputs' cotangents included."""

    class Cubic(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Parameter(torch.tensor([[-0.1, 2.0], [-2.0, -0.1]]))

        def forward(self, t: Tensor, y: Tensor) -> Tensor:
            return (y**3) @ self.a

    field, t = Cubic(), torch.linspace(0, 25, 10)

    def grads(**kw: object) -> list[Tensor]:
        y0 = torch.tensor([[2.0, 0.0]], requires_grad=True)
        field.zero_grad()
        ys = odeint(field, y0, t, method="tsit5", max_steps=500, steps=DENSE, **kw)
        ys.pow(2).sum().backward()
        assert y0.grad is not None and field.a.grad is not None
        return [y0.grad.clone(), field.a.grad.clone()]

    with pytest.warns(FallbackWarning):
        verified = grads()
    exact, raw = grads(gradient="checkpoint"), grads(fallback=False)
    for v, e, r in zip(verified, exact, raw):
        torch.testing.assert_close(v, e, rtol=1e-5, atol=1e-5)
        assert ((r - e).abs().max() / e.abs().max()).item() > 1e-3
