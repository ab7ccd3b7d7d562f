"""Property tests for the hostile probe's families: blocks used several times, tensor subclasses,
misbehaving controllers, captures at higher order. Each draw is either the backprop result
(float64, 1e-8) or a clear refusal; never a silent difference."""

from __future__ import annotations

import pytest
import torch
from helpers import F64
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from mali_func import ODEBlock, odeint

SOLVES = [
    {"n_steps": 3},
    {"n_steps": 4, "method": "rk4"},
    {"n_steps": 2, "method": "rk4", "gradient": "checkpoint"},
    {"method": "tsit5", "rtol": 1e-7, "atol": 1e-9},
]


class _Field(nn.Module):
    def __init__(self, dim: int, gen: torch.Generator) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(dim, dim, generator=gen, dtype=F64) / dim)
        self.b = nn.Parameter(torch.randn(dim, generator=gen, dtype=F64) / 4)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return torch.tanh(y @ self.w.T + self.b) - 0.3 * y


def _relative(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


@settings(max_examples=40, deadline=None)
@given(
    uses=st.integers(1, 3),
    solve=st.sampled_from(range(len(SOLVES))),
    between=st.sampled_from(["tanh", "linear", "none"]),
    dim=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_a_block_used_several_times_gets_backprops_gradient(
    uses: int, solve: int, between: str, dim: int, seed: int
) -> None:
    """One ``ODEBlock`` (one set of parameters) applied ``uses`` times in a model."""
    grads = []
    for gradient in ("model", "backprop"):
        gen = torch.Generator().manual_seed(seed)
        options = dict(SOLVES[solve])
        if gradient == "backprop":
            options["gradient"] = "backprop"
        block = ODEBlock(_Field(dim, gen), **options)
        mid = nn.Linear(dim, dim).double() if between == "linear" else None
        if mid is not None:
            with torch.no_grad():
                mid.weight.copy_(torch.randn(dim, dim, generator=gen, dtype=F64) / dim)
                mid.bias.zero_()
        x = torch.randn(4, dim, generator=gen, dtype=F64, requires_grad=True)
        y = x
        for _ in range(uses):
            y = block(y)
            y = torch.tanh(y) if between == "tanh" else mid(y) if mid is not None else y
        params = [*block.parameters(), *(mid.parameters() if mid is not None else ())]
        grads.append(torch.autograd.grad((y * 0.7).sin().sum(), [x, *params]))
    for a, b in zip(*grads):
        assert _relative(a, b) < 1e-8


class _Marked(torch.Tensor):
    """A user's tensor subclass."""


@settings(max_examples=40, deadline=None)
@given(
    order=st.permutations([0.0, 0.4, 1.0]),
    wrap=st.sampled_from(["t", "y0", "both"]),
    solve=st.sampled_from(range(len(SOLVES))),
    seed=st.integers(0, 2**16),
)
def test_tensor_subclasses_behave_as_plain_tensors(
    order: list[float], wrap: str, solve: int, seed: int
) -> None:
    """The same result, the same gradient or the same error as with plain tensors."""
    gen = torch.Generator().manual_seed(seed)
    field = _Field(2, gen)
    y_plain = torch.randn(3, 2, generator=gen, dtype=F64)
    t_plain = torch.tensor(order, dtype=F64)
    outcomes = []
    for subclass in (False, True):
        y0 = y_plain.clone().requires_grad_()
        t = t_plain.clone()
        if subclass and wrap in ("y0", "both"):
            y0 = y_plain.clone().as_subclass(_Marked).requires_grad_()
        if subclass and wrap in ("t", "both"):
            t = t.as_subclass(_Marked)
        try:
            ys = odeint(field, y0, t, **SOLVES[solve])
        except (ValueError, TypeError, RuntimeError) as exc:
            outcomes.append((type(exc), str(exc)))
            continue
        (g,) = torch.autograd.grad(ys.sum(), y0)
        outcomes.append((ys.as_subclass(Tensor).detach(), g.as_subclass(Tensor)))
    plain, marked = outcomes
    if isinstance(plain[0], type):
        assert marked == plain
    else:
        assert not isinstance(marked[0], type), f"subclass raised {marked}"
        torch.testing.assert_close(marked[0], plain[0], rtol=0, atol=0)
        torch.testing.assert_close(marked[1], plain[1], rtol=0, atol=0)


class _Controller:
    """A controller whose proposal goes wrong at step ``when`` in the way ``kind`` says."""

    def __init__(self, kind: str, when: int) -> None:
        self.kind, self.when = kind, when

    def init(self, h0: Tensor) -> tuple[Tensor, ...]:
        return (torch.zeros((), dtype=torch.int64),)

    def propose(self, memory: tuple, err: Tensor, h: Tensor, order: int) -> tuple:
        (count,) = memory
        accept = err <= 1
        good = h * 0.9 / err.clamp_min(1e-3) ** (1 / (order + 1))
        bad = {
            "nan": h * float("nan"),
            "zero": h * 0,
            "negative": -h,
            "inf": h / 0,
        }[self.kind]
        h_next = torch.where(count >= self.when, bad, good.clamp(max=4 * h))
        return accept, h_next, (count + 1,)


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from(["nan", "zero", "negative", "inf"]),
    when=st.integers(0, 6),
    method=st.sampled_from(["tsit5", "dopri5", "bosh3"]),
)
def test_a_controller_going_wrong_at_any_step_is_named(kind: str, when: int, method: str) -> None:
    with pytest.raises(RuntimeError, match="controller _Controller proposed a step size that is"):
        odeint(lambda t, y: -y, torch.ones(2, dtype=F64), [0.0, 3.0], method=method,
               rtol=1e-8, atol=1e-10, controller=_Controller(kind, when))  # fmt: skip


@settings(max_examples=20, deadline=None)
@given(
    gradient=st.sampled_from(["mali", "checkpoint", "backprop"]),
    levels=st.integers(1, 2),
    adaptive=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_a_capture_is_refused_at_every_transform_order(
    gradient: str, levels: int, adaptive: bool, seed: int
) -> None:
    """A tensor the field closes over, made by ``levels`` nested ``torch.func.grad`` calls
    around the solve, is refused naming it, never silently treated as a constant."""
    gen = torch.Generator().manual_seed(seed)
    w0 = torch.randn(2, 2, generator=gen, dtype=F64)
    y0 = torch.randn(3, 2, generator=gen, dtype=F64)
    options = {"method": "tsit5", "rtol": 1e-6} if adaptive else {"n_steps": 3}

    def solve_with(w: Tensor) -> Tensor:
        def inner(y: Tensor) -> Tensor:
            f = lambda t, x: torch.tanh(x @ w)  # noqa: E731
            return odeint(f, y, [0.0, 1.0], gradient=gradient, **options)[-1].sum()

        return torch.func.grad(inner)(y0).pow(2).sum()

    fn = solve_with
    for _ in range(levels - 1):
        fn = (lambda g: lambda w: torch.func.grad(g)(w).sum())(fn)
    with pytest.raises(TypeError, match=r"captured: 'w'"):
        torch.func.grad(fn)(w0)
