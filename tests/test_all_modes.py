"""Every scheme through every mode, on fixed and adaptive grids, against eager backprop.

Schemes: ALF (eta 1 and 0.8), reversible Heun, the reversible coupling of Bogacki-Shampine 3(2)
with a fixed and with the automatic coupling (the Runge-Kutta couplings share one code path; the
smallest embedded pair keeps compiles short), and the user-defined additive coupling of
``examples/custom_scheme.py``; with ``gradient="checkpoint"``, the plain Bogacki-Shampine step and
ALF. Modes: eager MALI,
``vmap(grad)`` (per-sample gradients against a loop of eager backprop),
``torch.compile(fullgraph=True)`` with aot_eager and inductor, and the ONNX export of the forward
(onnxruntime against eager). Adaptive grids run for the schemes with an error estimate; the
additive coupling and reversible Heun have none and are refused there.
"""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch
from helpers import F64, assert_close_all, load_example
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from mali_func import ALF, CoupledRK, ReversibleHeun, ReversibleScheme, RungeKutta, odeint
from mali_func.export import to_onnx
from mali_func.schemes import TABLEAUS

pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def scheme_named(name: str) -> ReversibleScheme:
    if name == "coupling":
        return load_example("custom_scheme").AdditiveCoupling()
    if name == "bosh3":
        return CoupledRK(TABLEAUS["bosh3"], coupling=0.9)
    if name == "bosh3_plain":
        return RungeKutta(TABLEAUS["bosh3"])
    if name == "bosh3_auto":
        return CoupledRK(TABLEAUS["bosh3"], coupling="auto")
    if name == "reversible_heun":
        return ReversibleHeun()
    return ALF(1.0 if name == "alf" else 0.8)


class PairField(nn.Module):
    """``(a, b)' = (f(b) cos t, g(a))``: a partitioned field every scheme here can run."""

    def __init__(self, dim: int = 3, dtype: torch.dtype = F64) -> None:
        super().__init__()
        self.f = nn.Sequential(
            nn.Linear(dim, 16, dtype=dtype), nn.Tanh(), nn.Linear(16, dim, dtype=dtype)
        )
        self.g = nn.Sequential(
            nn.Linear(dim, 16, dtype=dtype), nn.Tanh(), nn.Linear(16, dim, dtype=dtype)
        )

    def forward(self, t: Tensor, y: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        return self.f(y[1]) * torch.cos(t), -self.g(y[0])


# Damped ALF amplifies round-off by 1/|1 - 2 eta| per reverse step: a loose tolerance keeps the
# adaptive solve short enough for its reconstruction to hold (tests/test_drift.py covers the rest).
GRIDS = {"fixed": {"n_steps": 12}, "adaptive": {"rtol": 1e-3, "atol": 1e-5}}
SCHEMES = ["alf", "alf_damped", "coupling", "reversible_heun", "bosh3", "bosh3_auto"]
EXPORTED = [*SCHEMES, "bosh3_plain"]
FIXED_ONLY = ("coupling", "reversible_heun")
# Compiles are the suite's cost, so each compiled path is checked once. Inductor: the coupled
# adaptive solve here (the largest MALI graph: two base steps, the controller, the reverse loop);
# ALF's fixed and adaptive solves under inductor are tests/test_compile.py's and
# tests/test_compile_adaptive.py's, and the main job's (tests/test_digits_example.py); the other
# schemes differ from these in traced Python, not in the kernels inductor makes, so aot_eager
# checks them. aot_eager: the fixed coupling ``lambda`` is tests/test_compile.py's option test (on
# a fixed grid) and this file's bosh3 adaptive inductor case; damped ALF on a fixed grid is the
# same option test.
SKIPPED = {("bosh3", "fixed", "aot_eager"), ("bosh3", "adaptive", "aot_eager"),
           ("alf_damped", "fixed", "aot_eager")}  # fmt: skip


def loss_of(field: nn.Module, scheme: str, grid: str, gradient: str, **options: object):
    method = scheme_named(scheme)  # outside: compiled code cannot import the example

    def loss(a0: Tensor, b0: Tensor, t: Tensor) -> Tensor:
        a, b = odeint(field, (a0, b0), t, scheme=method, gradient=gradient, **GRIDS[grid],
                      **options)  # type: ignore[arg-type]  # fmt: skip
        return a.pow(2).mean() + b[1:].sin().sum()

    return loss


def gradients(loss, field: nn.Module, a0: Tensor, b0: Tensor, t: Tensor) -> tuple[Tensor, ...]:
    a0, b0, t = (x.clone().requires_grad_() for x in (a0, b0, t))
    value = loss(a0, b0, t)
    return (value.detach(), *torch.autograd.grad(value, [a0, b0, t, *field.parameters()]))


def problem() -> tuple[PairField, Tensor, Tensor, Tensor]:
    torch.manual_seed(0)
    field = PairField()
    a0, b0 = torch.randn(4, 3, dtype=F64), torch.randn(4, 3, dtype=F64)
    return field, a0, b0, torch.tensor([0.0, 0.4, 1.0], dtype=F64)


def cases(*modes: str) -> list:
    out = []
    for scheme in SCHEMES:
        for grid in GRIDS:
            for mode in modes:
                if scheme in FIXED_ONLY and grid == "adaptive":
                    continue
                if (scheme, grid, mode) in SKIPPED or (
                    mode == "inductor" and (scheme, grid) != ("bosh3", "adaptive")
                ):
                    continue
                out.append(pytest.param(scheme, grid, mode, id=f"{scheme}-{grid}-{mode}"))
    return out


@pytest.mark.parametrize(("scheme", "grid", "mode"), cases("mali", "aot_eager", "inductor"))
def test_mode_equals_eager_backprop(scheme: str, grid: str, mode: str) -> None:
    field, a0, b0, t = problem()
    ref = gradients(loss_of(field, scheme, grid, "backprop"), field, a0, b0, t)
    # Inductor checks the numerics of the MALI pass; the fallback's torch.cond (which doubles a
    # fixed grid's compile time) is compiled here by aot_eager, by inductor in test_compile.
    options = {"fallback": False} if mode == "inductor" else {}
    loss = loss_of(field, scheme, grid, "mali", **options)
    if mode != "mali":
        loss = torch.compile(loss, backend=mode, fullgraph=True)
    rtol = 1e-9 if mode != "inductor" else 1e-7
    assert_close_all(gradients(loss, field, a0, b0, t), ref, rtol=rtol)


class PerSample(nn.Module):
    """One sample's loss, a module so that ``functional_call`` substitutes the field's weights."""

    def __init__(self, field: nn.Module, scheme: str, grid: str, gradient: str) -> None:
        super().__init__()
        self.field, self.loss = field, loss_of(field, scheme, grid, gradient)
        self.t = torch.tensor([0.0, 0.4, 1.0], dtype=F64)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return self.loss(a[None], b[None], self.t)


CHECKPOINTED = [
    pytest.param(scheme, grid, mode, id=f"{scheme}-{grid}-{mode}")
    for scheme in ("bosh3_plain", "alf")
    for grid in GRIDS
    for mode in ("eager", "aot_eager", "inductor", "vmap")
    if mode != "inductor" or (scheme, grid) == ("bosh3_plain", "fixed")
]


@pytest.mark.parametrize(("scheme", "grid", "mode"), CHECKPOINTED)
def test_checkpointed_gradients_in_every_mode_equal_eager_backprop(scheme, grid, mode) -> None:
    """gradient="checkpoint": the plain Bogacki-Shampine step (no inverse) and ALF."""
    field, a0, b0, t = problem()
    ref = gradients(loss_of(field, scheme, grid, "backprop"), field, a0, b0, t)
    if mode == "vmap":
        model = PerSample(field, scheme, grid, "checkpoint")
        params = {k: v.detach() for k, v in model.named_parameters()}

        def loss(p: dict[str, Tensor], a: Tensor, b: Tensor) -> Tensor:
            return functional_call(model, p, (a, b))

        batched = vmap(grad(loss), in_dims=(None, 0, 0))(params, a0, b0)
        reference = PerSample(field, scheme, grid, "backprop")
        for i in range(a0.shape[0]):
            want = torch.autograd.grad(reference(a0[i], b0[i]), list(field.parameters()))
            assert_close_all([batched[k][i] for k in params], want, rtol=1e-9)
        return
    loss = loss_of(field, scheme, grid, "checkpoint")
    if mode != "eager":
        loss = torch.compile(loss, backend=mode, fullgraph=True)
    rtol = 1e-9 if mode != "inductor" else 1e-7
    assert_close_all(gradients(loss, field, a0, b0, t), ref, rtol=rtol)


@pytest.mark.parametrize(("scheme", "grid", "mode"), cases("vmap"))
def test_vmap_grad_equals_a_loop_of_eager_backprop(scheme: str, grid: str, mode: str) -> None:
    field, a0, b0, _ = problem()
    model = PerSample(field, scheme, grid, "mali")
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p: dict[str, Tensor], a: Tensor, b: Tensor) -> Tensor:
        return functional_call(model, p, (a, b))

    batched = vmap(grad(loss), in_dims=(None, 0, 0))(params, a0, b0)
    reference = PerSample(field, scheme, grid, "backprop")
    for i in range(a0.shape[0]):
        ref = torch.autograd.grad(reference(a0[i], b0[i]), list(field.parameters()))
        assert_close_all([batched[k][i] for k in params], ref, rtol=1e-9)


class Solve(nn.Module):
    """``x -> (a, b)(t1)`` for ``x = cat(a0, b0)``: what export traces."""

    def __init__(self, scheme: str) -> None:
        super().__init__()
        self.field = PairField(dtype=torch.float32)
        self.scheme = scheme_named(scheme)
        self.register_buffer("t", torch.tensor([0.0, 0.4, 1.0]), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        gradient = "checkpoint" if isinstance(self.scheme, RungeKutta) else "mali"
        a, b = odeint(self.field, tuple(x.chunk(2, dim=-1)), self.t, n_steps=12,
                      scheme=self.scheme, gradient=gradient)  # fmt: skip
        return torch.cat([a, b], dim=-1)


@pytest.mark.parametrize("scheme", EXPORTED)
def test_onnx_export_of_the_forward_equals_eager(scheme: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = Solve(scheme).eval()
    x = torch.randn(5, 6)
    report = to_onnx(model, (x,), tmp_path / "solve.onnx")
    session = ort.InferenceSession(str(tmp_path / "solve.onnx"))
    with torch.no_grad():
        want = model(x)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert report.max_abs_error < 1e-4
    assert_close_all([torch.from_numpy(got)], [want], rtol=1e-5)


def test_a_scheme_without_an_error_estimate_is_refused_adaptively() -> None:
    field, a0, b0, t = problem()
    with pytest.raises(ValueError, match=r"AdditiveCoupling.*step_with_error"):
        odeint(field, (a0, b0), t, scheme=scheme_named("coupling"))
