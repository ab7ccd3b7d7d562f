"""Learn a ball's coefficient of restitution from the times it hits the floor.

A ball dropped from height ``h`` falls under gravity (``x' = v``, ``v' = -g``); at each impact
(the event ``x = 0``, found by :func:`mali_func.odeint_event`) its speed is multiplied by the
coefficient of restitution ``e``. Observed: the first ``n`` impact times of a ball with
``e = 0.8``. Learned: ``e`` (and ``h``), by L-BFGS through the event times, whose
gradients come from the implicit function theorem on the discrete solve. The exact impact times
are ``t_1 = sqrt(2h/g)`` and ``t_{k+1} = t_k + 2 e^k sqrt(2h/g)``, so the fit can be checked.

    python examples/bouncing_ball.py            # up to 30 L-BFGS iterations, prints the fit
    python examples/bouncing_ball.py --steps 3  # a quick run
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import Tensor

from mali_func import odeint_event

G = 9.8


def fall(t: Tensor, state: Tensor) -> Tensor:
    """Free fall: ``(x, v)' = (v, -g)``."""
    return torch.stack([state[1], torch.full_like(state[1], -G)])


def floor(t: Tensor, state: Tensor) -> Tensor:
    """The event: the height crosses zero."""
    return state[0]


def impact_times(height: Tensor, restitution: Tensor, n: int) -> Tensor:
    """The first ``n`` times the ball hits the floor, differentiable in both parameters."""
    t = torch.zeros((), dtype=height.dtype)
    state = torch.stack([height, torch.zeros_like(height)])
    times = []
    for _ in range(n):
        t, solution = odeint_event(fall, state, t, event_fn=floor, method="dopri5", rtol=1e-8,
                                   atol=1e-10, coupling=None, gradient="checkpoint")  # fmt: skip
        times.append(t)
        after = solution[-1]
        # Bounce: back on the floor, the velocity reversed and damped.
        state = torch.stack([torch.zeros_like(after[0]), -restitution * after[1]])
    return torch.stack(times)


def exact_times(height: float, restitution: float, n: int) -> list[float]:
    first = math.sqrt(2 * height / G)
    times = [first]
    for k in range(1, n):
        times.append(times[-1] + 2 * restitution**k * first)
    return times


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="L-BFGS iterations")
    parser.add_argument("--bounces", type=int, default=4, help="impact times observed")
    args = parser.parse_args(argv)
    observed = torch.tensor(exact_times(1.5, 0.8, args.bounces), dtype=torch.float64)
    height = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    restitution = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([height, restitution], max_iter=args.steps,
                                  line_search_fn="strong_wolfe")  # fmt: skip

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = (impact_times(height, restitution, args.bounces) - observed).square().mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    loss = closure().detach()
    result = {"height": float(height), "restitution": float(restitution), "loss": float(loss)}
    print(
        f"fitted height {result['height']:.4f} (true 1.5), restitution "
        f"{result['restitution']:.4f} (true 0.8), loss {result['loss']:.2e}"
    )
    return result


if __name__ == "__main__":
    main()
