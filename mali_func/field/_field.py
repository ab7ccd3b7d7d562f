"""Turning a user's ``func(t, y, *args)`` into a pure field ``field(t, y, params)``.

The gradient engine is a :class:`torch.autograd.Function`, which sees only the tensors passed to it:
it cannot look into closures or module attributes. So every tensor the vector field reads and may
need a gradient for must enter as an explicit input:

* an :class:`torch.nn.Module` contributes its floating-point parameters and buffers, read at call
  time, so tensors substituted by :func:`torch.func.functional_call` are the ones passed on; the
  field then calls the module through ``functional_call`` with the tensors it is given;
* a plain callable receives ``args`` as extra positional arguments.

A tensor that does not enter this way is refused rather than silently given no gradient
(:mod:`mali_func.field._captures`). Under ``torch.autocast`` the field runs in the autocast dtype
and its output is cast back to the state's dtype (:func:`autocast_field`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

from ..schemes import Field, Params, State
from ._module_state import power_iterations


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
    def frozen(self) -> Iterator[None]:
        """Entered for the steps of a solve (after its first evaluation) and its backward: power
        iterations of spectral normalization in training mode (``n_power_iterations``, of the
        parametrization or of the older hook) are paused, so every evaluation of one solve uses
        the same normalized weight: one power iteration per solve, the first evaluation's. The
        forward, MALI's reverse, checkpointed replays and backprop then see one computation."""
        owners = [] if self.module is None else power_iterations(self.module)
        saved = [o.n_power_iterations for o in owners]
        for o in owners:
            o.n_power_iterations = 0
        try:
            yield
        finally:
            for o, n in zip(owners, saved):
                o.n_power_iterations = n

    @contextlib.contextmanager
    def replaying(self) -> Iterator[None]:
        """Entered while the reverse pass re-evaluates the field: batch-norm layers in training
        mode normalise with the batch's statistics as in the forward pass, but do not update their
        running statistics a second time (so buffers match ``gradient="backprop"``); spectral
        normalization keeps the solve's weight (:meth:`frozen`)."""
        with self.frozen(), self._norms_frozen():
            yield

    @contextlib.contextmanager
    def _norms_frozen(self) -> Iterator[None]:
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


def check_replayable(func: Any, gradient: Any) -> None:
    """MALI re-evaluates the field backwards in time: a random layer cannot replay its draw
    (``gradient``: a strategy object; one that ``rebuilds`` the steps backwards)."""
    if not gradient.rebuilds or not isinstance(func, nn.Module):
        return
    for name, m in func.named_modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0:
            raise ValueError(
                f"func's {type(m).__name__} layer {name or '(the field)'!r} is in training mode: "
                "the MALI reverse pass re-evaluates the field and cannot replay its random "
                "mask, so the gradient would be wrong; call .eval() on it for the solve, or use "
                "gradient='backprop'"
            )


def _same_memory(a: Tensor, b: Tensor) -> bool:
    """``a`` is a detached alias of ``b`` (same memory, shape and strides): calling a module that
    holds ``b`` computes with ``a``'s values."""
    if type(a) is not Tensor or a.requires_grad or not isinstance(b, Tensor):
        return False
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()


def _slots(
    module: nn.Module, names: tuple[str, ...]
) -> tuple[tuple[dict[str, Any], str, bool] | None, ...]:
    """For each tensor name, the registry (``_parameters`` or ``_buffers`` of a submodule) that
    holds it, its key there and whether it is a parameter; ``None`` for a ScriptModule."""
    if isinstance(module, torch.jit.ScriptModule):
        return (None,) * len(names)
    slots = []
    for name in names:
        owner, _, key = name.rpartition(".")
        sub = module.get_submodule(owner)
        parameter = key in sub._parameters
        slots.append((sub._parameters if parameter else sub._buffers, key, parameter))
    return tuple(slots)


def bind_field(
    func: Callable[..., Any],
    *,
    tuple_state: bool,
    n_state: int,
    args: Sequence[Tensor],
    declared: Sequence[Tensor] = (),
) -> BoundField:
    """Make the pure field of ``func`` and collect the tensors it must receive explicitly.

    ``declared``: tensors a plain callable reads from its closure or globals, listed by the
    caller (torchdiffeq's ``adjoint_params``): differentiated as inputs, in eager code, through
    the very tensors the function reads (:mod:`mali_func.field._captures`)."""
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y, *args), got {type(func).__name__}")
    for i, a in enumerate(args):
        if not isinstance(a, Tensor):
            raise TypeError(f"args[{i}] must be a torch.Tensor, got {type(a).__name__}")
    if not isinstance(func, nn.Module):
        return _bind_plain(func, tuple_state, n_state, tuple(args), tuple(declared))
    return _bind_module(func, tuple_state, n_state, tuple(args))


def _unpacker(tuple_state: bool) -> Callable[[State], Any]:
    """What the user's field receives: the state tuple, or its one tensor."""
    return (lambda y: y) if tuple_state else (lambda y: y[0])


def _bind_plain(
    func: Callable[..., Any], tuple_state: bool, n_state: int, args: tuple[Tensor, ...],
    declared: tuple[Tensor, ...],
) -> BoundField:  # fmt: skip
    """A plain callable: its inputs are ``args`` (and the ``declared`` tensors it reads)."""
    unpack, n_args = _unpacker(tuple_state), len(args)

    def plain(t: Tensor, y: State, params: Params) -> State:
        out = func(t, unpack(y), *params)
        return _as_state(out, tuple_state=tuple_state, n=n_state)

    plain.source = func  # type: ignore[attr-defined]  # named in capture errors
    if not declared:
        return BoundField(plain, args, tuple(f"args[{i}]" for i in range(n_args)))

    def closed(t: Tensor, y: State, params: Params) -> State:
        return plain(t, y, params[:n_args])  # the declared tensors are read, not passed

    closed.source, closed.declared = func, True  # type: ignore[attr-defined]
    names = (*(f"args[{i}]" for i in range(n_args)),
             *(f"adjoint_params[{i}]" for i in range(len(declared))))  # fmt: skip
    return BoundField(closed, (*args, *declared), names)


def _module_tensors(module: nn.Module) -> tuple[tuple[str, ...], tuple[Tensor, ...]]:
    """The floating parameters and buffers a module's solve differentiates, once each, without
    batch-norm running statistics (state, not inputs: differentiating them, as torch.func does
    with every input, is an error in batch_norm); refuses uninitialized lazy ones."""
    stats = {
        id(b) for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for b in (m.running_mean, m.running_var) if b is not None
    }  # fmt: skip
    named: list[tuple[str, Tensor]] = []
    lazy: list[str] = []
    for name, x in (*module.named_parameters(), *module.named_buffers()):
        if isinstance(x, (UninitializedParameter, UninitializedBuffer)):
            lazy.append(name)
        # Once each (a tensor both a parameter and a buffer: functional_call ties the names).
        elif (x.is_floating_point() or x.is_complex()) and id(x) not in stats:
            stats.add(id(x))
            named.append((name, x))
    if lazy:
        raise ValueError(
            f"func has uninitialized lazy parameters ({', '.join(lazy)}): the engine must be "
            "given every tensor before the solve; call func(t0, y0) once first, which "
            "initializes them"
        )
    return tuple(name for name, _ in named), tuple(x for _, x in named)


def _bind_module(
    module: nn.Module, tuple_state: bool, n_state: int, args: tuple[Tensor, ...]
) -> BoundField:
    """A module: its own tensors (substituted by ``functional_call`` when the engine passes
    others), then ``args``."""
    unpack = _unpacker(tuple_state)
    names, own = _module_tensors(module)
    m = len(own)
    # Where each parameter lives, to see at every call whether the module holds it now: after
    # torch.func.functional_call returns, MALI's backward still passes the substituted tensors.
    # A buffer counts as held while it is the one bound here too (a module may reassign its
    # buffers as it runs, e.g. running statistics).
    slots = _slots(module, names)

    def held(a: Tensor, bound: Tensor, slot: tuple[dict[str, Any], str, bool] | None) -> bool:
        if slot is None:  # a ScriptModule: functional_call cannot substitute its tensors
            return a is bound or _same_memory(a, bound)
        table, key, parameter = slot
        return a is table.get(key) or (not parameter and a is bound)

    def modular(t: Tensor, y: State, params: Params) -> State:
        tensors, extra = params[:m], params[m:]
        if all(held(a, b, s) for a, b, s in zip(tensors, own, slots)):
            out = module(t, unpack(y), *extra)
        else:
            substituted = dict(zip(names, tensors))
            out = torch.func.functional_call(module, substituted, (t, unpack(y), *extra))
        return _as_state(out, tuple_state=tuple_state, n=n_state)

    all_names = (*names, *(f"args[{i}]" for i in range(len(args))))
    return BoundField(modular, (*own, *args), all_names, module)


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
