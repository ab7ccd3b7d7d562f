"""Turning a user's ``func(t, y, *args)`` into a pure field ``field(t, y, params)``.

The gradient engine is a :class:`torch.autograd.Function`, which sees only the tensors passed to it:
it cannot look into closures or module attributes. So every tensor the vector field reads and may
need a gradient for must enter as an explicit input:

* an :class:`torch.nn.Module` contributes its floating-point parameters and buffers, read at call
  time, so tensors substituted by :func:`torch.func.functional_call` are the ones passed on; the
  field then calls the module through ``functional_call`` with the tensors it is given;
* a plain callable receives ``args`` as extra positional arguments, and is checked once per solve
  for tensors it captures that require grad, which would otherwise silently get no gradient.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .schemes import Field, Params, State


def _as_state(out: Any, *, tuple_state: bool, n: int) -> State:
    if tuple_state:
        if not isinstance(out, (tuple, list)) or len(out) != n:
            raise TypeError(
                f"func must return a tuple of {n} tensors like y0, got {type(out).__name__}"
                + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else "")
            )
        parts = tuple(out)
    else:
        parts = (out,)
    for part in parts:
        if not isinstance(part, Tensor):
            raise TypeError(f"func must return tensors like y0, got {type(part).__name__}")
    return parts


@dataclass(frozen=True, eq=False)
class BoundField:
    """A pure field together with the tensors it reads."""

    field: Field
    params: Params
    names: tuple[str, ...]
    module: nn.Module | None = None

    @contextlib.contextmanager
    def replaying(self) -> Iterator[None]:
        """Entered while the reverse pass re-evaluates the field: batch-norm layers in training
        mode normalise with the batch's statistics as in the forward pass, but do not update their
        running statistics a second time (so buffers match ``gradient="backprop"``)."""
        norms = [] if self.module is None else [
            m for m in self.module.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
            and m.track_running_stats
        ]  # fmt: skip
        for m in norms:
            m.track_running_stats = False
        try:
            yield
        finally:
            for m in norms:
                m.track_running_stats = True


def check_replayable(func: Any, gradient: str) -> None:
    """MALI re-evaluates the field backwards in time: a random layer cannot replay its draw."""
    if gradient != "mali" or not isinstance(func, nn.Module):
        return
    for name, m in func.named_modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0:
            raise ValueError(
                f"func's {type(m).__name__} layer {name or '(the field)'!r} is in training mode: "
                "the MALI reverse pass re-evaluates the field and cannot replay its random "
                "mask, so the gradient would be wrong; call .eval() on it for the solve, or use "
                "gradient='backprop'"
            )


def bind_field(
    func: Callable[..., Any], *, tuple_state: bool, n_state: int, args: Sequence[Tensor]
) -> BoundField:
    """Make the pure field of ``func`` and collect the tensors it must receive explicitly."""
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y, *args), got {type(func).__name__}")
    for i, a in enumerate(args):
        if not isinstance(a, Tensor):
            raise TypeError(f"args[{i}] must be a torch.Tensor, got {type(a).__name__}")
    n_args = len(args)

    def unpack(y: State) -> Any:
        return y if tuple_state else y[0]

    if not isinstance(func, nn.Module):

        def plain(t: Tensor, y: State, params: Params) -> State:
            out = func(t, unpack(y), *params)
            return _as_state(out, tuple_state=tuple_state, n=n_state)

        return BoundField(plain, tuple(args), tuple(f"args[{i}]" for i in range(n_args)))

    module = func
    named = [
        (name, x)
        for name, x in (*module.named_parameters(), *module.named_buffers())
        if x.is_floating_point() or x.is_complex()
    ]
    names = tuple(name for name, _ in named)
    own = tuple(x for _, x in named)
    m = len(own)

    def modular(t: Tensor, y: State, params: Params) -> State:
        tensors, extra = params[:m], params[m:]
        if all(a is b for a, b in zip(tensors, own)):
            out = module(t, unpack(y), *extra)
        else:
            substituted = dict(zip(names, tensors))
            out = torch.func.functional_call(module, substituted, (t, unpack(y), *extra))
        return _as_state(out, tuple_state=tuple_state, n=n_state)

    names = (*names, *(f"args[{i}]" for i in range(n_args)))
    return BoundField(modular, (*own, *args), names, module)


def check_output(out: State, y0: State) -> None:
    """The field's value at ``(t0, y0)`` must match ``y0`` component by component."""
    for i, (o, y) in enumerate(zip(out, y0)):
        where = "" if len(y0) == 1 else f"[{i}]"
        if o.shape != y.shape or o.dtype != y.dtype:
            raise ValueError(
                f"func must return a tensor of the shape and dtype of y0{where}: expected "
                f"shape {tuple(y.shape)} and dtype {y.dtype}, got shape {tuple(o.shape)} "
                f"and dtype {o.dtype}"
            )


_CAPTURED = (
    "func reads a tensor that requires grad but is not passed explicitly, so its gradient "
    "would be lost; pass such tensors as odeint(..., args=(tensor, ...)) and accept them as "
    "func(t, y, *args), or make func an nn.Module"
)


def check_no_capture(bound: BoundField, t0: Tensor, y0: State) -> None:
    """Raise when a plain callable reads a tensor that requires grad but is not in ``args``.

    Evaluates the field once on detached inputs with grad enabled: an output that still requires
    grad depends on a captured tensor, whose gradient the engine would silently drop. Under
    ``no_grad``/``inference_mode`` no gradient is asked for, so nothing is checked.
    """
    if not torch.is_grad_enabled():
        return
    detached = tuple(y.detach() for y in y0)
    params = tuple(p.detach() for p in bound.params)
    with torch.enable_grad():
        out = bound.field(t0.detach(), detached, params)
    if any(o.requires_grad for o in out):
        raise TypeError(_CAPTURED)


def guard_captures(field: Field) -> Field:
    """``field``, checked at every evaluation of a no-grad forward pass (MALI's, eager) for a
    captured tensor that requires grad: one read only at later times (``w if t > 0.5 else 1``)
    escapes :func:`check_no_capture` at ``t0``. Inputs are detached and grad is enabled, so an
    output that requires grad can only come from a capture; nothing else builds a graph."""

    def guarded(t: Tensor, y: State, params: Params) -> State:
        if torch.is_grad_enabled():  # the reverse pass: its VJPs need the graph
            return field(t, y, params)
        with torch.enable_grad():
            out = field(t.detach(), tuple(x.detach() for x in y), tuple(p.detach() for p in params))
        if any(o.requires_grad for o in out):
            raise TypeError(_CAPTURED + " (found at t = " + f"{float(t):.6g})")
        return out

    return guarded


def check_module_attributes(module: nn.Module) -> None:
    """Raise for a tensor attribute that requires grad but is neither a parameter nor a buffer
    (a conditioning vector set from an encoder, a hypernetwork's output): the engine passes only
    parameters and buffers explicitly, so its gradient would be lost."""
    if not torch.is_grad_enabled():
        return
    for name, sub in module.named_modules():
        for attr, value in vars(sub).items():
            if isinstance(value, Tensor) and value.requires_grad:
                where = f"{name}.{attr}" if name else attr
                raise TypeError(
                    f"func.{where} is a tensor that requires grad but is neither a parameter "
                    "nor a buffer, so MALI would lose its gradient; register it with "
                    f"register_buffer('{attr}', tensor) (buffers are differentiated), make it an "
                    "nn.Parameter, or pass it through odeint(..., args=(tensor,)) and accept it "
                    "as forward(t, y, *args)"
                )


def autocast_field(field: Field, device_type: str) -> Field:
    """``field`` run under the ``torch.autocast`` that is active now, wherever it is evaluated.

    Mixed precision: the field computes in the autocast dtype while the state (and the solver's
    arithmetic) keeps ``y0``'s dtype, so each output is cast back to its state component's dtype.
    The autocast context is re-entered inside every evaluation because MALI's reverse pass runs
    in the backward, after the user's ``autocast`` block has exited: the reverse then evaluates
    the same low-precision field as the forward, and the reconstruction stays consistent.
    """
    dtype = torch.get_autocast_dtype(device_type)

    def cast(t: Tensor, y: State, params: Params) -> State:
        with torch.autocast(device_type, dtype=dtype):
            out = field(t, y, params)
        return tuple(o.to(x.dtype) if o.dtype != x.dtype else o for o, x in zip(out, y))

    return cast
