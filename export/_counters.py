"""Python counters a model keeps on its modules (``self.nfe += 1``), held still while exporting.

torchdiffeq's examples count field evaluations in a plain attribute of the field. Training and
``torch.compile`` run such code, but ``torch.export`` (under ``torch.onnx.export`` and
:func:`mali_func.export.to_pt2`) refuses a module attribute the traced code writes ("non-nullified
side effect"). The counter is bookkeeping, not part of the model: :func:`counters_held` runs the
model once, finds the numeric attributes that changed, and for the export swaps each such module
to a subclass whose attribute is a property that reads the value and ignores writes. The modules
get their own class and values back afterwards; the counters do not count the export's calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn


def _numbers(model: nn.Module) -> dict[tuple[int, str], float]:
    return {
        (id(m), name): value
        for m in model.modules()
        for name, value in vars(m).items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


@contextlib.contextmanager
def counters_held(model: nn.Module, args: tuple[Tensor, ...]) -> Iterator[list[str]]:
    """For the duration, numeric module attributes that one call of ``model`` changes are
    read-only constants; yields their names (``"field.nfe"``). Call it under ``no_grad``."""
    before = _numbers(model)
    with torch.no_grad():
        model(*args)
    changed = {key for key, value in _numbers(model).items() if before.get(key, value) != value}
    names = {id(m): n for n, m in model.named_modules()}
    swapped: list[tuple[nn.Module, type, dict[str, float]]] = []
    for module in model.modules():
        attrs = {name: before[(id(module), name)] for (i, name) in changed if i == id(module)}
        if not attrs:
            continue
        cls = type(module)
        props = {
            name: property(lambda _s, v=v: v, lambda _s, _v: None) for name, v in attrs.items()
        }
        for name in attrs:
            del module.__dict__[name]
        module.__class__ = type(cls.__name__, (cls,), props)
        swapped.append((module, cls, attrs))
    try:
        yield [f"{names[id(m)]}.{a}".lstrip(".") for m, _, attrs in swapped for a in attrs]
    finally:
        for module, cls, attrs in swapped:
            module.__class__ = cls
            module.__dict__.update(attrs)
