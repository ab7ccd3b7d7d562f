"""Pieces of the continuous normalizing flow example: data, the CNF field, trace estimators,
log-likelihood, the saved-tensor memory count and the density plot.

Kept apart from ``continuous_flow.py`` so that the example reads as the experiment. The CNF
follows Grathwohl et al., "FFJORD" (ICLR 2019): the state is ``(z, logp)`` with ``dz/dt = f(z, t)``
and ``dlogp/dt = -tr(df/dz)``, the trace exact for 2-D data and Hutchinson's estimate
``e^T (df/dz) e`` (Rademacher ``e``, fixed during one solve) for the 64-D digits.
"""

from __future__ import annotations

import itertools
import math
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

Solve = Callable[..., tuple[Tensor, Tensor]]


# ---------------------------------------------------------------------------------------- data
def two_moons(n: int, generator: torch.Generator) -> Tensor:
    """Two interleaved half circles with Gaussian noise 0.1, centred and scaled: ``(n, 2)``."""
    angle = math.pi * torch.rand(n, generator=generator)
    upper = torch.rand(n, generator=generator) < 0.5
    x = torch.where(upper, torch.cos(angle), 1.0 - torch.cos(angle))
    y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle))
    pts = torch.stack([x - 0.5, y - 0.25], -1) * 2.0
    return pts + 0.1 * torch.randn(n, 2, generator=generator)


def eight_gaussians(n: int, generator: torch.Generator) -> Tensor:
    """A mixture of eight Gaussians (std 0.2) on the circle of radius 2: ``(n, 2)``."""
    k = torch.randint(0, 8, (n,), generator=generator).float() * (math.pi / 4)
    centres = 2.0 * torch.stack([torch.cos(k), torch.sin(k)], -1)
    return centres + 0.2 * torch.randn(n, 2, generator=generator)


def checkerboard(n: int, generator: torch.Generator) -> Tensor:
    """Uniform on the black squares of a 4x4 board on ``[-2, 2]^2``: ``(n, 2)``."""
    x1 = 4.0 * torch.rand(n, generator=generator) - 2.0
    x2 = torch.rand(n, generator=generator) - torch.randint(0, 2, (n,), generator=generator) * 2.0
    x2 = x2 + (torch.floor(x1) % 2)
    return torch.stack([x1, x2], -1)


SAMPLERS: dict[str, Callable[[int, torch.Generator], Tensor]] = {
    "two moons": two_moons,
    "eight Gaussians": eight_gaussians,
    "checkerboard": checkerboard,
}

DIGIT_LEVELS = 17  # pixel values 0..16
DIGIT_SCALE = 4.0  # y = DIGIT_SCALE * (x - 1/2), x in [0, 1]


def load_digits_flow(generator: torch.Generator, n_test: int = 360) -> tuple[Tensor, Tensor]:
    """scikit-learn's 8x8 digits as ``(train, test)`` pixel levels (integers 0..16), ``(n, 64)``."""
    from sklearn.datasets import load_digits

    levels = torch.tensor(load_digits().data, dtype=torch.float32)
    perm = torch.randperm(len(levels), generator=generator)
    return levels[perm[n_test:]], levels[perm[:n_test]]


def dequantize(levels: Tensor, generator: torch.Generator) -> Tensor:
    """Uniform dequantization to ``x = (level + u) / 17`` in [0, 1], scaled and centred."""
    x = (levels + torch.rand(levels.shape, generator=generator)) / DIGIT_LEVELS
    return DIGIT_SCALE * (x - 0.5)


def bits_per_dim(log_p: Tensor, dim: int) -> Tensor:
    """Bits per dimension of the discrete pixels from ``log p(y)`` of the dequantized scaled data.

    ``-log P(level) <= -log p_x(x) + D log 17`` (uniform dequantization bound) and
    ``log p_x = log p_y + D log DIGIT_SCALE``.
    """
    nats = -log_p - dim * math.log(DIGIT_SCALE) + dim * math.log(DIGIT_LEVELS)
    return nats / (dim * math.log(2.0))


# ---------------------------------------------------------------------------------- the field
class ConcatMLP(nn.Module):
    """``f(z, t)``: an MLP (softplus) with the time concatenated to the input of every layer.

    ``forward(t, z, tangents)`` also returns ``(df/dz) tangents`` for ``tangents`` of shape
    ``(batch, dim, k)``, carried through the layers in forward mode (``k`` Jacobian-vector
    products for the price of ``k`` narrow matrix products per layer, with no autograd).
    """

    def __init__(self, dim: int, hidden: int, layers: int = 3) -> None:
        super().__init__()
        sizes = [dim] + [hidden] * layers + [dim]
        self.linears = nn.ModuleList(nn.Linear(a + 1, b) for a, b in itertools.pairwise(sizes))

    def forward(self, t: Tensor, z: Tensor, tangents: Tensor) -> tuple[Tensor, Tensor]:
        h, dh = z, tangents
        for i, layer in enumerate(self.linears):
            h = layer(torch.cat([h, t.expand(*h.shape[:-1], 1)], -1))
            dh = torch.einsum("oi,bik->bok", layer.weight[:, :-1], dh)
            if i < len(self.linears) - 1:
                dh = torch.sigmoid(h).unsqueeze(-1) * dh  # softplus' = sigmoid
                h = nn.functional.softplus(h)
        return h, dh


class CNF(nn.Module):
    """The augmented field ``(z, logp) -> (f, -tr df/dz)``; counts its calls in ``calls``.

    ``exact``: ``tr(J) = sum_i (J e_i)_i`` from the ``dim`` basis tangents; otherwise
    Hutchinson's ``e^T J e`` with the Rademacher noise ``e`` passed as the field's extra argument
    (``args=`` of :func:`mali_func.odeint`), so the field stays a pure function of its inputs.
    """

    def __init__(self, dim: int, hidden: int, exact: bool) -> None:
        super().__init__()
        self.net = ConcatMLP(dim, hidden)
        self.exact = exact
        self.calls = 0

    def forward(
        self, t: Tensor, state: tuple[Tensor, Tensor], *noise: Tensor
    ) -> tuple[Tensor, Tensor]:
        self.calls += 1
        z = state[0]
        if self.exact or not noise:
            probe = torch.eye(z.shape[-1], dtype=z.dtype).expand(z.shape[0], -1, -1)
        else:
            probe = noise[0].unsqueeze(-1)
        f, jv = self.net(t, z, probe)
        return f, -(probe * jv).sum((-2, -1))


class WithNoise(nn.Module):
    """``cnf`` with its noise bound, for solvers without ``args`` (torchdiffeq's adjoint)."""

    def __init__(self, cnf: CNF, noise: tuple[Tensor, ...]) -> None:
        super().__init__()
        self.cnf, self.noise = cnf, noise

    def forward(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        return self.cnf(t, state, *self.noise)


def log_prob(cnf: CNF, x: Tensor, solve: Solve, noise: tuple[Tensor, ...] = ()) -> Tensor:
    """``log p(x) = log N(z(1); 0, I) - logp(1)``, integrating data ``x`` from ``t = 0`` to 1."""
    t = torch.tensor([0.0, 1.0])
    zs, logps = solve(cnf, (x, torch.zeros(x.shape[0])), t, noise)
    z1, delta = zs[-1], logps[-1]
    log_normal = -0.5 * (z1**2).sum(-1) - 0.5 * x.shape[-1] * math.log(2 * math.pi)
    return log_normal - delta


@torch.no_grad()
def batched_log_prob(cnf: CNF, x: Tensor, solve: Solve, batch: int = 2048) -> Tensor:
    """``log_prob`` without gradient, in batches (the exact trace for the evaluation)."""
    exact, cnf.exact = cnf.exact, True
    try:
        return torch.cat([log_prob(cnf, xb, solve) for xb in x.split(batch)])
    finally:
        cnf.exact = exact


def rademacher(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    return torch.randint(0, 2, shape, generator=generator).float() * 2.0 - 1.0


# ------------------------------------------------------------------------------- measurements
class _Held:
    """What autograd keeps in place of a saved tensor; its release frees the bytes' count."""

    __slots__ = ("__weakref__", "tensor")

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor


def peak_saved_bytes(step: Callable[[], None], params: list[Tensor]) -> int:
    """Peak bytes of the tensors autograd holds for backward while ``step`` (a forward and its
    backward) runs: distinct storages, parameters left out, counted from the moment a tensor is
    saved until the graph lets it go (the recomputations inside the backward included)."""
    skip = {p.untyped_storage().data_ptr() for p in params}
    holders: dict[int, int] = {}
    sizes: dict[int, int] = {}
    live, peak = 0, 0

    def release(ptr: int) -> None:
        nonlocal live
        holders[ptr] -= 1
        if holders[ptr] == 0:
            live -= sizes[ptr]

    def pack(x: Tensor) -> _Held:
        nonlocal live, peak
        held, ptr = _Held(x), x.untyped_storage().data_ptr()
        if ptr not in skip:
            if holders.get(ptr, 0) == 0:
                sizes[ptr] = x.untyped_storage().nbytes()
                live += sizes[ptr]
                peak = max(peak, live)
            holders[ptr] = holders.get(ptr, 0) + 1
            weakref.finalize(held, release, ptr)
        return held

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda held: held.tensor):
        step()
    return peak


def plot_density(data: Tensor, log_p: Tensor, grid: Tensor, title: str, path: Path) -> None:
    """Data histogram beside the learned density ``exp(log p)`` on the square ``grid``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    side = math.isqrt(grid.shape[0])
    lim = float(grid.abs().max())
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 4))
    ax1.hist2d(data[:, 0].numpy(), data[:, 1].numpy(), bins=100, range=[[-lim, lim]] * 2)
    ax1.set_title(f"{title}: data")
    density = log_p.exp().reshape(side, side).numpy()
    ax2.imshow(density, origin="lower", extent=(-lim, lim, -lim, lim))
    ax2.set_title(f"{title}: learned density (MALI)")
    for ax in (ax1, ax2):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def square_grid(lim: float, side: int) -> Tensor:
    """``side^2`` points on ``[-lim, lim]^2``, rows along the second coordinate: ``(side^2, 2)``."""
    axis = torch.linspace(-lim, lim, side)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)
