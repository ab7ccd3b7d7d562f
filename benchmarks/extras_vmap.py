"""The per-sample-gradient rows of ``benchmarks/extras.py``: ``vmap(grad)`` through a MALI solve
against a Python loop of ``autograd.grad``, eagerly and compiled."""

from __future__ import annotations

import time
from typing import Any

import torch
from _common import CountingField, timed
from torch import Tensor, nn


def vmap_per_sample(quick: bool) -> dict[str, Any]:
    from torch.func import functional_call, grad, vmap

    import mali_func

    torch.set_num_threads(1)
    batch, steps = 64, 5 if quick else 20
    field = CountingField(64, 256)
    names = [name for name, _ in field.named_parameters()]
    params = tuple(p.detach() for p in field.parameters())
    torch.manual_seed(1)
    xs = torch.randn(batch, 64)
    t = torch.tensor([0.0, 1.0])

    def f(t_: Tensor, y: Tensor, *ps: Tensor) -> Tensor:
        return functional_call(field, dict(zip(names, ps)), (t_, y))

    def loss(ps: tuple[Tensor, ...], x: Tensor) -> Tensor:
        z = mali_func.odeint(f, x[None], t, n_steps=steps, args=ps)[-1]
        return z.pow(2).mean()

    per_sample = vmap(grad(loss), in_dims=(None, 0))
    leaves = tuple(p.clone().requires_grad_() for p in params)

    def loop() -> list[tuple[Tensor, ...]]:
        return [torch.autograd.grad(loss(leaves, x), leaves) for x in xs]

    batched = per_sample(params, xs)
    looped = loop()
    err = max(
        float((b - torch.stack([g[i] for g in looped])).abs().max() / b.abs().max())
        for i, b in enumerate(batched)
    )
    loop_s = min(timed(loop) for _ in range(3))
    vmap_s = min(timed(lambda: per_sample(params, xs)) for _ in range(3))
    return {
        "setting": f"batch {batch}, {steps} steps, MLP 64-256-64, float32",
        "baseline_s": loop_s,
        "candidate_s": vmap_s,
        "check": f"max difference {err:.1e} (relative to the largest entry)",
    }


def vmap_compiled(quick: bool) -> dict[str, Any]:
    """Per-sample gradients compiled (``torch.compile(vmap(grad(loss)), fullgraph=True)``,
    inductor) against the same ``vmap(grad)`` eagerly, and against a Python loop."""
    from torch.func import functional_call, grad, vmap

    import mali_func

    torch.set_num_threads(1)
    batch, steps = 64, 5 if quick else 20
    torch.manual_seed(1)
    field = nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 64))
    t = torch.tensor([0.0, 1.0])

    class Field(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = field

        def forward(self, t_: Tensor, y: Tensor) -> Tensor:
            return self.net(y)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.field = Field()

        def forward(self, x: Tensor) -> Tensor:
            return mali_func.odeint(self.field, x, t, n_steps=steps)[-1]

    model = Model()
    params = {k: v.detach() for k, v in model.named_parameters()}
    xs = torch.randn(batch, 64)

    def loss(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(model, p, (x,)).pow(2).mean()

    per_sample = vmap(grad(loss), in_dims=(None, 0))
    compiled = torch.compile(per_sample, fullgraph=True)
    start = time.perf_counter()
    got = compiled(params, xs)
    compile_s = time.perf_counter() - start
    ref = per_sample(params, xs)
    err = max(float((got[k] - ref[k]).abs().max() / ref[k].abs().max()) for k in ref)
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}

    def loop() -> list[tuple[Tensor, ...]]:
        return [torch.autograd.grad(loss(leaves, x), list(leaves.values())) for x in xs]

    eager_s = min(timed(lambda: per_sample(params, xs)) for _ in range(3))
    compiled_s = min(timed(lambda: compiled(params, xs)) for _ in range(5))
    loop_s = min(timed(loop) for _ in range(2))
    return {
        "setting": f"batch {batch}, {steps} steps, MLP 64-256-64, float32, inductor",
        "baseline_s": eager_s,
        "candidate_s": compiled_s,
        "check": (
            f"max difference {err:.1e} (relative); Python loop of autograd.grad {loop_s:.3g} s "
            f"({loop_s / compiled_s:.1f}x slower than compiled); first call {compile_s:.1f} s "
            "(the steps are unrolled under a compiled transform in torch 2.13: grows with them)"
        ),
    }
