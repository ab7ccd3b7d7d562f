"""The one place that asks which execution mode a solve runs in.

A solve runs in one of three modes, and each has its own loop primitive
(:mod:`mali_func.backends._loops`):

* **eager** (also under :mod:`torch.func` transforms, which run Python code): plain Python loops;
* **compile** (traced by ``torch.compile``): ``while_loop``, so the graph does not grow with the
  number of steps;
* **export** (traced by ``torch.export`` / ``torch.onnx.export(dynamo=True)``): ``scan``, forward
  only, which ONNX keeps as one loop node.

Whether a tensor's value may be read on the host (argument checks, the drift warning, the eager
controller's stop test) is decided here too. No other module asks ``torch.compiler``.
"""

from __future__ import annotations

import enum

import torch
from torch import Tensor


class Mode(enum.Enum):
    EAGER = "eager"
    COMPILE = "compile"
    EXPORT = "export"


def current() -> Mode:
    """The mode of the code being run or traced now."""
    if torch.compiler.is_exporting():
        return Mode.EXPORT
    if torch.compiler.is_compiling():
        return Mode.COMPILE
    return Mode.EAGER


def tracing() -> bool:
    """True under ``torch.compile`` or export (no host reads, no Python side effects)."""
    return current() is not Mode.EAGER


def host_view(x: Tensor) -> Tensor | None:
    """The plain tensor under :mod:`torch.func` wrappers (all samples of a ``vmap``), which eager
    code may read; ``None`` while tracing."""
    if tracing():
        return None
    while torch._C._functorch.is_functorch_wrapped_tensor(x):
        x = torch._C._functorch.get_unwrapped(x)
    return x


def is_concrete(x: Tensor) -> bool:
    """True for an ordinary eager tensor whose value may be read on the host."""
    if tracing():
        return False
    if torch._C._functorch.is_functorch_wrapped_tensor(x):
        return False
    if type(x) is torch.Tensor or isinstance(x, torch.nn.Parameter):
        return True
    # A subclass of the user's own is read like a tensor (its checks must not be skipped); fake
    # and functional tensors (tracing machinery) have no values to read.
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor

    return isinstance(x, torch.Tensor) and not isinstance(x, (FakeTensor, FunctionalTensor))


def under_transform() -> bool:
    """True inside a :mod:`torch.func` transform (``grad``, ``vmap``, ``jvp``...); also while
    ``torch.compile`` traces one (dynamo runs the check while tracing, and the transforms' levels
    are live then)."""
    if torch.compiler.is_compiling():
        return _traced_transform()
    return torch._C._functorch.maybe_current_level() is not None


def under_vmap() -> bool:
    """True inside :func:`torch.func.vmap` (per-sample code), eagerly or while traced."""
    if torch.compiler.is_compiling():
        return _traced_vmap()
    return _vmap_level()


@torch.compiler.assume_constant_result
def _traced_transform() -> bool:
    # Dynamo cannot trace the functorch query itself; it runs this function once while tracing
    # and keeps the answer as a constant of the graph (a graph traced under a transform is always
    # run under it).
    return torch._C._functorch.maybe_current_level() is not None


@torch.compiler.assume_constant_result
def _traced_vmap() -> bool:
    return _vmap_level()


def _vmap_level() -> bool:
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    vmap = torch._C._functorch.TransformType.Vmap
    return any(i.key() == vmap for i in retrieve_all_functorch_interpreters())
