"""Step-size controllers behind the ``Controller`` protocol: the default, a configured one and
controllers of the user's own, in every mode an adaptive solve runs in."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from helpers import F64, SmoothField, assert_close_all
from torch import Tensor

from mali_func import Controller, IntegralController, ODEBlock, odeint


@dataclass(frozen=True)
class FixedRatio:
    """Accepts every trial and proposes ``h`` again: the steps are the first step's size."""

    def init(self, h0: Tensor) -> tuple[Tensor, ...]:
        return ()

    def propose(
        self, memory: tuple[Tensor, ...], err: Tensor, h: Tensor, order: int
    ) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        return torch.ones_like(err, dtype=torch.bool), h, memory


@dataclass(frozen=True)
class PIController:
    """Proportional-integral control (Gustafsson 1991): remembers the last accepted error."""

    beta1: float = 0.7
    beta2: float = 0.4

    def init(self, h0: Tensor) -> tuple[Tensor, ...]:
        return (torch.ones_like(h0),)

    def propose(
        self, memory: tuple[Tensor, ...], err: Tensor, h: Tensor, order: int
    ) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        accept = err <= 1
        err = err.clamp_min(1e-10)
        k = order + 1
        factor = 0.9 * err.pow(-self.beta1 / k) * memory[0].pow(self.beta2 / k)
        factor = torch.where(torch.isfinite(factor), factor.clamp(0.2, 5.0), 0.2)
        return accept, h * factor, (torch.where(accept, err, memory[0]),)


def solve(field, y0, controller, **options):
    options = {"rtol": 1e-6, "atol": 1e-8, "method": "tsit5", **options}
    return odeint(field, y0, [0.0, 0.5, 1.0], controller=controller, stats=True, **options)


def test_the_default_controller_is_the_integral_controller() -> None:
    field, y0 = SmoothField(dtype=F64), torch.randn(4, 2, dtype=F64)
    ys, stats = solve(field, y0, None)
    ys2, stats2 = solve(field, y0, IntegralController())
    assert torch.equal(ys, ys2)
    assert [s.item() for s in stats] == [s.item() for s in stats2]
    assert isinstance(IntegralController(), Controller)


def test_a_controller_of_ones_own_chooses_the_steps() -> None:
    field, y0 = SmoothField(dtype=F64), torch.randn(4, 2, dtype=F64)
    _, stats = solve(field, y0, FixedRatio(), first_step=0.05)
    assert stats.n_accepted.item() == 20 and stats.n_rejected.item() == 0
    _, default = solve(field, y0, None, first_step=0.05)
    assert default.n_accepted.item() != 20


def test_a_tighter_safety_factor_takes_more_steps() -> None:
    field, y0 = SmoothField(dtype=F64), torch.randn(4, 2, dtype=F64)
    _, loose = solve(field, y0, IntegralController(safety=0.95))
    _, tight = solve(field, y0, IntegralController(safety=0.5, max_factor=2.0))
    assert tight.n_accepted.item() > loose.n_accepted.item()


@pytest.mark.parametrize("method", ["alf", "tsit5"])
def test_mali_gradient_equals_backprop_under_a_pi_controller(method: str) -> None:
    field, y0 = SmoothField(dtype=F64), torch.randn(4, 2, dtype=F64)
    params = list(field.parameters())

    def grads(gradient: str) -> list[Tensor]:
        x = y0.clone().requires_grad_()
        ys, stats = solve(field, x, PIController(), method=method, gradient=gradient)
        assert stats.n_accepted.item() > 5
        return [ys.detach(), *torch.autograd.grad(ys.pow(2).sum(), [x, *params])]

    assert_close_all(grads("mali"), grads("backprop"), rtol=1e-9)


def test_vmap_grad_under_a_pi_controller_equals_a_loop() -> None:
    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.field = SmoothField(dtype=F64)

        def forward(self, x: Tensor) -> Tensor:
            return solve(self.field, x, PIController())[0][-1].pow(2).sum()

    model = Model()
    params = {k: v.detach() for k, v in model.named_parameters()}
    xs = torch.randn(3, 2, dtype=F64) * torch.tensor([[0.1], [1.0], [4.0]], dtype=F64)

    def loss(p, x):
        return torch.func.functional_call(model, p, (x,))

    batched = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, xs)
    for i in range(3):
        single = torch.func.grad(loss)(params, xs[i])
        assert_close_all([batched[k][i] for k in params], list(single.values()), rtol=1e-9)


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("controller", [FixedRatio(), PIController()], ids=["fixed", "pi"])
def test_compiled_solve_under_a_controller_equals_eager(controller) -> None:
    field, y0 = SmoothField(dtype=F64), torch.randn(4, 2, dtype=F64)
    params = list(field.parameters())

    def run(fn):
        x = y0.clone().requires_grad_()
        ys, stats = fn(x)
        return [ys.detach(), *torch.autograd.grad(ys.pow(2).sum(), [x, *params])], stats

    def fn(
        x,
    ):  # bosh3: the controller is the same for every scheme; the smallest pair compiles fastest
        return solve(field, x, controller, first_step=0.05, method="bosh3")

    want, want_stats = run(fn)
    got, got_stats = run(torch.compile(fn, backend="aot_eager", fullgraph=True))
    assert_close_all(got, want, rtol=1e-10)
    counts = ("n_f_evals", "n_accepted", "n_rejected", "failed", "fallback")
    assert [getattr(got_stats, k).item() for k in counts] == [
        getattr(want_stats, k).item() for k in counts
    ]
    assert got_stats.parasitic.item() == pytest.approx(want_stats.parasitic.item(), rel=1e-9)


def test_odeblock_passes_its_controller() -> None:
    field, x = SmoothField(dtype=F64), torch.randn(4, 2, dtype=F64)
    block = ODEBlock(field, method="tsit5", rtol=1e-6, controller=FixedRatio(), first_step=0.1)
    want = odeint(field, x, [0.0, 1.0], method="tsit5", n_steps=10)[-1]
    assert_close_all([block(x)], [want], rtol=1e-12)


def test_bad_controllers_are_refused_naming_the_argument() -> None:
    field, y0 = SmoothField(dtype=F64), torch.randn(4, 2, dtype=F64)
    with pytest.raises(ValueError, match="controller apply to adaptive solves only"):
        odeint(field, y0, [0.0, 1.0], n_steps=4, controller=IntegralController())
    for bad in (object(), IntegralController, "pid"):
        with pytest.raises(TypeError, match="controller must be an object with methods init"):
            odeint(field, y0, [0.0, 1.0], controller=bad)
    with pytest.raises(ValueError, match="controller apply to adaptive solves only"):
        ODEBlock(field, n_steps=4, controller=IntegralController())
    with pytest.raises(ValueError, match="safety must lie in"):
        IntegralController(safety=1.5)
    with pytest.raises(ValueError, match="min_factor and max_factor"):
        IntegralController(min_factor=0.5, max_factor=0.9)
    with pytest.raises(TypeError, match="max_factor must be a real number"):
        IntegralController(max_factor="10")


def test_an_exported_block_runs_its_controller_in_onnxruntime(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from mali_func.export import to_onnx

    torch.manual_seed(0)
    block = ODEBlock(SmoothField(), method="tsit5", rtol=1e-4, controller=PIController()).eval()
    x = torch.randn(5, 2)
    report = to_onnx(block, (x,), tmp_path / "pi.onnx")
    session = ort.InferenceSession(str(report.path))
    for batch in (1, 7):
        xb = torch.randn(batch, 2)
        (got,) = session.run(None, {session.get_inputs()[0].name: xb.numpy()})
        with torch.no_grad():
            want = block(xb)
        assert_close_all([torch.from_numpy(got)], [want], rtol=1e-5)


def test_torchdiffeqs_controller_options_build_the_integral_controller() -> None:
    field, y0 = SmoothField(dtype=F64), torch.randn(4, 2, dtype=F64)
    options = {"safety": 0.5, "dfactor": 0.1, "ifactor": 2.0}
    ys, stats = odeint(field, y0, [0.0, 1.0], rtol=1e-6, options=options, stats=True)
    controller = IntegralController(safety=0.5, min_factor=0.1, max_factor=2.0)
    ys2, stats2 = odeint(field, y0, [0.0, 1.0], rtol=1e-6, controller=controller, stats=True)
    assert torch.equal(ys, ys2)
    assert [s.item() for s in stats] == [s.item() for s in stats2]
    _, default = odeint(field, y0, [0.0, 1.0], rtol=1e-6, stats=True)
    assert default.n_accepted.item() != stats.n_accepted.item()


def test_bad_torchdiffeq_controller_options_are_named() -> None:
    field, y0 = SmoothField(dtype=F64), torch.randn(4, 2, dtype=F64)
    with pytest.raises(ValueError, match=r"options \{'dfactor': 2.0\}: min_factor and max_factor"):
        odeint(field, y0, [0.0, 1.0], options={"dfactor": 2.0})
    with pytest.raises(ValueError, match=r"give options\['safety'\] or controller=, not both"):
        odeint(field, y0, [0.0, 1.0], options={"safety": 0.8}, controller=IntegralController())
