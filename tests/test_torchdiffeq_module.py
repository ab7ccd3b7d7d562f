"""``mali_func.torchdiffeq``: torchdiffeq's three names with torchdiffeq's defaults."""

from __future__ import annotations

import math

import torch
from helpers import F64

import mali_func
from mali_func import torchdiffeq as drop_in


def test_the_module_is_the_drop_in_with_torchdiffeqs_defaults() -> None:
    assert drop_in.odeint is mali_func.odeint_adjoint is drop_in.odeint_adjoint
    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    ys, stats = drop_in.odeint(lambda t, y: -y, y0, [0.0, 1.0], stats=True)
    torch.testing.assert_close(ys[-1], y0 * math.exp(-1), rtol=1e-7, atol=0)
    assert int(stats.n_accepted) > 5  # dopri5 at 1e-7, not ALF at 1e-3


def test_its_odeint_event_solves_with_those_defaults() -> None:
    def fall(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return torch.stack([s[1], torch.full_like(s[1], -9.8)])

    start = torch.tensor([1.0, 0.0], dtype=F64)
    t, ys = drop_in.odeint_event(fall, start, 0.0, event_fn=lambda t, s: s[0])
    assert abs(float(t) - math.sqrt(2 / 9.8)) < 1e-9
    assert ys.shape == (2, 2)
