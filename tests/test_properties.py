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


FIELD_KINDS = ["module", "module_buffer", "callable_args", "callable_capture", "module_attribute",
               "tuple_state"]  # fmt: skip
METHODS = [("alf", {"eta": 1.0}), ("alf", {"eta": 0.9}), ("rk4", {}), ("bosh3", {}),
           ("midpoint", {}), ("reversible_heun", {})]  # fmt: skip


def drawn_problem(kind: str, dim: int, seed: int):
    """``(func, y0, args, extra)``: a field of the drawn kind; ``extra`` are tensors whose
    gradient the user expects (a buffer's source, a captured tensor)."""
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(dim, dim, generator=gen, dtype=F64) / dim**0.5).requires_grad_()
    c = torch.randn(dim, generator=gen, dtype=F64).requires_grad_()
    y0 = torch.randn(3, dim, generator=gen, dtype=F64).requires_grad_()

    class Module(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(w.detach().clone())
            if kind == "module_buffer":
                self.register_buffer("c", 2 * c)
            elif kind == "module_attribute":
                self.c = 2 * c  # neither parameter nor buffer: must be refused under MALI

        def forward(self, t, y):
            z = y[0] if kind == "tuple_state" else y
            out = torch.tanh(z @ self.w.T) * torch.cos(t)
            if kind == "tuple_state":
                return out, -(out * z).sum(-1) - 0.1 * y[1]
            return out + self.c if kind in ("module_buffer", "module_attribute") else out

    if kind == "callable_args":
        return (lambda t, y, w_, c_: torch.tanh(y @ w_.T) + c_), y0, (w, c), ()
    if kind == "callable_capture":
        return (lambda t, y: torch.tanh(y @ w.T) + c), y0, (), (w, c)
    module = Module()
    if kind == "tuple_state":
        return module, (y0, y0[:, 0].detach().clone().requires_grad_()), (), ()
    return module, y0, (), ((c,) if kind != "module" else ())


@settings(max_examples=80, deadline=None)
@given(
    kind=st.sampled_from(FIELD_KINDS),
    method=st.sampled_from(METHODS),
    dim=st.integers(1, 3),
    n_steps=st.integers(1, 6),
    n_times=st.integers(2, 4),
    backwards=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_mali_equals_backprop_or_refuses_clearly(
    kind: str, method: tuple, dim: int, n_steps: int, n_times: int, backwards: bool, seed: int
) -> None:
    """Never a silent difference: the same gradients (float64, 1e-8) or a TypeError/ValueError."""
    name, options = method
    t = torch.linspace(0.0, 0.8, n_times, dtype=F64)
    t = (t.flip(0) if backwards else t).requires_grad_()
    results = []
    for gradient in ("mali", "backprop"):
        func, y0, args, extra = drawn_problem(kind, dim, seed)
        y0s = y0 if isinstance(y0, tuple) else (y0,)
        params = list(func.parameters()) if isinstance(func, nn.Module) else []
        inputs = [*y0s, t, *args, *extra, *params]
        try:
            ys = odeint(func, y0, t, n_steps=n_steps, method=name, args=args,
                        gradient=gradient, **options)  # fmt: skip
        except (TypeError, ValueError) as exc:
            assert gradient == "mali" and kind in ("callable_capture", "module_attribute"), exc
            return
        ys = torch.cat([y.flatten() for y in ys]) if isinstance(ys, tuple) else ys
        loss = (ys * 0.7).sin().sum()
        results.append(torch.autograd.grad(loss, inputs, allow_unused=True))
    assert kind not in ("callable_capture", "module_attribute"), "a capture was not refused"
    for a, b in zip(*results):
        if b is None:
            assert a is None or a.abs().max() == 0
            continue
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
