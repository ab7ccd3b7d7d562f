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


# The kinds of field a user writes. Each is either differentiated exactly by MALI or refused.
FIELD_KINDS = [
    "module",  # an MLP nn.Module: parameters only
    "module_buffer",  # ... reading a buffer computed from a tensor that requires grad
    "module_attribute",  # ... reading a plain attribute that requires grad: refused under MALI
    "callable_args",  # a plain callable given its tensors through args
    "callable_capture",  # ... capturing a tensor that requires grad: refused under MALI
    "callable_late_capture",  # ... reading the capture only away from t0: refused when read
    "tuple_state",  # an nn.Module on a (z, logp) state
    "callable_tuple_state",  # a plain callable with args on a (z, logp) state
]
REFUSED = ("module_attribute", "callable_capture", "callable_late_capture")
METHODS = [("alf", {"eta": 1.0}), ("alf", {"eta": 0.8}), ("rk4", {}), ("bosh3", {}),
           ("midpoint", {}), ("reversible_heun", {})]  # fmt: skip


def drawn_problem(kind: str, dim: int, seed: int, t0: float, t1: float):
    """``(func, y0, args, extra)`` for a field of the drawn kind, built afresh from ``seed``;
    ``extra`` are tensors whose gradient the user expects although they are not passed to
    ``odeint`` (the source of a buffer, a captured tensor)."""
    gen = torch.Generator().manual_seed(seed)
    hidden = 5
    w1 = (torch.randn(hidden, dim, generator=gen, dtype=F64) / dim**0.5).requires_grad_()
    w2 = (torch.randn(dim, hidden, generator=gen, dtype=F64) / hidden**0.5).requires_grad_()
    c = torch.randn(dim, generator=gen, dtype=F64).requires_grad_()
    y0 = torch.randn(3, dim, generator=gen, dtype=F64).requires_grad_()
    logp0 = torch.randn(3, generator=gen, dtype=F64).requires_grad_()

    def mlp(t, z, w1_, w2_):
        return torch.tanh(z @ w1_.T) @ w2_.T * torch.cos(t)

    class Module(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w1 = nn.Parameter(w1.detach().clone())
            self.w2 = nn.Parameter(w2.detach().clone())
            if kind == "module_buffer":
                self.register_buffer("c", 2 * c)
            elif kind == "module_attribute":
                self.c = 2 * c

        def forward(self, t, y):
            z = y[0] if kind == "tuple_state" else y
            out = mlp(t, z, self.w1, self.w2)
            if kind == "tuple_state":
                return out, -(out * z).sum(-1) - 0.1 * y[1]
            return out + self.c if kind in ("module_buffer", "module_attribute") else out

    # A point strictly inside (t0, t1) that t0 does not pass: the late capture is read there.
    mid = t0 + 0.6 * (t1 - t0)

    def late(t, y):
        past = float(t.detach()) > mid if t1 > t0 else float(t.detach()) < mid
        return mlp(t, y, w1.detach(), w2.detach()) + (c if past else 0.0)

    def tuple_field(t, y, w1_, w2_):
        out = mlp(t, y[0], w1_, w2_)
        return out, -(out * y[0]).sum(-1) - 0.1 * y[1]

    problems = {
        "callable_args": (lambda t, y, a, b, c_: mlp(t, y, a, b) + c_, y0, (w1, w2, c), ()),
        "callable_capture": (lambda t, y: mlp(t, y, w1, w2) + c, y0, (), (w1, w2, c)),
        "callable_late_capture": (late, y0, (), (c,)),
        "callable_tuple_state": (tuple_field, (y0, logp0), (w1, w2), ()),
    }
    if kind in problems:
        return problems[kind]
    module = Module()
    if kind == "tuple_state":
        return module, (y0, logp0), (), ()
    return module, y0, (), ((c,) if kind != "module" else ())


@settings(max_examples=300, deadline=None)
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
    """Never a silent difference: in float64 the gradients of ``y0``, the parameters, ``args``,
    the times and the tensors behind buffers agree with backprop's to 1e-8 (relative to each
    gradient's largest entry), or MALI raises a TypeError/ValueError, only for the kinds that
    read a tensor it cannot differentiate. A late capture that no evaluation reaches (a single
    step may skip it) is not an error: nothing is lost, and the comparison covers it."""
    name, options = method
    t0, t1 = (0.8, 0.0) if backwards else (0.0, 0.8)
    t = torch.linspace(t0, t1, n_times, dtype=F64).requires_grad_()
    results = []
    for gradient in ("mali", "backprop"):
        func, y0, args, extra = drawn_problem(kind, dim, seed, t0, t1)
        y0s = y0 if isinstance(y0, tuple) else (y0,)
        params = list(func.parameters()) if isinstance(func, nn.Module) else []
        inputs = [*y0s, t, *args, *extra, *params]
        try:
            ys = odeint(func, y0, t, n_steps=n_steps, method=name, args=args,
                        gradient=gradient, **options)  # fmt: skip
        except (TypeError, ValueError) as exc:
            assert gradient == "mali" and kind in REFUSED, f"{kind} refused: {exc}"
            assert "requires grad" in str(exc), exc
            return
        ys = torch.cat([y.flatten() for y in ys]) if isinstance(ys, tuple) else ys
        loss = (ys * 0.7).sin().sum()
        results.append(torch.autograd.grad(loss, inputs, allow_unused=True))
    assert kind in ("callable_late_capture", *set(FIELD_KINDS) - set(REFUSED)), (
        f"{kind}: a tensor MALI cannot differentiate was not refused"
    )
    for i, (a, b) in enumerate(zip(*results)):
        if b is None or not b.any():
            assert a is None or not a.any(), f"input {i}: MALI {a}, backprop {b}"
            continue
        assert a is not None, f"input {i}: MALI lost the gradient"
        err = ((a - b).abs().max() / b.abs().max()).item()
        assert err < 1e-8, f"input {i}: relative error {err:.2e}"


HOSTILE_FIELDS = {
    # name: (field(t, y, k), contraction scale drawn by hypothesis)
    "stiff": lambda t, y, k: -k * y,
    "two_rate": lambda t, y, k: y * torch.stack([-torch.ones_like(k), -k])[: y.shape[-1]],
    "growing": lambda t, y, k: 0.1 * k * y,
    "cubic": lambda t, y, k: -(k * 0.1) * y**3 + torch.roll(y, 1, -1),
}
HOSTILE_METHODS = [
    ("alf", {"n_steps": 40}),
    ("alf", {"n_steps": 40, "eta": 0.8}),
    ("rk4", {"n_steps": 30}),
    ("tsit5", {"rtol": 1e-6, "atol": 1e-9}),
    ("dopri5", {}),
]


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(sorted(HOSTILE_FIELDS)),
    method=st.sampled_from(HOSTILE_METHODS),
    rate=st.floats(1.0, 60.0),
    t1=st.floats(0.2, 3.0),
    seed=st.integers(0, 2**16),
)
def test_mali_on_fields_that_defeat_reconstruction_equals_backprop_or_raises(
    kind: str, method: tuple, rate: float, t1: float, seed: int
) -> None:
    """Stiff, two-rate, growing and state-dependent fields: the verified MALI gradient (falling
    back to checkpointing where the reconstruction fails) equals backprop's through the same
    steps wherever backprop's is finite, or the solve raises; never NaN, never a silent
    difference."""
    import warnings

    name, options = method
    torch.manual_seed(seed)
    y0 = torch.randn(2, dtype=F64).abs() + 0.5
    results = []
    for gradient in ("mali", "backprop"):
        k = torch.tensor(rate, dtype=F64, requires_grad=True)
        x = y0.clone().requires_grad_()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # fallback and parasitic-mode warnings
                ys = odeint(HOSTILE_FIELDS[kind], x, [0.0, t1], method=name, args=(k,),
                            gradient=gradient, **options)  # fmt: skip
                results.append(torch.autograd.grad(ys[-1].sum(), (x, k)))
        except RuntimeError as exc:  # an adaptive solve that cannot finish says why
            assert "adaptive solve failed" in str(exc), exc
            return
    for a, b in zip(*results):
        if not torch.isfinite(b).all():
            continue
        assert torch.isfinite(a).all(), f"MALI NaN where backprop is {b}"
        err = ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()
        assert err < 1e-6, f"relative error {err:.2e}"
