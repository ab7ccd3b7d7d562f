"""The digits Neural ODE trained with differential privacy (DP-SGD): per-sample clipping + noise.

    stem (conv) -> ODEBlock(conv field, ALF + MALI) -> head (pool, linear), as digits_parts.py

Every step samples a Poisson batch (each image with probability ``q``), clips each image's
gradient to norm ``--clip``, sums, adds Gaussian noise of standard deviation ``sigma * clip`` and
averages over the expected batch size. ``sigma`` is chosen for ``--epsilon`` at ``--delta`` over
the whole run by Opacus's RDP accountant, which also reports the epsilon actually spent.

Two ways to get the per-sample gradients:

* ``--engine opacus`` (default): Opacus's ``PrivacyEngine`` in its ``torch.func`` mode
  (``grad_sample_mode="functorch"``); ``mali_func.interop._privacy.prepare_for_opacus`` makes Opacus
  treat the ``ODEBlock`` as one unit;
* ``--engine vmap``: ``torch.func.vmap(torch.func.grad(loss))`` over the whole model, clipped
  and noised here, in fixed-size chunks (padding rows weigh 0) so the shapes stay static;
  ``--compile`` runs it through ``torch.compile(..., fullgraph=True)``.

    python examples/private_digits.py [--epochs 30] [--epsilon 8] [--engine opacus|vmap]
    python examples/private_digits.py --engine vmap --compile
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from digits_parts import DigitsModel, accuracy, load_digits_split
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, TensorDataset

from mali_func import prepare_for_opacus

Grads = dict[str, Tensor]


@dataclass
class Run:
    """What a training run reports."""

    epoch_seconds: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    epsilon: float = float("nan")
    sigma: float = float("nan")


@dataclass(frozen=True)
class Privacy:
    """The DP-SGD settings of a run."""

    epsilon: float
    delta: float
    clip: float
    sample_rate: float
    steps_per_epoch: int


def privacy_settings(args: argparse.Namespace, n_train: int) -> Privacy:
    # As Opacus's DPDataLoader: as many steps per epoch as batches, q = 1 / steps.
    steps = math.ceil(n_train / args.batch_size)
    return Privacy(args.epsilon, args.delta, args.clip, 1.0 / steps, steps)


def cosine(opt: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning rate decays to 0 along a half cosine over the run (no privacy cost)."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)


def train_opacus(
    model: nn.Module, data: dict[str, Tensor], privacy: Privacy, args: argparse.Namespace
) -> Run:
    """DP-SGD through Opacus's PrivacyEngine (Poisson sampling, clipping, noise, accounting)."""
    prepare_for_opacus(model)
    loader = DataLoader(
        TensorDataset(data["x_train"], data["y_train"]), batch_size=args.batch_size, shuffle=True
    )
    engine = PrivacyEngine(accountant="rdp")
    module, opt, loader = engine.make_private_with_epsilon(
        module=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=args.lr),
        data_loader=loader,
        target_epsilon=privacy.epsilon,
        target_delta=privacy.delta,
        epochs=args.epochs,
        max_grad_norm=privacy.clip,
        grad_sample_mode="functorch",
    )
    sched = cosine(opt, args.epochs * privacy.steps_per_epoch)
    run = Run(sigma=opt.noise_multiplier)
    for _ in range(args.epochs):
        module.train()
        start = time.perf_counter()
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(module(x), y).backward()
            opt.step()
            sched.step()
        run.epoch_seconds.append(time.perf_counter() - start)
        run.accuracies.append(accuracy(module, data["x_test"], data["y_test"]))
        _report(run)
    run.epsilon = engine.get_epsilon(privacy.delta)
    return run


def per_sample_gradients(
    model: nn.Module, compile_step: bool
) -> Callable[[Grads, Tensor, Tensor], Grads]:
    """``(params, x, y) -> {name: (batch, *param.shape)}``: each sample's loss gradient."""

    def loss(params: Grads, x: Tensor, y: Tensor) -> Tensor:
        return nn.functional.cross_entropy(functional_call(model, params, (x[None],)), y[None])

    fn = vmap(grad(loss), in_dims=(None, 0, 0))
    return torch.compile(fn, fullgraph=True) if compile_step else fn


def clipped_sum(grads: Grads, weights: Tensor, clip: float) -> Grads:
    """``sum_i w_i * min(1, clip / |g_i|) * g_i`` with ``|g_i|`` over all parameters together."""
    norms = torch.cat([g.flatten(1) for g in grads.values()], 1).norm(dim=1)
    scale = weights * (clip / (norms + 1e-12)).clamp(max=1.0)
    return {k: torch.einsum("b,b...->...", scale, g) for k, g in grads.items()}


def poisson_chunks(
    n: int, q: float, chunk: int, gen: torch.Generator
) -> list[tuple[Tensor, Tensor]]:
    """One Poisson batch (each index with probability ``q``) as fixed-size chunks of indices and
    weights; padding rows repeat index 0 with weight 0."""
    idx = (torch.rand(n, generator=gen) < q).nonzero().flatten()
    pad = -len(idx) % chunk
    weights = torch.cat([torch.ones(len(idx)), torch.zeros(pad)])
    idx = torch.cat([idx, torch.zeros(pad, dtype=idx.dtype)])
    return list(zip(idx.split(chunk), weights.split(chunk)))


def train_vmap(
    model: nn.Module, data: dict[str, Tensor], privacy: Privacy, args: argparse.Namespace
) -> Run:
    """DP-SGD by hand: vmap(grad) per-sample gradients (optionally compiled), Opacus's RDP
    accountant for epsilon."""
    total = args.epochs * privacy.steps_per_epoch
    sigma = get_noise_multiplier(
        target_epsilon=privacy.epsilon,
        target_delta=privacy.delta,
        sample_rate=privacy.sample_rate,
        steps=total,
        accountant="rdp",
    )
    accountant = RDPAccountant()
    params = dict(model.named_parameters())
    opt = torch.optim.Adam(params.values(), lr=args.lr)
    sched = cosine(opt, total)
    step_grads = per_sample_gradients(model, args.compile)
    expected = privacy.sample_rate * len(data["y_train"])
    gen = torch.Generator().manual_seed(args.seed)
    run = Run(sigma=sigma)
    for _ in range(args.epochs):
        model.train()
        start = time.perf_counter()
        for _ in range(privacy.steps_per_epoch):
            chunks = poisson_chunks(len(data["y_train"]), privacy.sample_rate, args.chunk, gen)
            detached = {k: p.detach() for k, p in params.items()}
            summed = {k: torch.zeros_like(p) for k, p in detached.items()}
            for idx, w in chunks:
                grads = step_grads(detached, data["x_train"][idx], data["y_train"][idx])
                for k, g in clipped_sum(grads, w, privacy.clip).items():
                    summed[k] += g
            for k, p in params.items():
                noise = torch.randn(p.shape, generator=gen) * sigma * privacy.clip
                p.grad = (summed[k] + noise) / expected
            opt.step()
            sched.step()
            accountant.step(noise_multiplier=sigma, sample_rate=privacy.sample_rate)
        run.epoch_seconds.append(time.perf_counter() - start)
        run.accuracies.append(accuracy(model, data["x_test"], data["y_test"]))
        _report(run)
    run.epsilon = accountant.get_epsilon(privacy.delta)
    return run


def _report(run: Run) -> None:
    epoch = len(run.accuracies)
    print(
        f"epoch {epoch:2d}  {run.epoch_seconds[-1]:6.1f} s  test accuracy {run.accuracies[-1]:.4f}",
        flush=True,
    )


def summary(run: Run, privacy: Privacy, args: argparse.Namespace, n_params: int) -> None:
    mode = args.engine + (", compiled" if args.compile else ", eager")
    later = run.epoch_seconds[1:] or run.epoch_seconds
    rows = [
        ("per-sample gradients", mode),
        ("model", f"{args.channels} channels, {args.n_steps} ALF steps, {n_params} parameters"),
        ("test accuracy", f"{run.accuracies[-1]:.4f} (best {max(run.accuracies):.4f})"),
        ("epsilon spent", f"{run.epsilon:.2f} at delta {privacy.delta:g} (RDP, Opacus)"),
        ("noise multiplier", f"{run.sigma:.3f}, clip {privacy.clip}, q {privacy.sample_rate:.4f}"),
        ("steps", f"{args.epochs} epochs x {privacy.steps_per_epoch}"),
        ("first epoch", f"{run.epoch_seconds[0]:.1f} s"),
        ("later epochs", f"{sum(later) / len(later):.1f} s each (mean)"),
        ("total training", f"{sum(run.epoch_seconds):.1f} s, {torch.get_num_threads()} threads"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n| what | result |\n|---|---|")
    for key, value in rows:
        print(f"| {key:<{width}} | {value} |")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="DP-SGD on the digits Neural ODE.")
    parser.add_argument("--engine", choices=["opacus", "vmap"], default="opacus")
    parser.add_argument("--compile", action="store_true", help="compile vmap(grad) (vmap engine)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=256, help="expected (Poisson) size")
    parser.add_argument("--chunk", type=int, default=64, help="vmap engine: samples per call")
    parser.add_argument("--epsilon", type=float, default=8.0, help="target over the whole run")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--clip", type=float, default=0.2, help="per-sample gradient norm bound")
    parser.add_argument("--lr", type=float, default=5e-2)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--n-steps", type=int, default=4, help="ALF steps through the block")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads: these small ops gain little from more, and on a busy machine "
        "two spinning threads ran 10x slower than one",
    )
    args = parser.parse_args()
    if args.compile and args.engine != "vmap":
        parser.error("--compile applies to --engine vmap (Opacus's hooks run eagerly)")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = load_digits_split()
    model = DigitsModel(channels=args.channels, n_steps=args.n_steps)
    n_params = sum(p.numel() for p in model.parameters())
    privacy = privacy_settings(args, len(data["y_train"]))
    train = train_opacus if args.engine == "opacus" else train_vmap
    run = train(model, data, privacy, args)
    summary(run, privacy, args, n_params)


if __name__ == "__main__":
    main()
