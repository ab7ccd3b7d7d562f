"""Refusing tensors a module field reads but the gradient engine would not see.

The module half of :mod:`mali_func.field._captures`: an :class:`torch.nn.Module` attribute that
requires grad but is neither a parameter nor a buffer (``self.c = encoder(x)``), found by reading
Python attributes and ``requires_grad`` flags only (:func:`check_module_attributes`, so it also runs
while ``torch.compile`` traces); and any other tensor a module's output depends on that requires
grad and is none of the solve's inputs (a global tensor, a layer kept in a plain list), found in
the autograd graph of its first evaluation in eager code (:func:`check_module_inputs`) or by one
detached evaluation while dynamo traces (:func:`check_module_detached`). A leaf the field makes
from its own input's memory (a Hamiltonian field's ``y.detach().requires_grad_()``) is not such a
tensor: backprop does not reach past it either.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..schemes import State
from ._captures import _captured_names, _reads_hidden
from ._field import BoundField

# What every nn.Module keeps in its ``__dict__`` (registries, hooks, flags): not user tensors.
_MODULE_INTERNALS = frozenset(vars(nn.Module()))


def _tensors_in(path: str, value: Any) -> Iterator[tuple[str, Tensor]]:
    """The tensors of one attribute: itself, or the items of a list, tuple or dict it holds."""
    if isinstance(value, Tensor):
        yield path, value
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            if isinstance(item, Tensor):
                yield f"{path}[{i}]", item
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, Tensor):
                yield f"{path}[{key!r}]", item


def module_attributes(module: nn.Module) -> dict[str, Tensor]:
    """Tensors held by ``module`` or a submodule that require grad but are neither parameters nor
    buffers, by attribute path (``"c"``, ``"enc.h"``, ``"conds[0]"``): inputs of the field that
    the engine, which differentiates only the tensors passed to it, would not see.

    Empty under ``no_grad``/``inference_mode`` (no gradient is asked for). Plain attributes, and
    the items of lists, tuples and dicts in them, are searched; a tensor that is also one of the
    module's parameters or buffers (a list holding ``self.lin.weight``) is not an extra input.
    """
    if not torch.is_grad_enabled():
        return {}
    found: dict[str, Tensor] = {}
    for name, sub in module.named_modules():
        prefix = f"{name}." if name else ""
        for attr, value in vars(sub).items():
            if attr in _MODULE_INTERNALS:
                continue
            for path, x in _tensors_in(prefix + attr, value):
                if x.requires_grad:
                    found[path] = x
    if found:  # rare: only then compare with the registered tensors
        registered = [*module.parameters(), *module.buffers()]
        found = {k: x for k, x in found.items() if not any(x is r for r in registered)}
    return found


def check_module_attributes(module: nn.Module, before: dict[str, Tensor] | None = None) -> None:
    """Raise for a tensor attribute that requires grad but is neither a parameter nor a buffer
    (a conditioning vector set from an encoder, a hypernetwork's output): MALI passes only
    parameters and buffers to its engine, so that tensor's gradient would be lost.

    ``before`` is :func:`module_attributes` taken before the field's first evaluation; then only
    the attributes that are still the same tensor after it are refused. An attribute the field
    assigns itself while it runs is computed from the tensors it is given, not an input: the
    ``weight`` that ``torch.nn.utils.weight_norm`` and ``spectral_norm`` recompute in a forward
    pre-hook, or an output kept for a regulariser (``self.kinetic = f.pow(2).mean()``), which
    after one training step still requires grad and would otherwise be a false alarm. Without
    ``before`` every such tensor is refused.

    The check reads Python attributes and ``requires_grad`` flags only, so it also runs while
    ``torch.compile`` traces (with ``fullgraph=True`` the TypeError then appears in dynamo's
    "Observed exception" report).
    """
    found = module_attributes(module)
    if before is not None:
        found = {k: x for k, x in found.items() if k in before and before[k] is x}
    if not found:
        return
    path = next(iter(found))
    owner, _, attr = path.rpartition(".")
    owner = f"func.{owner}" if owner else "func"
    others = [f"func.{k}" for k in found if k != path]
    also = f" (also {', '.join(others)})" if others else ""
    if "[" in attr:
        how = "pass it through odeint(..., args=(tensor,)) and accept it as forward(t, y, *args)"
    else:
        how = (
            f"make it a buffer: declare it once with {owner}.register_buffer('{attr}', None, "
            f"persistent=False) (in __init__, or after `del {owner}.{attr}`), then assign it as "
            "before (buffers are differentiated); or make it an nn.Parameter, or pass it through "
            "odeint(..., args=(tensor,)) and accept it as forward(t, y, *args)"
        )
    raise TypeError(
        f"func.{path} is a tensor that requires grad but is neither a parameter nor a buffer"
        f"{also}, so gradient='mali', which differentiates only the tensors passed to it, would "
        f"lose its gradient; {how}; or use gradient='backprop'"
    )


def _hidden_leaves(outputs: State, inputs: tuple[Tensor, ...]) -> list[Tensor]:
    """Leaves that require grad which the autograd graph of ``outputs`` reaches without passing
    through one of ``inputs`` (the tensors the solve differentiates)."""
    leaves = {id(x) for x in inputs if x.grad_fn is None}
    # A leaf made from an input's own memory (``y.detach().requires_grad_()``, as Hamiltonian
    # fields do before differentiating their energy) carries no gradient of its own to lose:
    # backprop does not reach past it either.
    aliases = {_alias(x) for x in inputs if x.layout == torch.strided}
    # An input computed in the graph is an edge: (its grad_fn, which of that node's outputs it
    # is); another output of the same node (a sibling from unbind or split) is not an input.
    stops = {(id(x.grad_fn), x.output_nr) for x in inputs if x.grad_fn is not None}
    stack = [(o.grad_fn, o.output_nr) for o in outputs if o.grad_fn is not None]
    seen: set[int] = set()
    found: list[Tensor] = []
    while stack:
        node, nr = stack.pop()
        if (id(node), nr) in stops or id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)  # an AccumulateGrad node: a leaf
        if isinstance(variable, Tensor):
            own = variable.layout == torch.strided and _alias(variable) in aliases
            if id(variable) not in leaves and not own:
                found.append(variable)
            continue
        stack.extend((n, i) for n, i in node.next_functions if n is not None)
    return found


def _alias(x: Tensor) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """Where ``x``'s elements are: the same for a detached alias of it, not for another view of
    its base (``unbind``'s other outputs)."""
    return x.data_ptr(), tuple(x.shape), tuple(x.stride())


def _holders(module: nn.Module, leaf: Tensor) -> list[str]:
    """Attribute paths of modules kept in plain lists, tuples or dicts (not registered as
    submodules) whose parameters or buffers include ``leaf``."""
    paths = []
    for name, sub in module.named_modules():
        for attr, value in vars(sub).items():
            if attr in _MODULE_INTERNALS or not isinstance(value, (list, tuple, dict)):
                continue
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(item, nn.Module):
                    if any(x is leaf for x in (*item.parameters(), *item.buffers())):
                        paths.append(f"{name + '.' if name else ''}{attr}[{key!r}]")
    return paths


def check_module_inputs(module: nn.Module, outputs: State, inputs: tuple[Tensor, ...]) -> None:
    """Raise when a module field's output depends on a tensor that requires grad and is none of
    the solve's inputs (its parameters, buffers, ``args``, ``y0``, ``t``): a global tensor, or a
    layer held in a plain list. ``gradient="mali"`` would lose that tensor's gradient.

    Found by walking the autograd graph of one evaluation (eager code, the first evaluation of
    the solve); a tensor read only at later times is not seen.
    """
    hidden = _hidden_leaves(outputs, inputs)
    if hidden:
        raise _hidden_error(module, hidden[0])


def check_module_detached(bound: BoundField, t0: Tensor, y0: State) -> None:
    """:func:`check_module_inputs` where the autograd graph cannot be read (``torch.compile``
    traces): one evaluation on detached inputs (:func:`_reads_hidden`)."""
    assert bound.module is not None
    if _reads_hidden(bound, t0, y0):
        raise _hidden_error(bound.module, None)


def _hidden_error(module: nn.Module, leaf: Tensor | None) -> TypeError:
    names = [] if leaf is None else [f"func.{p}" for p in _holders(module, leaf)]
    forward = getattr(type(module), "forward", None)
    names += _captured_names(forward) if forward is not None else []
    where = f" ({', '.join(repr(n) for n in names)})" if names else ""
    shape = "" if leaf is None else f" of shape {tuple(leaf.shape)}"
    return TypeError(
        f"func's output depends on a tensor{shape} that requires grad but "
        f"is none of func's parameters or buffers, nor in args{where}, so gradient='mali', "
        "which differentiates only the tensors passed to it, would lose its gradient; register "
        "it in the module (a layer held in a list: nn.ModuleList or nn.ModuleDict; a tensor: "
        "register_buffer or nn.Parameter), or pass it through odeint(..., args=(tensor,)) and "
        "accept it as forward(t, y, *args); or use gradient='backprop'"
    )
