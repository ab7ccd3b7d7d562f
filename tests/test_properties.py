"""Property tests over random fields, dampings and step counts (hypothesis)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mali_func import ALF, odeint

F64 = torch.float64
etas = st.sampled_from([1.0, 0.98, 0.95, 0.9, 0.7, 0.2])
# Damping amplifies round-off in the reverse pass by 1/|1 - 2 eta| per step (up to 36 steps here).
gradient_etas = st.sampled_from([1.0, 0.98, 0.95, 0.9])


def make_field(kind: str, dim: int, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    if kind == "linear":
        layer = nn.Linear(dim, dim, bias=False, dtype=F64)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(dim, dim, generator=gen, dtype=F64) / dim**0.5)
        net: nn.Module = layer
    else:
        net = nn.Sequential(nn.Linear(dim, 8, dtype=F64), nn.Tanh(), nn.Linear(8, dim, dtype=F64))
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=F64) * 0.5)

    class Field(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, t, y):
            return self.net(y)

    return Field()


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(["linear", "mlp"]),
    dim=st.integers(1, 4),
    eta=etas,
    seed=st.integers(0, 2**16),
    h=st.floats(0.01, 0.5),
)
def test_inverse_recovers_the_state(kind: str, dim: int, eta: float, seed: int, h: float) -> None:
    net = make_field(kind, dim, seed)

    def field(t, y, params):
        return (net(t, y[0]),)

    gen = torch.Generator().manual_seed(seed + 1)
    state = tuple(torch.randn(3, dim, generator=gen, dtype=F64) for _ in range(2))
    t, step = torch.tensor(0.1, dtype=F64), torch.tensor(h, dtype=F64)
    scheme = ALF(eta)
    back = scheme.inverse(field, t, step, scheme.step(field, t, step, state, ()), ())
    for x, y in zip(back, state):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(
    kind=st.sampled_from(["linear", "mlp"]),
    dim=st.integers(1, 4),
    eta=gradient_etas,
    n_steps=st.integers(1, 12),
    n_times=st.integers(2, 4),
    seed=st.integers(0, 2**16),
)
def test_mali_equals_backprop(
    kind: str, dim: int, eta: float, n_steps: int, n_times: int, seed: int
) -> None:
    net = make_field(kind, dim, seed)
    gen = torch.Generator().manual_seed(seed + 2)
    y0 = torch.randn(2, dim, generator=gen, dtype=F64, requires_grad=True)
    t = torch.linspace(0.0, 1.0, n_times, dtype=F64).requires_grad_()
    results = []
    for gradient in ("mali", "backprop"):
        ys = odeint(net, y0, t, n_steps=n_steps, eta=eta, gradient=gradient)
        loss = (ys * torch.arange(1, n_times + 1, dtype=F64).view(-1, 1, 1)).sin().sum()
        results.append(torch.autograd.grad(loss, [y0, t, *net.parameters()]))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
