"""Log-log line plots for the benchmark results (matplotlib with the Agg backend, PNG files)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Line:
    """One series: points ``(x, y)``, a legend label and matplotlib style keywords."""

    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    style: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Panel:
    """One set of axes: its lines, axis labels and title."""

    lines: Sequence[Line]
    xlabel: str
    ylabel: str
    title: str = ""
    notes: Sequence[str] = ()


def loglog(
    path: Path, panels: Sequence[Panel], suptitle: str = "", legend_below: bool = False
) -> Path:
    """Draw the panels side by side on log-log axes and save them as a PNG.

    With ``legend_below`` the panels share one legend under them (for many lines).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.8), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for line in panel.lines:
            points = [(x, y) for x, y in zip(line.xs, line.ys) if x > 0 and y > 0]
            if not points:
                continue
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=line.label, **dict(line.style))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.set_title(panel.title, fontsize=10)
        ax.grid(True, which="major", alpha=0.4)
        ax.grid(True, which="minor", alpha=0.12)
        if not legend_below:
            ax.legend(fontsize=8)
        for i, note in enumerate(panel.notes):
            ax.annotate(note, (0.01, 0.01 + 0.04 * i), xycoords="axes fraction", fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    if legend_below:
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
        fig.tight_layout(rect=(0, 0.1, 1, 1))
    else:
        fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
