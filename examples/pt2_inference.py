"""Run an AOTInductor package of a mali-func model with torch alone: no model code imported.

    python -m mali_func.export digits_parts:DigitsModel -w outputs/digits_ode.pt -s 1,1,8,8 \\
        --format pt2 -o outputs/digits.pt2                        # from examples/, writes it
    python examples/pt2_inference.py outputs/digits.pt2            # random input (4, 1, 8, 8)
    python examples/pt2_inference.py model.pt2 --shape 256,1,8,8 --input x.pt

The package is what ``mali_func.export.to_pt2`` (or the CLI with ``--format pt2``) wrote: the
model's forward (fixed-grid solves as a ``scan``, adaptive ones as the controller's
``while_loop``) compiled ahead of time. Only torch is imported; a missing, truncated or foreign
file gives an error that names it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch


def load(path: Path) -> Any:  # torch's package runner has no public type
    """The package's runnable model, or ``SystemExit`` naming the file."""
    if not path.is_file():
        raise SystemExit(f"error: no such .pt2 package: {path}")
    try:
        return torch._inductor.aoti_load_package(str(path))
    except Exception as err:  # zip, C++ and runtime errors alike
        raise SystemExit(f"error: cannot load the .pt2 package {path}: {err}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path, help="the .pt2 file")
    parser.add_argument("--shape", default="4,1,8,8", help="random input shape (default 4,1,8,8)")
    parser.add_argument("--input", type=Path, help="a tensor saved with torch.save instead")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    runner = load(args.package)
    if args.input is not None:
        try:
            x = torch.load(args.input, weights_only=True)
        except Exception as err:
            parser.error(f"--input: cannot load {args.input}: {err}")
    else:
        shape = tuple(int(d) for d in args.shape.split(","))
        x = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed))
    with torch.no_grad():
        start = time.perf_counter()
        try:
            out = runner(x)
        except Exception as err:  # AOTInductor's shape checks raise with a C++ trace
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise SystemExit(
                f"error: the package cannot run on an input of shape {tuple(x.shape)} "
                f"({first}); give the shape it was exported for (--shape, batch axis first)"
            ) from None
        seconds = time.perf_counter() - start
    y = out[0] if isinstance(out, (tuple, list)) else out
    print(f"output {tuple(y.shape)} in {1e3 * seconds:.2f} ms")
    if y.ndim == 2:
        print("predicted classes:", y.argmax(dim=1).tolist())
    return 0


if __name__ == "__main__":
    sys.exit(main())
