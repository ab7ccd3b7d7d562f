"""Forward mode through the MALI solve: ``jvp``, ``jacfwd`` and ``hessian`` equal backprop's."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from helpers import F64, assert_close_all
from torch import Tensor
from torch.func import hessian, jacfwd, jacrev, jvp

from mali_func import odeint

CASES = [
    ("alf", {"n_steps": 7}),
    ("rk4", {"n_steps": 5}),
    ("reversible_heun", {"n_steps": 6}),
    ("tsit5", {"rtol": 1e-6, "atol": 1e-8}),
    ("alf", {"rtol": 1e-5, "atol": 1e-7}),
]
IDS = ["alf-fixed", "rk4-fixed", "reversible_heun-fixed", "tsit5-adaptive", "alf-adaptive"]


def field(t: Tensor, y: Tensor, w: Tensor) -> Tensor:
    return torch.tanh(y @ w.T) * torch.cos(t) - 0.3 * y


def problem() -> tuple[Tensor, Tensor, Tensor]:
    torch.manual_seed(0)
    w = torch.randn(3, 3, dtype=F64) * 0.5
    return torch.randn(2, 3, dtype=F64), w, torch.tensor([0.0, 0.5, 1.0], dtype=F64)


def solution(method: str, options: dict, gradient: str):
    def solve(y0: Tensor, w: Tensor, t: Tensor) -> Tensor:
        return odeint(field, y0, t, args=(w,), method=method, gradient=gradient, **options)

    return solve


@pytest.mark.parametrize(("method", "options"), CASES, ids=IDS)
def test_jvp_equals_the_backprop_jacobian_times_the_tangent(method: str, options: dict) -> None:
    primals = problem()
    tangents = tuple(torch.randn_like(x) for x in primals)
    got = jvp(solution(method, options, "mali"), primals, tangents)[1]
    # Reverse mode through the same steps (adaptive: the accepted steps are constants, as in the
    # backward), contracted with the tangents.
    jac = jacrev(solution(method, options, "backprop"), argnums=(0, 1, 2))(*primals)
    want = sum(torch.tensordot(j, d, dims=d.ndim) for j, d in zip(jac, tangents))
    assert_close_all([got], [want], rtol=1e-10)


@pytest.mark.parametrize(("method", "options"), CASES[:3], ids=IDS[:3])
def test_jvp_equals_forward_ad_through_backprop(method: str, options: dict) -> None:
    y0, w, t = problem()
    tangents = tuple(torch.randn_like(x) for x in (y0, w, t))
    with fwAD.dual_level():
        duals = [fwAD.make_dual(x, d) for x, d in zip((y0, w, t), tangents)]
        want = fwAD.unpack_dual(solution(method, options, "backprop")(*duals)).tangent
        got = fwAD.unpack_dual(solution(method, options, "mali")(*duals)).tangent
    assert_close_all([got], [want], rtol=1e-10)


@pytest.mark.parametrize(("method", "options"), CASES, ids=IDS)
def test_jacfwd_and_hessian_equal_backprop(method: str, options: dict) -> None:
    y0, w, t = problem()
    mali, backprop = solution(method, options, "mali"), solution(method, options, "backprop")
    got = jacfwd(mali, argnums=1)(y0, w, t)
    want = jacrev(backprop, argnums=1)(y0, w, t)
    assert_close_all([got], [want], rtol=1e-10)

    def loss(solve):
        return lambda w_: solve(y0, w_, t).pow(2).sum()

    assert_close_all([hessian(loss(mali))(w)], [jacrev(jacrev(loss(backprop)))(w)], rtol=1e-9)
