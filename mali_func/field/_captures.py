"""Refusing tensors a field reads but the gradient engine would not see.

MALI's engine differentiates only the tensors passed to it (:mod:`mali_func.field._field`), so a
tensor that requires grad and reaches the field another way would silently get no gradient. Two
ways are
caught:

* a plain callable that captures such a tensor (a closure or a global): at ``t0``
  (:func:`check_no_capture`) and, in eager MALI solves, at every evaluation of the forward pass
  (:func:`guard_captures`), so a tensor read only at later times is caught too. Evaluating on
  detached inputs with grad enabled, an output that still requires grad can only come from a
  capture;
* under :mod:`torch.func` transforms, a tensor captured from an enclosing ``grad``: evaluated on
  inputs stripped of every wrapper, an output that an outer level still tracks read it;
* module fields: :mod:`mali_func.field._module_checks`.

Nothing is checked under ``no_grad``/``inference_mode``, where no gradient is asked for.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..backends._mode import host_view, tracing, under_transform, under_vmap
from ..schemes import Field, Params, State
from ._field import BoundField
from ._module_state import first_call


def _needs_grad(value: Any) -> bool:
    """A tensor that requires grad, or a module with a parameter that does."""
    if isinstance(value, Tensor):
        return value.requires_grad
    if isinstance(value, nn.Module):
        return any(p.requires_grad for p in value.parameters())
    return False


def _captured_names(func: Any) -> list[str]:
    """Names of the variables ``func``'s own code reads from its closure or its globals that
    hold a tensor requiring grad or a module with trainable parameters (best effort: what a
    function it calls captures is not seen)."""
    code, names = getattr(func, "__code__", None), []
    if code is None:  # a callable object: its attributes, then its __call__'s code
        names = [f"self.{k}" for k, v in getattr(func, "__dict__", {}).items() if _needs_grad(v)]
        call = next((vars(c)["__call__"] for c in type(func).__mro__ if "__call__" in vars(c)), 0)
        return names + (_captured_names(call) if hasattr(call, "__code__") else [])
    for name, cell in zip(code.co_freevars, getattr(func, "__closure__", None) or ()):
        try:
            if _needs_grad(cell.cell_contents):
                names.append(name)
        except ValueError:  # an empty cell
            continue
    scope = getattr(func, "__globals__", {})
    names += [n for n in code.co_names if _needs_grad(scope.get(n)) and n not in names]
    return names


def _captured(field: Field, at: Tensor | None = None) -> TypeError:
    """The capture error, naming the captured variables where they can be found and the time
    of the evaluation that read them (later than ``t0``)."""
    # While dynamo traces, a closure's cells and a function's globals cannot be inspected
    # (fullgraph raises "Unsupported" instead of this error): the names come in eager code only.
    names = [] if tracing() else _captured_names(getattr(field, "source", None))
    notes = [f"captured: {', '.join(repr(n) for n in names)}"] if names else []
    notes += [f"found at t = {float(at):.6g}"] if at is not None else []
    where = f" ({'; '.join(notes)})" if notes else ""
    return TypeError(
        f"func reads a tensor that requires grad but is not passed explicitly{where}, so "
        "its gradient would be lost; pass such tensors as odeint(..., args=(tensor, ...)) and "
        "accept them as func(t, y, *args), or make func an nn.Module (a module closed over: "
        "pass the module itself as func), or, in eager code, list them as torchdiffeq does: "
        "adjoint_params=tuple(module.parameters())"
    )


def check_no_capture(bound: BoundField, t0: Tensor, y0: State) -> int:
    """Raise when a plain callable reads a tensor that requires grad but is not in ``args``.

    Evaluates the field once on detached inputs with grad enabled: an output that still requires
    grad depends on a captured tensor, whose gradient the engine would silently drop. Under
    ``no_grad``/``inference_mode`` no gradient is asked for, so nothing is checked. Returns the
    number of field evaluations made (0 or 1).
    """
    if not torch.is_grad_enabled():
        return 0
    if _reads_hidden(bound, t0, y0):
        raise _captured(bound.field)
    if under_transform() and not tracing():
        if _reads_outer_capture(bound, t0, y0):
            raise _captured(bound.field)
        return 2
    return 1


def _tracked_outside(x: Tensor) -> bool:
    """Whether a level under ``x``'s outermost :mod:`torch.func` wrapper tracks a gradient of
    it (computations on bare tensors carry wrappers of every live level, none tracking)."""
    while torch._C._functorch.is_functorch_wrapped_tensor(x):
        x = torch._C._functorch.get_unwrapped(x)
        if x.requires_grad:
            return True
    return False


def _reads_outer_capture(bound: BoundField, t0: Tensor, y0: State) -> bool:
    """Under nested ``grad``/``vjp`` transforms: evaluate the field on its inputs stripped of
    every wrapper; an output that an outer level still tracks read a tensor captured from an
    enclosing transform (``grad(W -> |grad_y solve(W)|^2)``), whose gradient at that level the
    engine would drop. Not under ``vmap``, where stripping would drop the batch dimensions (a
    capture there is not seen: README)."""
    if under_vmap():
        return False

    def bare(x: Tensor) -> Tensor:
        plain = host_view(x)  # every wrapper removed (not None: not tracing here)
        assert plain is not None
        return plain.detach()

    ys = tuple(bare(y).clone() for y in y0)
    with torch.enable_grad(), bound.replaying():
        out = bound.field(bare(t0), ys, tuple(bare(p) for p in bound.params))
    return any(_tracked_outside(o) for o in out)


def _reads_hidden(bound: BoundField, t0: Tensor, y0: State) -> bool:
    """Evaluate the field on detached inputs and tensors with grad enabled (batch statistics not
    updated): its output then requires grad only through a tensor the solve is not given."""
    detached = tuple(y.detach().clone() for y in y0)
    params = tuple(p.detach() for p in bound.params)
    with torch.enable_grad(), bound.replaying():
        out = first_call(bound.field, t0.detach(), detached, params)  # never the caller's y0
    return any(o.requires_grad for o in out)


def _plain(x: Tensor) -> Tensor:
    """``x`` cut from autograd: ``x.detach()`` only when it requires grad (one view fewer)."""
    return x.detach() if x.requires_grad else x


def guard_captures(field: Field) -> Field:
    """``field``, checked at every evaluation of a no-grad forward pass (MALI's, eager) for a
    captured tensor that requires grad: one read only at later times (``w if t > 0.5 else 1``)
    escapes :func:`check_no_capture` at ``t0``. Inputs are cut from autograd and grad is enabled,
    so an output that requires grad can only come from a capture; nothing else builds a graph.

    Evaluations with grad enabled (MALI's reverse pass, whose VJPs need the graph) pass through.
    Cost: a grad-mode switch and a few ``requires_grad`` reads per evaluation, about 5 us
    (measured: +0.5% to +0.8% CPU time of an eager MALI training step on benchmarks/core.py's
    problem, MLP 64-256-64, batch 256, 1000 ALF steps); the parameters' detached views are made
    once per solve, not per step.
    """
    cache: list[tuple[Params, Params]] = []

    def guarded(t: Tensor, y: State, params: Params) -> State:
        if torch.is_grad_enabled():
            return field(t, y, params)
        if not cache or cache[0][0] is not params:
            cache[:] = [(params, tuple(_plain(p) for p in params))]
        with torch.enable_grad():
            out = field(_plain(t), tuple(_plain(x) for x in y), cache[0][1])
        if any(o.requires_grad for o in out):
            raise _captured(field, t)
        return out

    return guarded
