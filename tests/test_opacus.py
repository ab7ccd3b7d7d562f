"""Opacus computes the per-sample gradients of an ODEBlock as one unit (DPODEBlock), equal to
vmap(grad) and a Python loop, and its DP-SGD step clips and adds noise as configured."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from conftest import MLPField
from helpers import EXAMPLES, load_example
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, TensorDataset

from mali_func import DPODEBlock, ODEBlock, prepare_for_opacus

opacus = pytest.importorskip("opacus")

F64 = torch.float64
BATCH = 6


class Model(nn.Module):
    """Linear stem -> ODEBlock(MLP field with a parameter of its own) -> Linear head."""

    def __init__(self, gradient: str = "mali") -> None:
        super().__init__()
        self.stem = nn.Linear(4, 3, dtype=F64)
        self.ode = ODEBlock(MLPField(3, 8), n_steps=3, gradient=gradient)
        self.head = nn.Linear(3, 2, dtype=F64)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.ode(self.stem(x))))


def _data() -> tuple[Tensor, Tensor]:
    return torch.randn(BATCH, 4, dtype=F64), torch.randint(0, 2, (BATCH,))


def _private(
    model: nn.Module, x: Tensor, y: Tensor, *, mode: str, noise: float, clip: float, lr: float
) -> tuple[nn.Module, torch.optim.Optimizer]:
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)
    module, opt, _ = opacus.PrivacyEngine().make_private(
        module=prepare_for_opacus(model),
        optimizer=torch.optim.SGD(model.parameters(), lr=lr),
        data_loader=loader,
        noise_multiplier=noise,
        max_grad_norm=clip,
        poisson_sampling=False,
        grad_sample_mode=mode,
    )
    return module, opt


def _vmap_grads(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        return nn.functional.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)


def _loop_grads(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    names, params = zip(*model.named_parameters())
    rows = [
        torch.autograd.grad(nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params)
        for i in range(x.shape[0])
    ]
    return {name: torch.stack([row[j] for row in rows]) for j, name in enumerate(names)}


@pytest.mark.parametrize("mode", ["functorch", "hooks"])
@pytest.mark.parametrize("gradient", ["mali", "backprop"])
def test_opacus_per_sample_gradients_equal_vmap_grad_and_a_loop(mode: str, gradient: str) -> None:
    plain = Model(gradient)
    x, y = _data()
    by_vmap, by_loop = _vmap_grads(plain, x, y), _loop_grads(plain, x, y)
    model = Model(gradient)
    model.load_state_dict(plain.state_dict())
    module, _ = _private(model, x, y, mode=mode, noise=1.0, clip=1.0, lr=0.1)
    nn.functional.cross_entropy(module(x), y).backward()
    # One unit per module that owns parameters: stem, the whole block, head (2 hooks each).
    assert len(module.autograd_grad_sample_hooks) == 6
    assert isinstance(model.ode, DPODEBlock)
    for name, p in zip(by_vmap, model.parameters()):  # the same order, the block's as one
        assert isinstance(p.grad_sample, Tensor) and p.grad_sample.shape == (BATCH, *p.shape)
        torch.testing.assert_close(p.grad_sample, by_vmap[name], rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(p.grad_sample, by_loop[name], rtol=1e-10, atol=1e-13)
        assert p.grad_sample.abs().max() > 1e-6  # a real gradient, not zeros on both sides


def _flat_norms(grads: dict[str, Tensor]) -> Tensor:
    return torch.cat([g.flatten(1) for g in grads.values()], 1).norm(dim=1)


def test_dp_sgd_step_without_noise_is_sgd_on_clipped_per_sample_gradients() -> None:
    model, x, y = Model(), *_data()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    per_sample = _vmap_grads(model, x, y)
    norms = _flat_norms(per_sample)
    clip, lr = 0.9 * norms.median().item(), 0.3
    assert (norms > clip).any() and (norms < clip).any()  # some clipped, some not
    scale = (clip / norms).clamp(max=1.0)
    module, opt = _private(model, x, y, mode="functorch", noise=0.0, clip=clip, lr=lr)
    nn.functional.cross_entropy(module(x), y).backward()
    opt.step()
    for (name, g), p in zip(per_sample.items(), model.parameters()):
        expected = before[name] - lr * (scale.view(-1, *[1] * (g.dim() - 1)) * g).mean(0)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-9)


def test_dp_sgd_step_adds_gaussian_noise_of_the_configured_scale() -> None:
    model, x, y = Model(), *_data()
    clip, noise, lr = 0.1, 2.0, 1.0
    twin = Model()
    twin.load_state_dict(model.state_dict())
    quiet, quiet_opt = _private(twin, x, y, mode="functorch", noise=0.0, clip=clip, lr=lr)
    loud, loud_opt = _private(model, x, y, mode="functorch", noise=noise, clip=clip, lr=lr)
    for module, opt in ((quiet, quiet_opt), (loud, loud_opt)):
        nn.functional.cross_entropy(module(x), y).backward()
        opt.step()
    diff = torch.cat(
        [(a - b).detach().flatten() for a, b in zip(model.parameters(), twin.parameters())]
    )
    expected_std = lr * noise * clip / BATCH  # noise N(0, (noise * clip)^2) on the summed grads
    assert diff.numel() >= 80
    assert 0.7 * expected_std < diff.std().item() < 1.4 * expected_std
    assert abs(diff.mean().item()) < 0.5 * expected_std


def test_wrapper_keeps_parameters_state_dict_and_outputs() -> None:
    model = Model()
    params = list(model.parameters())
    keys = list(model.state_dict())
    x = torch.randn(5, 4, dtype=F64)
    ref = model(x)
    prepare_for_opacus(model)
    assert all(a is b for a, b in zip(params, model.parameters()))
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(x), ref, rtol=0, atol=0)
    restored = Model()
    restored.load_state_dict(model.state_dict())
    torch.testing.assert_close(restored(x), ref, rtol=0, atol=0)
    model.load_state_dict(Model().state_dict())  # the wrapper loads plain keys, strict
    assert model.ode.block.field.l1.weight is model.ode.field__l1__weight
    model.float()
    assert model.ode.block.field.l1.weight is model.ode.field__l1__weight
    assert model.ode(x[:, :3].float()).dtype == torch.float32


def test_field_with_batch_norm_is_refused_by_name() -> None:
    field = nn.Sequential(nn.Linear(3, 3, dtype=F64), nn.BatchNorm1d(3, dtype=F64))
    block = ODEBlock(AutonomousField(field), n_steps=2)
    with pytest.raises(ValueError, match=r"field\.net\.1 \(BatchNorm1d\)"):
        DPODEBlock(block)


def test_block_with_output_times_is_refused() -> None:
    with pytest.raises(ValueError, match="t_eval"):
        DPODEBlock(ODEBlock(MLPField(), t_eval=[0.5, 1.0], n_steps=2))


def test_importing_mali_func_does_not_import_opacus() -> None:
    code = "import sys, mali_func, mali_func.interop._privacy; print('opacus' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("engine", ["opacus", "vmap"])
def test_private_digits_example_learns_within_its_privacy_budget(
    engine: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("sklearn")
    monkeypatch.syspath_prepend(str(EXAMPLES))
    example = load_example("private_digits")
    monkeypatch.setattr(
        sys, "argv", ["private_digits.py", "--engine", engine, "--epochs", "3", "--n-steps", "2"]
    )
    threads = torch.get_num_threads()
    try:
        example.main()
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    epsilon = float(re.search(r"epsilon spent\s+\| ([0-9.]+)", out).group(1))
    acc = float(re.search(r"\| test accuracy\s+\| ([0-9.]+)", out).group(1))
    assert 7.5 < epsilon <= 8.05  # the accountant's epsilon, near the target, not above it
    assert acc > 0.3  # chance is 0.1; three noisy epochs (0.45 and 0.59 seen)


class AutonomousField(nn.Module):
    """``f(t, y) = net(y)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self.net(y)


class Shared(nn.Module):
    """One ODEBlock used twice, as a reused Linear would be."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 3, dtype=F64)
        self.ode = ODEBlock(MLPField(3, 8), n_steps=3)
        self.body = nn.Sequential(self.ode, nn.Tanh(), self.ode)
        self.head = nn.Linear(3, 2, dtype=F64)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(self.stem(x)))


def test_a_block_used_twice_is_refused_clearly() -> None:
    """Two wrappers sharing the parameters gave per-sample gradients 48% off, silently."""
    with pytest.raises(ValueError, match="one ODEBlock is used in several places"):
        prepare_for_opacus(Shared())


def test_a_parameter_replaced_after_wrapping_is_refused_and_times_follow() -> None:
    block = ODEBlock(MLPField(3, 8), n_steps=3)
    wrapped = prepare_for_opacus(block)
    x = torch.randn(2, 3, dtype=F64)
    block.t1 = 2.0  # the wrapper runs the block: a new grid is followed
    torch.testing.assert_close(wrapped(x), block(x))
    block.field.l1.weight = nn.Parameter(torch.zeros_like(block.field.l1.weight))
    with pytest.raises(ValueError, match=r"parameter 'field.l1.weight' was replaced"):
        wrapped(x)
