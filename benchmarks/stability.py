"""Linear stability regions of the reversible schemes in the complex ``w = h mu`` plane.

On the test equation ``y' = mu y`` every scheme's step is a linear map ``M(w)`` of its extended
state: ALF's ``(z, v)``, reversible Heun's ``(y, y_hat, f)``, a coupled Runge-Kutta method's
``(y, z)``. It is built here by applying the library's own ``step`` to the basis vectors with the
complex field ``f(t, y) = mu y`` (h = 1). The forward pass is stable where the spectral radius of
``M`` is at most 1; the reverse reconstruction applies ``M^-1``, whose spectral radius is the
growth of round-off per reversed step. The coupled methods are drawn at a fixed coupling and with
the automatic one (``lam = R(-|h| rho)^1.5``, ``rho = max(0, -Re mu)``, the library's rule for a
single eigenvalue).

Writes ``stability.png`` (forward stable set, and reverse growth) and ``stability.md`` (spectral
radii at a few points).

    python benchmarks/stability.py [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _common import RESULTS, md_table, write
from torch import Tensor

from mali_func import ALF, CoupledRK, ReversibleHeun, ReversibleScheme
from mali_func.schemes import TABLEAUS
from mali_func.schemes._coupled import AUTO_EXPONENT

C128 = torch.complex128


def auto(method: str, w: complex) -> CoupledRK:
    """The coupled scheme with the coupling ``"auto"`` would pick for one eigenvalue ``w``."""
    tab = TABLEAUS[method]
    rate = max(0.0, -w.real)
    r = float(tab.stability(torch.tensor(-rate, dtype=torch.float64)).clamp_min(0.0))
    return CoupledRK(tab, min(1.0, max(0.5, r**AUTO_EXPONENT)))


SCHEMES = {
    "ALF (eta = 1)": lambda w: ALF(1.0),
    "reversible Heun": lambda w: ReversibleHeun(),
    "coupled RK4, lam = 0.9": lambda w: CoupledRK(TABLEAUS["rk4"], 0.9),
    "coupled RK4, auto": lambda w: auto("rk4", w),
    "coupled Tsit5, lam = 0.9": lambda w: CoupledRK(TABLEAUS["tsit5"], 0.9),
    "coupled Tsit5, auto": lambda w: auto("tsit5", w),
}


def step_matrix(scheme: ReversibleScheme, w: complex) -> Tensor:
    """``M(w)``: the scheme's step on ``y' = w y`` with ``h = 1``, one column per state entry."""
    mu = torch.tensor(w, dtype=C128)

    def field(t: Tensor, y: tuple[Tensor, ...], params: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return (mu * y[0],)

    t, h = torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    if isinstance(scheme, ReversibleHeun):
        # Its third entry is f(y_hat) = mu y_hat, not a free coordinate: the map on (y, y_hat).
        basis = [(1.0, 0.0, 0.0), (0.0, 1.0, w)]
        cols = [torch.cat(scheme.step(field, t, h, _state(b), ())[:2]) for b in basis]
        return torch.stack(cols, dim=1)
    size = len(scheme.init(field, t, (torch.ones(1, dtype=C128),), ()))
    cols = []
    for e in torch.eye(size, dtype=C128):
        state = tuple(e[i : i + 1] for i in range(size))
        cols.append(torch.cat(scheme.step(field, t, h, state, ())))
    return torch.stack(cols, dim=1)


def _state(values: tuple[complex, ...]) -> tuple[Tensor, ...]:
    return tuple(torch.tensor([v], dtype=C128) for v in values)


def radii(scheme: ReversibleScheme, w: complex) -> tuple[float, float]:
    """Spectral radius of the step (forward) and of its inverse (reverse growth)."""
    eig = torch.linalg.eigvals(step_matrix(scheme, w)).abs()
    return float(eig.max()), float((1 / eig).max())


def grid(make, xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
    fwd = torch.empty(len(ys), len(xs))
    rev = torch.empty(len(ys), len(xs))
    for i, y in enumerate(ys.tolist()):
        for j, x in enumerate(xs.tolist()):
            w = complex(x, y)
            fwd[i, j], rev[i, j] = radii(make(w), w)
    return fwd, rev


def plot(out: Path, n: int = 81) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, ys = torch.linspace(-3.0, 0.5, n), torch.linspace(-3.0, 3.0, n)
    fig, axes = plt.subplots(2, len(SCHEMES), figsize=(3.2 * len(SCHEMES), 6.4), sharey=True)
    for k, (name, make) in enumerate(SCHEMES.items()):
        fwd, rev = grid(make, xs, ys)
        extent = (float(xs[0]), float(xs[-1]), float(ys[0]), float(ys[-1]))
        axes[0, k].imshow((fwd <= 1 + 1e-9).float(), origin="lower", extent=extent,
                          cmap="Greens", vmin=0, vmax=1.3, aspect="auto")  # fmt: skip
        axes[0, k].set_title(name, fontsize=9)
        # The imaginary axis itself (where ALF and reversible Heun are stable): a thick line.
        axis = [y for y in ys.tolist() if radii(make(complex(0, y)), complex(0, y))[0] <= 1 + 1e-9]
        axes[0, k].plot([0.0] * len(axis), axis, "s", color="darkgreen", ms=2)
        im = axes[1, k].imshow(rev.clamp(max=3.0), origin="lower", extent=extent,
                               cmap="magma_r", vmin=1.0, vmax=3.0, aspect="auto")  # fmt: skip
        for ax in axes[:, k]:
            ax.axhline(0, color="k", lw=0.5)
            ax.axvline(0, color="k", lw=0.5)
            ax.set_xlabel("Re(h mu)")
    axes[0, 0].set_ylabel("forward stable (green)\nIm(h mu)")
    axes[1, 0].set_ylabel("reverse growth per step\nIm(h mu)")
    fig.colorbar(im, ax=axes[1, :].tolist(), shrink=0.8, label="spectral radius of the inverse")
    fig.savefig(out / "stability.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


POINTS = (-0.01, -0.1, -0.5, -1.0, -2.0, 0.5j, 1.0j, 2.0j)


def table() -> str:
    rows = []
    for name, make in SCHEMES.items():
        cells = [name]
        for w in POINTS:
            f, r = radii(make(complex(w)), complex(w))
            cells.append(f"{f:.3f} / {r:.3f}")
        rows.append(cells)
    headers = ["scheme", *(f"w = {w}" for w in POINTS)]
    return (
        "Spectral radius of the step on `y' = mu y` (w = h mu), forward / reverse (of the "
        "inverse); forward <= 1 is stable, the reverse value is the round-off growth per "
        "reversed step.\n\n" + md_table(headers, rows, "l" + "r" * len(POINTS))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    ns = parser.parse_args()
    ns.out.mkdir(parents=True, exist_ok=True)
    text = table()
    write(ns.out / "stability.md", text)
    plot(ns.out)
    print(text)


if __name__ == "__main__":
    main()
