"""Linear stability regions of the reversible schemes in the complex ``w = h mu`` plane.

On the test equation ``y' = mu y`` every scheme's step is a linear map ``M(w)`` of its extended
state: ALF's ``(z, v)``, reversible Heun's ``(y, y_hat)`` (its third entry ``f = mu y_hat`` is not
a free coordinate), a coupled Runge-Kutta method's ``(y, z)``. ``M`` is built here by applying the
library's own ``step`` to the basis vectors with the complex field ``f(t, y) = mu y`` (``h = 1``,
every grid point at once, one batch entry per ``w``), and checked against the closed forms:

* ALF, ``eta = 1``: ``M = [[1 + w, w/2], [2w, w - 1]]``;
* reversible Heun (Kidger et al. 2021) on ``(y, y_hat, f)``:
  ``M3 = [[1 + w, -w/2, (1 + w)/2], [2, -1, 1], [2w, -w, w]]``; on ``f = w y_hat``
  ``M = [[1 + w, w^2/2], [2, w - 1]]``. Both maps have the characteristic polynomial
  ``x^2 - 2 w x - 1``: the same eigenvalues ``w +- sqrt(w^2 + 1)``, product ``-1``, so stable only
  where both have modulus 1, the segment ``[-i, i]``;
* coupled Runge-Kutta (McCallum & Foster 2024), ``R`` the tableau's stability polynomial computed
  from its ``a`` and ``b``: ``M = [[lam, R(w) - lam], [-(R(-w) - 1) lam,
  1 - (R(-w) - 1)(R(w) - lam)]]`` (design notes, section 5), determinant ``lam``.

The forward pass is stable where the spectral radius of ``M`` is at most 1; the reverse
reconstruction applies ``M^-1``, whose spectral radius is the growth of round-off per reversed step.
The coupled methods are drawn at the fixed couplings 0.999 and 0.9 and with ``coupling="auto"``:
the library's own rule, fed the rate ``rho = max(0, -Re mu)`` of this single eigenvalue
(``lam = clip(R(-|h| rho)^1.5, 0.5, 1)``, 1.5 being ``AUTO_EXPONENT``). The dashed line on their
panels is the boundary ``|R(w)| = 1`` of the plain (non-reversible) Runge-Kutta step.

Writes ``stability.png`` (forward stable set, and reverse growth) and ``stability.md`` (spectral
radii at a few points, and the check against the closed forms).

    python benchmarks/stability.py [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
from _common import RESULTS, md_table, write
from torch import Tensor

from mali_func import ALF, CoupledRK, ReversibleHeun, ReversibleScheme
from mali_func.schemes import TABLEAUS, ButcherTableau
from mali_func.schemes._coupled import AUTO_EXPONENT

C128 = torch.complex128
F64 = torch.float64
TOL = 1e-9  # a spectral radius within this of 1 counts as 1 (the imaginary-axis segments)
COUPLINGS: tuple[float | str, ...] = (0.999, 0.9, "auto")
POINTS = (-0.01, -0.1, -0.5, -1.0, -2.0, 0.5j, 1.0j, 2.0j)


def _schemes() -> dict[str, tuple[ReversibleScheme, str | None]]:
    """Display name -> (scheme, tableau name of a coupled scheme, else ``None``)."""
    out: dict[str, tuple[ReversibleScheme, str | None]] = {
        "ALF (eta = 1)": (ALF(1.0), None),
        "reversible Heun": (ReversibleHeun(), None),
    }
    for method, label in (("rk4", "RK4"), ("tsit5", "Tsit5")):
        for lam in COUPLINGS:
            name = f"coupled {label}, " + ("auto" if lam == "auto" else f"lam = {lam}")
            out[name] = (CoupledRK(TABLEAUS[method], lam), method)  # type: ignore[arg-type]
    return out


SCHEMES = _schemes()


def _linear(mu: Tensor) -> Callable[..., tuple[Tensor, ...]]:
    def field(t: Tensor, y: tuple[Tensor, ...], params: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return (mu * y[0],)

    return field


def step_matrix(scheme: ReversibleScheme, w: Tensor) -> Tensor:
    """``M(w)`` for a batch of ``w`` (shape ``(N,)``): shape ``(N, n, n)``, one column per state
    entry, from the scheme's own ``step`` on ``y' = w y`` with ``h = 1``."""
    w = w.to(C128)
    field, zero, one = _linear(w), torch.zeros_like(w), torch.ones_like(w)
    t, h = torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64)
    if isinstance(scheme, ReversibleHeun):
        # Columns for y and y_hat, with the third entry f = w y_hat kept consistent.
        basis = [(one, zero, zero), (zero, one, w)]
        cols = [torch.stack(scheme.step(field, t, h, b, ())[:2], -1) for b in basis]
        return torch.stack(cols, -1)
    extra: tuple[Tensor, ...] = ()
    if isinstance(scheme, CoupledRK) and scheme.auto:
        extra = ((-w.real).clamp_min(0.0),)  # the contraction rate rho of this eigenvalue
    size = 2
    cols = []
    for k in range(size):
        state = tuple(one if i == k else zero for i in range(size)) + extra
        cols.append(torch.stack(scheme.step(field, t, h, state, ())[:size], -1))
    return torch.stack(cols, -1)


def radii(scheme: ReversibleScheme, w: Tensor) -> tuple[Tensor, Tensor]:
    """Spectral radius of the step (forward) and of its inverse (reverse growth), per ``w``."""
    eig = torch.linalg.eigvals(step_matrix(scheme, w)).abs()
    return eig.amax(-1), (1 / eig).amax(-1)


def stability_polynomial(tab: ButcherTableau, w: Tensor) -> Tensor:
    """``R(w) = 1 + w b^T (I - w A)^-1 1`` from the tableau's ``a`` and ``b`` (a linear solve,
    independent of the library's ``tableau.stability``)."""
    s = len(tab.b)
    a = torch.zeros(s, s, dtype=C128)
    for i, row in enumerate(tab.a):
        a[i, : len(row)] = torch.tensor(row, dtype=F64)
    b = torch.tensor(tab.b, dtype=C128)
    eye = torch.eye(s, dtype=C128)
    k = torch.linalg.solve(eye - w[:, None, None] * a, torch.ones(len(w), s, 1, dtype=C128))
    return 1 + w * (b @ k[..., 0].T)


def closed_form(scheme: ReversibleScheme, method: str | None, w: Tensor) -> Tensor:
    """The step map of the module docs, for a batch of ``w``."""
    w = w.to(C128)
    one = torch.ones_like(w)
    if isinstance(scheme, ALF):
        rows = [[1 + w, w / 2], [2 * w, w - 1]]
    elif isinstance(scheme, ReversibleHeun):
        rows = [[1 + w, w * w / 2], [2 * one, w - 1]]
    else:
        assert method is not None and isinstance(scheme, CoupledRK)
        tab = TABLEAUS[method]
        r_fwd, r_back = stability_polynomial(tab, w), stability_polynomial(tab, -w)
        if scheme.auto:
            r_rho = stability_polynomial(tab, -(-w.real).clamp_min(0.0).to(C128)).real
            lam = r_rho.clamp_min(0.0).pow(AUTO_EXPONENT).clamp(0.5, 1.0).to(C128)
        else:
            lam = float(scheme.coupling) * one  # type: ignore[arg-type]
        rows = [[lam, r_fwd - lam], [-(r_back - 1) * lam, 1 - (r_back - 1) * (r_fwd - lam)]]
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


def heun_full_check(w: Tensor) -> float:
    """Relative difference between the library's reversible Heun step on all of
    ``(y, y_hat, f)`` (``f`` free) and the 3x3 map ``M3`` of the module docs."""
    w = w.to(C128)
    field, zero, one = _linear(w), torch.zeros_like(w), torch.ones_like(w)
    t, h = torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64)
    scheme = ReversibleHeun()
    cols = []
    for k in range(3):
        state = tuple(one if i == k else zero for i in range(3))
        cols.append(torch.stack(scheme.step(field, t, h, state, ()), -1))
    lib = torch.stack(cols, -1)
    m3 = [[1 + w, -w / 2, (1 + w) / 2], [2 * one, -one, one], [2 * w, -w, w]]
    ref = torch.stack([torch.stack(r, -1) for r in m3], -2)
    return _relative(lib, ref)


def _relative(lib: Tensor, ref: Tensor) -> float:
    scale = 1 + ref.abs().amax((-2, -1))
    return float(((lib - ref).abs().amax((-2, -1)) / scale).max())


def check() -> dict[str, float]:
    """Library step map against closed form over random ``w``: the largest entry difference,
    relative to ``1 + `` the largest entry of the closed form at the same ``w``."""
    gen = torch.Generator().manual_seed(0)
    w = torch.complex(torch.rand(200, generator=gen, dtype=F64) * 4 - 3,
                      torch.rand(200, generator=gen, dtype=F64) * 6 - 3)  # fmt: skip
    out = {name: _relative(step_matrix(s, w), closed_form(s, m, w))
           for name, (s, m) in SCHEMES.items()}  # fmt: skip
    out["reversible Heun, full 3x3 map"] = heun_full_check(w)
    return out


def plot(out: Path, n: int = 241) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, ys = torch.linspace(-3.0, 0.5, n, dtype=F64), torch.linspace(-3.0, 3.0, n, dtype=F64)
    w = torch.complex(xs[None, :].expand(n, n), ys[:, None].expand(n, n)).reshape(-1)
    axis_w = torch.complex(torch.zeros_like(ys), ys)
    names = [k for k in SCHEMES if k != "reversible Heun"]  # ALF's panel stands for both
    alf, heun = SCHEMES["ALF (eta = 1)"][0], SCHEMES["reversible Heun"][0]
    assert torch.allclose(radii(alf, w)[0], radii(heun, w)[0], rtol=1e-9), "same spectrum"
    fig, axes = plt.subplots(2, len(names), figsize=(2.55 * len(names), 5.6), sharey=True)
    extent = (float(xs[0]), float(xs[-1]), float(ys[0]), float(ys[-1]))
    im = None
    for k, name in enumerate(names):
        scheme, method = SCHEMES[name]
        fwd, rev = (r.reshape(n, n) for r in radii(scheme, w))
        top, bottom = axes[0, k], axes[1, k]
        top.imshow((fwd <= 1 + TOL).float(), origin="lower", extent=extent,
                   cmap="Greens", vmin=0, vmax=1.3, aspect="auto")  # fmt: skip
        # The imaginary axis is not on the grid: its stable points as a thick line.
        on_axis = ys[radii(scheme, axis_w)[0] <= 1 + TOL]
        top.plot([0.0] * len(on_axis), on_axis, "s", color="darkgreen", ms=1.5)
        title = "ALF (eta = 1) and\nreversible Heun" if scheme is alf else name.replace(", ", ",\n")
        top.set_title(title, fontsize=9)
        im = bottom.imshow(rev.clamp(max=3.0), origin="lower", extent=extent,
                           cmap="magma_r", vmin=1.0, vmax=3.0, aspect="auto")  # fmt: skip
        if method is not None:
            plain = stability_polynomial(TABLEAUS[method], w).abs().reshape(n, n)
            for ax in (top, bottom):
                ax.contour(xs, ys, plain, levels=[1.0], colors="C0", linestyles="--",
                           linewidths=0.8)  # fmt: skip
        for ax in (top, bottom):
            ax.axhline(0, color="k", lw=0.4)
            ax.axvline(0, color="k", lw=0.4)
            ax.set_xlabel("Re(h mu)", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel("forward stable (green)\nIm(h mu)")
    axes[1, 0].set_ylabel("reverse growth per step\nIm(h mu)")
    fig.colorbar(im, ax=axes[1, :].tolist(), shrink=0.8, label="spectral radius of the inverse")
    fig.suptitle("Linear stability on y' = mu y (dashed: |R(h mu)| = 1 of the plain RK step)",
                 fontsize=10)  # fmt: skip
    fig.savefig(out / "stability.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def table(errors: dict[str, float]) -> str:
    w = torch.tensor(POINTS, dtype=C128)
    rows = []
    for name, (scheme, _) in SCHEMES.items():
        fwd, rev = radii(scheme, w)
        rows.append([name, *(f"{f:.3f} / {r:.3f}" for f, r in zip(fwd.tolist(), rev.tolist()))])
    headers = ["scheme", *(f"w = {complex(p).real:g}" if complex(p).imag == 0
                           else f"w = {complex(p).imag:g}i" for p in POINTS)]  # fmt: skip
    worst = max(errors.values())
    return (
        "Spectral radius of the step on `y' = mu y` (w = h mu), forward / reverse (of the "
        "inverse); forward <= 1 is stable, the reverse value is the round-off growth per "
        "reversed step. ALF (eta = 1) and reversible Heun have the same eigenvalues "
        "`w +- sqrt(w^2 + 1)`. `auto` is the library's rule for this single eigenvalue.\n\n"
        + md_table(headers, rows, "l" + "r" * len(POINTS))
        + "\n\nCheck: the step maps built from the library's `step` match the closed forms "
        f"(`benchmarks/stability.py` docstring) to {worst:.0e} (largest entry difference relative "
        "to 1 + the largest entry, over 200 random w with Re in [-3, 1], Im in [-3, 3], every "
        "scheme; reversible Heun also on its full 3x3 map)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    ns = parser.parse_args()
    torch.set_num_threads(1)
    ns.out.mkdir(parents=True, exist_ok=True)
    errors = check()
    if max(errors.values()) > 1e-10:
        raise AssertionError(f"step maps differ from their closed forms: {errors}")
    text = table(errors)
    write(ns.out / "stability.md", text)
    plot(ns.out)
    print(text)


if __name__ == "__main__":
    main()
