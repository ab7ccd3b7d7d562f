"""Turning a user's ``func(t, y, *args)`` into a pure field ``field(t, y, params)``.

The gradient engine is a :class:`torch.autograd.Function`, which sees only the tensors passed to it:
it cannot look into closures or module attributes. So every tensor the vector field reads and may
need a gradient for must enter as an explicit input, and a tensor that does not is refused rather
than silently given no gradient:

* an :class:`torch.nn.Module` contributes its floating-point parameters and buffers, read at call
  time, so tensors substituted by :func:`torch.func.functional_call` are the ones passed on; the
  field then calls the module through ``functional_call`` with the tensors it is given. A plain
  tensor attribute that requires grad (``self.c = encoder(x)``) is refused by name
  (:func:`check_module_attributes`), also while ``torch.compile`` traces;
* a plain callable receives ``args`` as extra positional arguments, and is checked for tensors it
  captures that require grad: at ``t0`` (:func:`check_no_capture`) and, in eager MALI solves, at
  every evaluation of the forward pass (:func:`guard_captures`), so a tensor read only at later
  times is caught too.

Nothing is checked under ``no_grad``/``inference_mode``, where no gradient is asked for. Under
``torch.autocast`` the field runs in the autocast dtype and its output is cast back to the state's
dtype (:func:`autocast_field`).
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

        plain.source = func  # type: ignore[attr-defined]  # named in capture errors
        return BoundField(plain, tuple(args), tuple(f"args[{i}]" for i in range(n_args)))

    module = func
    # Batch-norm running statistics are state, not inputs: differentiating them (as torch.func
    # does with every input) is an error in batch_norm.
    stats = {
        id(b) for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for b in (m.running_mean, m.running_var) if b is not None
    }  # fmt: skip
    named = [
        (name, x)
        for name, x in (*module.named_parameters(), *module.named_buffers())
        if (x.is_floating_point() or x.is_complex()) and id(x) not in stats
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
    names = _captured_names(getattr(field, "source", None))
    notes = [f"captured: {', '.join(repr(n) for n in names)}"] if names else []
    notes += [f"found at t = {float(at):.6g}"] if at is not None else []
    where = f" ({'; '.join(notes)})" if notes else ""
    return TypeError(
        f"func reads a tensor that requires grad but is not passed explicitly{where}, so "
        "its gradient would be lost; pass such tensors as odeint(..., args=(tensor, ...)) and "
        "accept them as func(t, y, *args), or make func an nn.Module (a module closed over: "
        "pass the module itself as func)"
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
        raise _captured(bound.field)


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


def autocast_field(field: Field, device_type: str) -> Field:
    """``field`` run under the ``torch.autocast`` that is active now, wherever it is evaluated.

    Mixed precision: the field computes in the autocast dtype while the state (and the solver's
    arithmetic) keeps ``y0``'s dtype, so each output is cast back to its state component's dtype
    (and :func:`check_output` sees ``y0``'s dtype). The autocast context is re-entered inside
    every evaluation because MALI's reverse pass runs in the backward, after the user's
    ``autocast`` block has exited: the reverse then evaluates the same low-precision field as
    the forward, and the reconstruction stays consistent (drift about 1e-7 in float32).

    The gradients are those of backprop through the same low-precision field, with one
    difference in summation: autocast caches one low-precision copy of each weight for the
    whole ``autocast`` block, so backprop sums a weight's gradient over all field evaluations
    in that low precision, while MALI sums its per-step gradients in the weight's own dtype.
    With ``autocast(..., cache_enabled=False)`` the two agree to round-off; with the cache,
    parameter gradients differ by a few bfloat16 ulps (MALI's being the closer to float32).
    """
    dtype = torch.get_autocast_dtype(device_type)
    cache = torch.is_autocast_cache_enabled()

    def cast(t: Tensor, y: State, params: Params) -> State:
        with torch.autocast(device_type, dtype=dtype, cache_enabled=cache):
            out = field(t, y, params)
        return tuple(o.to(x.dtype) if o.dtype != x.dtype else o for o, x in zip(out, y))

    return cast
