"""torchdiffeq code runs with the import changed: its signature, defaults, problems and options.

The problems are the kind torchdiffeq's own tests solve (constant, linear, sine, exponential;
forward and backward in time; tuple states), called the torchdiffeq way (positional ``rtol,
atol, method, options``) at torchdiffeq's default tolerances (rtol 1e-7, atol 1e-9), with the
error limits a torchdiffeq user relies on there.
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from helpers import F64, load_example
from torch import Tensor, nn

from mali_func import CouplingWarning, odeint, odeint_adjoint

RTOL, ATOL = 1e-7, 1e-9
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


class Constant(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.2, dtype=F64))

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self.a + torch.zeros_like(y)

    def exact(self, t: Tensor, y0: Tensor) -> Tensor:
        return y0 + self.a * (t - t[0]).view(-1, *([1] * y0.ndim))


class Linear(nn.Module):
    """``y' = A y``: the exact solution is ``expm((t - t0) A) y0``."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor([[-0.1, -2.0], [2.0, -0.1]], dtype=F64))

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return y @ self.a.T

    def exact(self, t: Tensor, y0: Tensor) -> Tensor:
        return torch.stack([y0 @ torch.linalg.matrix_exp((s - t[0]) * self.a).T for s in t])


class Sine(nn.Module):
    """``y' = cos(t)``: ``y = y0 + sin(t) - sin(t0)``."""

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return torch.cos(t) + torch.zeros_like(y)

    def exact(self, t: Tensor, y0: Tensor) -> Tensor:
        return y0 + (torch.sin(t) - torch.sin(t[0])).view(-1, *([1] * y0.ndim))


class Exponential(nn.Module):
    """``y' = -0.5 y``."""

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return -0.5 * y

    def exact(self, t: Tensor, y0: Tensor) -> Tensor:
        return y0 * torch.exp(-0.5 * (t - t[0])).view(-1, *([1] * y0.ndim))


PROBLEMS = {"constant": Constant, "linear": Linear, "sine": Sine, "exponential": Exponential}
ADAPTIVE = ["dopri5", "tsit5", "bosh3", "adaptive_heun"]


@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("method", ADAPTIVE)
@pytest.mark.parametrize("backwards", [False, True], ids=["forward", "backward"])
def test_adaptive_solutions_at_torchdiffeqs_default_tolerances(
    problem: str, method: str, backwards: bool
) -> None:
    field = PROBLEMS[problem]()
    y0 = torch.tensor([[1.0, -0.5], [0.3, 0.8]], dtype=F64)
    t = torch.linspace(1.0, 4.0, 7, dtype=F64)
    t = t.flip(0) if backwards else t
    # A second-order pair at 1e-7 would take 1e5 steps: it gets looser tolerances and limit.
    rtol, atol, limit = (1e-5, 1e-7, 1e-3) if method == "adaptive_heun" else (RTOL, ATOL, 1e-6)
    with torch.no_grad():
        ys = odeint(field, y0, t, rtol, atol, method)  # torchdiffeq's positional arguments
        error = (ys - field.exact(t, y0)).abs().max().item()
    assert error < limit, error


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun3", "rk4"])
def test_fixed_step_methods_with_options_step_size(method: str) -> None:
    field = Linear()
    y0 = torch.tensor([[1.0, -0.5]], dtype=F64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    with torch.no_grad():
        ys = odeint(field, y0, t, method=method, options={"step_size": 0.01})
        error = (ys - field.exact(t, y0)).abs().max().item()
    assert error < {"euler": 5e-2, "midpoint": 1e-3, "heun3": 1e-5, "rk4": 1e-7}[method], error


def test_a_float64_t_with_a_float32_state_is_cast_as_torchdiffeq_does() -> None:
    y0 = torch.tensor([[1.0, 0.0]])
    ys = odeint(Exponential(), y0, torch.tensor([0.0, 1.0], dtype=F64), n_steps=100)
    assert ys.dtype == torch.float32
    assert abs(ys[-1, 0, 0].item() - math.exp(-0.5)) < 1e-4


def test_tuple_states_and_gradients_through_odeint_adjoint() -> None:
    """``from mali_func import odeint_adjoint as odeint``: torchdiffeq's defaults (dopri5, rtol
    1e-7, atol 1e-9), ``adjoint_params`` and the adjoint tolerances accepted."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 8, dtype=F64), nn.Tanh(), nn.Linear(8, 2, dtype=F64))

    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
            z, _ = state
            dz = self.net(z)
            return dz, -(dz * z).sum(-1)

    field = Pair()
    z0 = torch.randn(3, 2, dtype=F64, requires_grad=True)
    logp0 = torch.zeros(3, dtype=F64)
    t = torch.tensor([0.0, 0.5], dtype=F64)
    zs, logps = odeint_adjoint(
        field, (z0, logp0), t, adjoint_params=tuple(field.parameters()), adjoint_rtol=1e-4,
        adjoint_atol=1e-6, adjoint_method="rk4", adjoint_options={},
    )  # fmt: skip
    loss = zs[-1].pow(2).sum() + logps[-1].sum()
    got = torch.autograd.grad(loss, [z0, *net.parameters()])
    zs_b, logps_b = odeint(field, (z0, logp0), t, RTOL, ATOL, "dopri5", gradient="backprop")
    want = torch.autograd.grad(zs_b[-1].pow(2).sum() + logps_b[-1].sum(), [z0, *net.parameters()])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_a_parameter_left_out_of_adjoint_params_still_gets_its_gradient() -> None:
    """torchdiffeq leaves such a parameter without a gradient; here every parameter of the field
    is differentiated (documented), with the gradient backprop gives."""
    field = Linear()
    shift = nn.Parameter(torch.tensor([0.1, -0.2], dtype=F64))

    class Shifted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.shift = field, shift

        def forward(self, t: Tensor, y: Tensor) -> Tensor:
            return self.inner(t, y) + self.shift

    model, y0, t = Shifted(), torch.tensor([[1.0, -0.5]], dtype=F64), [0.0, 1.0]
    ys = odeint_adjoint(model, y0, t, adjoint_params=(field.a,))
    got = torch.autograd.grad(ys[-1].sum(), [field.a, shift])
    ys = odeint(model, y0, t, RTOL, ATOL, "dopri5", coupling=None, gradient="backprop")
    for a, b in zip(got, torch.autograd.grad(ys[-1].sum(), [field.a, shift])):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_gradient_matches_finite_differences_through_the_torchdiffeq_signature() -> None:
    field = Linear()
    y0 = torch.tensor([[1.0, -0.5]], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)

    def loss(a: Tensor) -> Tensor:
        field.a.data.copy_(a)
        return odeint_adjoint(field, y0, t)[-1].pow(2).sum()

    a0 = field.a.detach().clone()
    field.a.data.copy_(a0)
    grad = torch.autograd.grad(odeint_adjoint(field, y0, t)[-1].pow(2).sum(), field.a)[0]
    eps = 1e-6
    for i in range(2):
        for j in range(2):
            e = torch.zeros_like(a0)
            e[i, j] = eps
            with torch.no_grad():
                fd = (loss(a0 + e) - loss(a0 - e)) / (2 * eps)
            assert abs(fd.item() - grad[i, j].item()) < 1e-6 * max(1.0, abs(fd.item()))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda f, y, t: odeint(f, y, t, RTOL, ATOL, "dopri5", {"maxstep": 1.0}), ValueError,
         r"unknown key 'maxstep'; valid keys: \['step_size', 'first_step', 'max_num_steps', "
         r"'min_step', 'max_step', 'norm', 'perturb', 'jump_t', 'step_t', 'grid_constructor'\]"),
        (lambda f, y, t: odeint_adjoint(f, y, t, method="alf", options={"perturb": True}),
         ValueError, r"options\['perturb'\] applies to the Runge-Kutta methods"),
        (lambda f, y, t: odeint(f, y, t, None, None, "implicit_adams"), ValueError,
         r"'implicit_adams' \(torchdiffeq\) has no reversible form.*'tsit5', 'dopri8'\]"),
        (lambda f, y, t: odeint(f, y, t, method="rk4", options={"step_size": 0.1}, n_steps=4),
         ValueError, r"options\['step_size'\] or n_steps, not both"),
        (lambda f, y, t: odeint_adjoint(f, y, t, method="heun"), ValueError,
         r"cannot choose its steps: .*options=\{'step_size': h\}"),
        (lambda f, y, t: odeint_adjoint(f, y, t, event_fn=lambda t, y: y),
         ValueError, "event_fn must return a scalar tensor"),
    ],
)  # fmt: skip
def test_bad_torchdiffeq_arguments_are_named(call, error: type, match: str) -> None:
    y0, t = torch.ones(1, 2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(error, match=match):
        call(Exponential(), y0, t)


def test_a_lambda_over_a_module_runs_under_no_grad() -> None:
    field = Linear()
    with torch.no_grad():
        ys = odeint(lambda t, y: field(t, y), torch.ones(1, 2, dtype=F64), [0.0, 1.0], RTOL, ATOL)
    assert torch.isfinite(ys).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_spiral_solves_adaptively_with_torchdiffeqs_defaults(dtype: torch.dtype) -> None:
    a = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=dtype)
    y0 = torch.tensor([[2.0, 0.0]], dtype=dtype)
    t = torch.linspace(0.0, 25.0, 81, dtype=dtype)
    with torch.no_grad():
        ys, stats = odeint_adjoint(lambda t, y: (y**3) @ a, y0, t, stats=True)
        ref = odeint_adjoint(lambda t, y: (y**3) @ a.double(), y0.double(), t.double(),
                             rtol=1e-10, atol=1e-12)  # fmt: skip
    assert not stats.failed
    assert (ys.double() - ref).abs().max().item() < (1e-5 if dtype == F64 else 1e-3)


def test_the_coupling_follows_a_field_that_contracts_later_and_the_plain_step_agrees():
    """The field ``spiral_demo.py`` starts from, solved over [0, 25] as its first loss does.
    It has no contraction at ``t[0]`` and contracts later: the coupling estimated once at
    ``t[0]`` let the parasitic mode grow there (the end state was 4.2 off); the coupling from
    each step's stages follows the field and agrees with a converged solve, as does
    ``odeint_adjoint``'s default, torchdiffeq's plain dopri5 step with checkpointing. A fixed
    coupling near 1 still drifts apart, and says so."""
    torch.manual_seed(0)
    func = load_example("spiral_demo").ODEFunc().double()
    y0, t = torch.tensor([[2.0, 0.0]], dtype=F64), torch.tensor([0.0, 25.0], dtype=F64)
    with torch.no_grad():
        want = odeint(func, y0, t, method="rk4", n_steps=2000, coupling=0.9)[-1]  # 14.35, -17.05
        with pytest.warns(CouplingWarning, match=r"parasitic mode grew.*coupling such as 0\.9"):
            odeint_adjoint(func, y0, t, gradient="mali", coupling=0.9999)
        with warnings.catch_warnings():
            warnings.simplefilter("error", CouplingWarning)
            got = odeint_adjoint(func, y0, t)[-1]
            coupled = odeint_adjoint(func, y0, t, gradient="mali")[-1]
    assert (got - want).abs().max().item() < 1e-3
    assert (coupled - want).abs().max().item() < 1e-3


def test_odeint_adjoint_defaults_to_the_plain_step_with_checkpointing() -> None:
    torch.manual_seed(0)
    func = load_example("spiral_demo").ODEFunc().double()
    y0 = torch.tensor([[2.0, 0.0]], dtype=F64, requires_grad=True)
    t = torch.linspace(0.0, 5.0, 6, dtype=F64)

    def grads(call, **kw):
        ys = call(func, y0, t, **kw)
        return (ys, *torch.autograd.grad(ys.pow(2).sum(), [y0, *func.parameters()]))

    plain = {"method": "dopri5", "coupling": None, "rtol": 1e-7, "atol": 1e-9}
    want = grads(odeint, gradient="checkpoint", **plain)
    for got in (grads(odeint_adjoint), grads(odeint_adjoint, method="dopri5")):
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    backprop = grads(odeint_adjoint, gradient="backprop")  # the plain step too
    for a, b in zip(backprop, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    coupled = grads(odeint, method="dopri5", rtol=1e-7, atol=1e-9)  # the reversible coupling
    for call in ({"gradient": "mali"}, {"coupling": "auto"}):
        torch.testing.assert_close(grads(odeint_adjoint, **call)[0], coupled[0], rtol=0, atol=0)


def test_output_times_do_not_cost_steps_beyond_their_spacing() -> None:
    """A step cut short to land on t_i keeps its proposal: at tolerances where the natural steps
    are shorter than the output spacing, 2 and 81 output times take about the same steps."""
    a = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=F64)
    y0 = torch.tensor([[2.0, 0.0]], dtype=F64)
    accepted = {}
    for n in (2, 81):
        with torch.no_grad():
            _, stats = odeint(lambda t, y: (y**3) @ a, y0, torch.linspace(0, 25.0, n, dtype=F64),
                              method="tsit5", rtol=1e-9, atol=1e-11, stats=True)  # fmt: skip
        accepted[n] = stats.n_accepted.item()
    assert accepted[81] <= 1.1 * accepted[2], accepted


def test_spiral_demo_trains(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "spiral_demo.py"), "--niters", "30"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = float(proc.stdout.split("first loss ")[1].split()[0])
    last = float(proc.stdout.split("final loss ")[1].split()[0])
    assert last < first


def test_one_element_tensor_tolerances_and_step_sizes_are_taken_as_numbers() -> None:
    """torchdiffeq takes tensors there; one value is its number, several are refused by name."""
    y0, t = torch.tensor([1.0, 2.0], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)

    def decay(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -y

    rtol, atol = torch.tensor(1e-5), torch.tensor([1e-7])  # float32: not exactly 1e-5, 1e-7
    want = odeint(decay, y0, t, rtol=float(rtol), atol=float(atol))
    got = odeint(decay, y0, t, rtol=rtol, atol=atol)
    assert torch.equal(got, want)
    fixed = odeint(decay, y0, t, method="rk4", options={"step_size": torch.tensor(0.1)})
    assert torch.equal(fixed, odeint(decay, y0, t, method="rk4", options={"step_size": 0.1}))
    with pytest.raises(TypeError, match=r"atol must be one number for every component.*of 2"):
        odeint(decay, y0, t, atol=torch.tensor([1e-7, 1e-3]))
    with pytest.raises(TypeError, match=r"rtol must be one number for every component.*tuple"):
        odeint(lambda t, y: (-y[0], -y[1]), (y0, y0), t, rtol=(1e-5, 1e-3))
