"""Second derivatives through ``gradient="checkpoint"`` (its stored states stay functions of
``y0`` and the parameters), and fields whose evaluation changes module state (spectral
normalization, buffers updated in place): backprop's gradient, or a clear refusal."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from helpers import F64, REEVALUATING
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from mali_func import ODEBlock, odeint

T = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
W = torch.tensor([[0.3, -1.1], [0.8, 0.2]], dtype=F64)

SOLVES = {
    "rk4_plain_fixed": {"method": "rk4", "coupling": None, "n_steps": 4},
    "bosh3_plain_adaptive": {"method": "bosh3", "coupling": None, "rtol": 1e-6},
    "alf_fixed": {"method": "alf", "n_steps": 6},
    "rk4_coupled_fixed": {"method": "rk4", "coupling": 0.9, "n_steps": 5},
    "tsit5_coupled_adaptive": {"method": "tsit5", "rtol": 1e-6},
}


def field(t: Tensor, y: Tensor, w: Tensor) -> Tensor:
    return torch.tanh(y @ w) * torch.cos(t) - 0.2 * y


def loss_of(gradient: str, options: dict[str, object]) -> Callable[[Tensor, Tensor], Tensor]:
    def loss(y0: Tensor, w: Tensor) -> Tensor:
        ys = odeint(field, y0, T, args=(w,), gradient=gradient, **options)  # type: ignore[arg-type]
        return ys[1:].pow(3).sum()

    return loss


@pytest.mark.parametrize("solve", list(SOLVES))
def test_hessian_through_checkpointing_equals_backprop(solve: str) -> None:
    """``torch.func.hessian`` (forward over reverse) was 2x off on fixed grids (issue: the
    stored level-0 states lost their dependence on ``y0``)."""
    y0 = torch.tensor([0.7, -0.4], dtype=F64)
    got = torch.func.hessian(loss_of("checkpoint", SOLVES[solve]), argnums=(0, 1))(y0, W)
    want = torch.func.hessian(loss_of("backprop", SOLVES[solve]), argnums=(0, 1))(y0, W)
    for g_row, w_row in zip(got, want):
        for g, w in zip(g_row, w_row):
            torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("solve", ["rk4_plain_fixed", "alf_fixed", "bosh3_plain_adaptive"])
def test_reverse_over_reverse_and_vmapped_hvps_equal_backprop(solve: str) -> None:
    y0 = torch.tensor([0.7, -0.4], dtype=F64)
    results = []
    for gradient in ("checkpoint", "backprop"):
        loss = loss_of(gradient, SOLVES[solve])
        grad_y = torch.func.grad(loss)
        jj = torch.func.jacrev(torch.func.jacrev(loss))(y0, W)
        gg = torch.func.grad(lambda y, g=grad_y: g(y, W).pow(2).sum())(y0)
        hvp = torch.func.vmap(
            lambda v, g=grad_y: torch.func.jvp(lambda y: g(y, W), (y0,), (v,))[1]
        )(torch.eye(2, dtype=F64))
        results.append((jj, gg, hvp))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_func_grad_inside_an_ordinary_backward_equals_backprop() -> None:
    """A gradient penalty: ``torch.func.grad`` of the solve, then ``.backward()`` to ``w``."""
    y0 = torch.tensor([0.7, -0.4], dtype=F64)
    grads = []
    for gradient in ("checkpoint", "backprop"):
        w = W.clone().requires_grad_()
        loss = loss_of(gradient, SOLVES["rk4_plain_fixed"])
        torch.func.grad(loss)(y0, w).pow(2).sum().backward()
        grads.append(w.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


def test_checkpointed_second_derivative_matches_finite_differences() -> None:
    loss = loss_of("checkpoint", SOLVES["rk4_plain_fixed"])
    y0 = torch.tensor([0.7, -0.4], dtype=F64)
    hess = torch.func.hessian(loss)(y0, W)
    eps = 1e-5
    for i in range(2):
        e = torch.zeros(2, dtype=F64)
        e[i] = eps
        g_plus = torch.func.grad(loss)(y0 + e, W)
        g_minus = torch.func.grad(loss)(y0 - e, W)
        torch.testing.assert_close(hess[i], (g_plus - g_minus) / (2 * eps), rtol=1e-7, atol=1e-8)


# --- fields with state ------------------------------------------------------------------------


class Normalized(nn.Module):
    """A Lipschitz-constrained field: spectral normalization in training mode advances its power
    iteration at every evaluation of the weight."""

    def __init__(self, old_style: bool = False) -> None:
        super().__init__()
        lin = nn.Linear(3, 3, dtype=F64)
        self.lin = nn.utils.spectral_norm(lin) if old_style else spectral_norm(lin)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return torch.tanh(self.lin(y))


def _vectors(module: Normalized) -> list[Tensor]:
    if hasattr(module.lin, "weight_u"):
        return [module.lin.weight_u.clone(), module.lin.weight_v.clone()]
    p = module.lin.parametrizations.weight[0]
    return [p._u.clone(), p._v.clone()]


@pytest.mark.parametrize("old_style", [False, True])
@pytest.mark.parametrize(("gradient", "options"), REEVALUATING)
def test_spectral_norm_gets_backprops_gradient_and_buffers(
    gradient: str, options: dict[str, object], old_style: bool
) -> None:
    """One power iteration per solve (the first evaluation's), in every gradient mode: MALI was
    1e-3 off (or failed on the modified buffer), checkpointing 9%."""
    results = []
    for mode in (gradient, "backprop"):
        torch.manual_seed(0)
        module = Normalized(old_style)
        y0 = torch.randn(4, 3, dtype=F64, requires_grad=True)
        ys = odeint(module, y0, [0.0, 1.0], n_steps=10, gradient=mode, **options)  # type: ignore[arg-type]
        ys[-1].pow(2).sum().backward()
        grads = [y0.grad, *(p.grad for p in module.parameters())]
        results.append((ys.detach(), grads, _vectors(module)))
    (ys_a, g_a, v_a), (ys_b, g_b, v_b) = results
    torch.testing.assert_close(ys_a, ys_b, rtol=1e-12, atol=1e-14)
    for a, b in zip(g_a, g_b):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(v_a, v_b):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_spectral_norm_advances_once_per_solve_and_not_in_eval_mode() -> None:
    torch.manual_seed(0)
    module = Normalized()
    before = _vectors(module)
    odeint(module, torch.randn(2, 3, dtype=F64), [0.0, 1.0], n_steps=5)
    once = _vectors(module)
    torch.manual_seed(0)
    reference = Normalized()
    reference.lin.weight  # one access: one power iteration  # noqa: B018
    assert not torch.equal(before[0], once[0])
    torch.testing.assert_close(once, _vectors(reference), rtol=0, atol=0)
    module.eval()
    odeint(module, torch.randn(2, 3, dtype=F64), [0.0, 1.0], n_steps=5)
    torch.testing.assert_close(_vectors(module), once, rtol=0, atol=0)


def test_spectral_norm_in_an_ode_block_under_vmap_grad_equals_a_loop() -> None:
    torch.manual_seed(0)
    block = ODEBlock(Normalized(), n_steps=4)
    block.eval()  # per-sample: no buffer updates inside vmap
    x = torch.randn(3, 3, dtype=F64)

    def loss(xi: Tensor) -> Tensor:
        return block(xi.unsqueeze(0)).pow(2).sum()

    torch.testing.assert_close(
        torch.func.vmap(torch.func.grad(loss))(x),
        torch.stack([torch.func.grad(loss)(xi) for xi in x]),
        rtol=1e-10,
        atol=1e-12,
    )


class Counter(nn.Module):
    """A field that scales by a buffer it updates in place at every evaluation."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2, dtype=F64)
        self.register_buffer("scale", torch.ones((), dtype=F64))

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        self.scale.mul_(1.01)
        return self.lin(y) * self.scale


@pytest.mark.parametrize("gradient", ["mali", "checkpoint"])
def test_a_buffer_changed_in_place_is_refused_by_name(gradient: str) -> None:
    y0 = torch.randn(3, 2, dtype=F64, requires_grad=True)
    options = {"method": "rk4", "coupling": None} if gradient == "checkpoint" else {}
    with pytest.raises(TypeError, match=r"changes its buffer 'scale' in place"):
        odeint(Counter(), y0, [0.0, 1.0], n_steps=4, gradient=gradient, **options)  # type: ignore[arg-type]
    with torch.no_grad():  # no gradient asked for: nothing is replayed
        odeint(Counter(), y0, [0.0, 1.0], n_steps=4)
