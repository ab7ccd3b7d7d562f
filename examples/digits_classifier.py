"""The main job: a conv Neural ODE classifier on scikit-learn's digits, trained with MALI.

    stem (conv) -> ODEBlock(time-dependent conv field, ALF + MALI) -> head (pool, linear)

Trains on the 8x8 digits bundled with scikit-learn (1,797 images, no download) inside a
``torch.compile``d training step, then:

* watches the MALI reconstruction error of every training step with a ``DriftMonitor`` (under
  ``torch.compile`` no warning can read the host, so the monitor is the only signal);
* measures the memory autograd keeps for one training step with MALI and with backprop;
* saves the weights as a ``state_dict`` and loads them back with ``weights_only=True``;
* plots the training curve to ``OUT/training.png``;
* exports the model to ONNX and runs it in onnxruntime (agreement and latency), when the
  exporter is available;
* ends with a summary table.

    python examples/digits_classifier.py [--epochs 12] [--out outputs] [--fast] [--no-compile]
    torchrun --nproc_per_node=2 examples/digits_classifier.py     # DistributedDataParallel, gloo

Under ``torchrun`` each process trains on its share of every batch through
``DistributedDataParallel`` (eager: DDP's compiled path splits graphs, which ``fullgraph=True``
refuses), and rank 0 evaluates, saves, exports and reports.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from digits_parts import (
    DigitsModel,
    accuracy,
    export_and_compare,
    load_digits_split,
    plot_curve,
    saved_bytes_per_step,
)
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from mali_func import DriftMonitor


def train(
    model: DigitsModel,
    data: dict[str, torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    compile_step: bool,
    rank: int = 0,
    world: int = 1,
) -> tuple[list[float], list[float], float, float]:
    """Train with Adam and a one-cycle schedule; returns losses, test accuracies, seconds and the
    largest reconstruction error the model's ``DriftMonitor`` received (NaN without one).

    With ``world > 1`` (under torchrun) process ``rank`` takes its slice of every batch.
    """
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    n = data["x_train"].shape[0]
    per_epoch = n // batch_size  # full batches only: a fixed shape keeps the compiled graph static
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * per_epoch)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)

    net: nn.Module = DistributedDataParallel(model) if world > 1 else model

    def compute_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss_fn(net(x), y)

    step_loss = torch.compile(compute_loss, fullgraph=True) if compile_step else compute_loss
    losses: list[float] = []
    accs: list[float] = []
    monitor = getattr(model.ode.options.get("gradient"), "monitor", None)
    drift = float("nan") if monitor is None else 0.0
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        bar = tqdm(
            range(per_epoch), desc=f"epoch {epoch + 1}/{epochs}", leave=False, disable=rank > 0
        )
        for b in bar:
            idx = order[b * batch_size : (b + 1) * batch_size].chunk(world)[rank]
            loss = step_loss(data["x_train"][idx], data["y_train"][idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            if monitor is not None and monitor.error is not None:
                drift = max(drift, monitor.error.item())
                monitor.reset()  # compiled solves add their errors up until reset
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        accs.append(accuracy(model, data["x_test"], data["y_test"]))
        if rank == 0:
            tqdm.write(f"epoch {epoch + 1:2d}  loss {losses[-1]:.4f}  test accuracy {accs[-1]:.4f}")
    return losses, accs, time.perf_counter() - start, drift


def main() -> None:
    parser = argparse.ArgumentParser(description="Train a conv Neural ODE on digits with MALI.")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-steps", type=int, default=6, help="ALF steps through the block")
    parser.add_argument("--out", type=Path, default=Path("outputs"))
    parser.add_argument("--fast", action="store_true", help="one epoch (for tests)")
    parser.add_argument("--no-compile", action="store_true", help="train in eager mode")
    args = parser.parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = 0
    if world > 1:
        dist.init_process_group("gloo")
        rank = dist.get_rank()
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)

    data = load_digits_split()
    model = DigitsModel(n_steps=args.n_steps, monitor=DriftMonitor())
    losses, accs, seconds, drift = train(
        model,
        data,
        epochs=1 if args.fast else args.epochs,
        batch_size=args.batch_size,
        compile_step=not args.no_compile and world == 1,
        rank=rank,
        world=world,
    )
    if world > 1:
        dist.barrier()  # torch 2.13 gloo: a rank destroying its group while another is still
        dist.destroy_process_group()  # finishing its last collective can hang the other
        if rank > 0:
            return

    mem = {g: saved_bytes_per_step(model, data, gradient=g) for g in ("mali", "backprop")}
    ckpt = args.out / "digits_ode.pt"
    torch.save(model.state_dict(), ckpt)
    restored = DigitsModel(n_steps=args.n_steps)
    restored.load_state_dict(torch.load(ckpt, weights_only=True))
    restored_acc = accuracy(restored, data["x_test"], data["y_test"])
    plot_curve(losses, accs, args.out / "training.png")
    onnx_rows = export_and_compare(restored, data, args.out / "digits.onnx")

    mode = "eager" if args.no_compile or world > 1 else "compiled"
    mode += f", {world} processes (DDP)" if world > 1 else ""
    rows = [
        ("training", f"{seconds:.1f} s, {mode}"),
        ("test accuracy", f"{accs[-1]:.4f} ({data['y_test'].numel()} images)"),
        ("reloaded checkpoint accuracy", f"{restored_acc:.4f} ({ckpt})"),
        ("largest MALI reconstruction error", f"{drift:.1e} (DriftMonitor, every step)"),
        ("autograd memory per step, MALI", f"{mem['mali'] / 2**20:.2f} MiB"),
        ("autograd memory per step, backprop", f"{mem['backprop'] / 2**20:.2f} MiB"),
        *onnx_rows,
        ("training curve", str(args.out / "training.png")),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n| what | result |\n|---|---|")
    for key, value in rows:
        print(f"| {key:<{width}} | {value} |")


if __name__ == "__main__":
    main()
