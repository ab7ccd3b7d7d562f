"""Pieces of the digits example: data, model, evaluation, memory count, plot, ONNX round trip.

Kept apart from ``digits_classifier.py`` so that the exporter's command line and the tests can
build the same model (``digits_parts:DigitsModel``).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import Tensor, nn

from mali_func import DriftMonitor, ODEBlock


class ConvField(nn.Module):
    """``f(t, x)``: two 3x3 convolutions with the time as an extra input channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels + 1, channels, 3, padding=1)
        self.norm1 = nn.GroupNorm(4, channels)
        self.conv2 = nn.Conv2d(channels + 1, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(4, channels)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        tt = t.expand(x.shape[0], 1, x.shape[2], x.shape[3])
        h = torch.tanh(self.norm1(self.conv1(torch.cat([x, tt], 1))))
        return self.norm2(self.conv2(torch.cat([h, tt], 1)))


class DigitsModel(nn.Module):
    """stem -> ODEBlock -> head, for 1x8x8 images and 10 classes."""

    def __init__(
        self,
        channels: int = 32,
        n_steps: int = 6,
        gradient: str = "mali",
        monitor: DriftMonitor | None = None,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.GroupNorm(4, channels), nn.ReLU()
        )
        self.ode = ODEBlock(
            ConvField(channels), n_steps=n_steps, gradient=gradient, monitor=monitor
        )
        self.head = nn.Sequential(
            nn.GroupNorm(4, channels),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(4 * channels, 10),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.ode(self.stem(x)))


def load_digits_split(test_fraction: float = 0.2, seed: int = 0) -> dict[str, Tensor]:
    """scikit-learn's bundled digits, scaled to [0, 1], as a stratified train/test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(
        torch.arange(len(y)).numpy(), test_size=test_fraction, random_state=seed, stratify=y
    )
    return {
        "x_train": x[train_idx],
        "y_train": y[train_idx],
        "x_test": x[test_idx],
        "y_test": y[test_idx],
    }


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    return (model(x).argmax(-1) == y).float().mean().item()


def saved_bytes_per_step(model: DigitsModel, data: dict[str, Tensor], *, gradient: str) -> int:
    """Bytes autograd keeps for backward in one training step (batch 64), distinct storages."""
    seen: dict[int, int] = {}

    def pack(x: Tensor) -> Tensor:
        seen[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        return x

    options = model.ode.options
    previous = options.get("gradient", "mali")
    options["gradient"] = gradient
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            loss = nn.functional.cross_entropy(model(data["x_train"][:64]), data["y_train"][:64])
        loss.backward()
    finally:
        options["gradient"] = previous
        model.zero_grad(set_to_none=True)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in seen.items() if ptr not in params)


def plot_curve(losses: list[float], accs: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(losses)
    ax1.set_xlabel("training step")
    ax1.set_ylabel("cross-entropy")
    ax1.set_yscale("log")
    ax2.plot(range(1, len(accs) + 1), accs, marker="o")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("test accuracy")
    fig.suptitle("Neural ODE on digits, trained with MALI")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def export_and_compare(
    model: nn.Module, data: dict[str, Tensor], path: Path
) -> list[tuple[str, str]]:
    """Export to ONNX and compare onnxruntime with torch; rows for the summary table."""
    try:
        from mali_func.export import to_onnx
    except ImportError:
        return [("ONNX export", "skipped: mali_func.export.to_onnx is not available yet")]
    model.eval()
    report = to_onnx(model, (data["x_test"][:1],), path)
    import numpy as np
    import onnxruntime as ort

    # One thread on both sides: like for like, and least disturbed by a busy machine.
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rows = [("ONNX file", f"{path} ({path.stat().st_size / 1024:.0f} KiB)")]
    x_all = data["x_test"]
    with torch.no_grad():
        ref = model(x_all)
    out = torch.from_numpy(session.run(None, {name: x_all.numpy().astype(np.float32)})[0])
    err = ((out - ref).abs().max() / ref.abs().max()).item()
    agree = (out.argmax(-1) == ref.argmax(-1)).float().mean().item()
    rows.append(("onnxruntime vs torch", f"max rel. error {err:.1e}, same class {agree:.4f}"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for batch in (1, 256):
        x = x_all[:batch]
        t_torch = _latency(lambda x=x: model(x))
        feed = {name: x.numpy()}
        t_ort = _latency(lambda feed=feed: session.run(None, feed))
        rows.append(
            (
                f"latency batch {batch}, 1 thread",
                f"torch {t_torch * 1e3:.2f} ms, onnxruntime "
                f"{t_ort * 1e3:.2f} ms ({t_torch / t_ort:.1f}x)",
            )
        )
    torch.set_num_threads(threads)
    del report
    return rows


def _latency(fn: object, repeats: int = 30) -> float:
    call = fn  # type: ignore[assignment]
    with torch.no_grad():
        for _ in range(3):
            call()  # type: ignore[operator]
        start = time.perf_counter()
        for _ in range(repeats):
            call()  # type: ignore[operator]
    return (time.perf_counter() - start) / repeats
