"""Loop primitives, written once per execution mode; the solver is written once against them.

Two primitives cover every loop of a solve:

* ``fori(n, body, carry, reverse=False)``: ``carry = body(j, carry)`` for ``j = 0 .. n - 1`` (or
  backwards): the fixed-step forward pass, and every reverse (MALI) pass;
* ``while_(cond, body, carry, max_steps=...)``: the step-size controller. ``body(carry)`` returns
  ``(carry, entry, keep)``; the entries with ``keep`` set are collected in order (the records of
  the accepted steps) and returned with their count.

Backends (chosen per call by :mod:`mali_func.backends._mode`):

* :class:`PythonLoops` (eager, and :mod:`torch.func` transforms): Python loops over Python ints, no
  flattening, nothing added per step. The controller reads one stop flag on the host every few
  trials.
* :class:`WhileLoops` (``torch.compile``): :func:`torch._higher_order_ops.while_loop` over flat
  carries, so compile time does not depend on the number of steps. It holds the torch 2.13
  workarounds (below).
* :class:`~mali_func.backends._scan.ScanLoops` (export): :func:`torch._higher_order_ops.scan`,
  forward only; ONNX keeps it as one ``Scan`` node whose body is one step.

The flat carries both traced backends need live in :mod:`mali_func.backends._flat`.

Torch 2.13 workarounds in :class:`WhileLoops` (CPU inductor), both reproduced by the
compiled-vs-eager gradient tests:

* inductor applies a backward graph's donated-buffer indices to the inputs of a ``while_loop`` body
  inside it, so the body may overwrite a buffer that is still live and gradients come out silently
  wrong (a MALI training step of a 2-64-2 MLP field: gradients off by O(1)). When a compiled solve
  is traced, :func:`_no_donated_buffers` sets ``torch._functorch.config.donated_buffer = False``
  (at trace time, before AOTAutograd partitions the graph); importing ``mali_func`` changes no
  configuration.
* inductor rewrites ``add(mm(a, b), c)`` into ``addmm(c, a, b)``, which on MKL float32 rounds about
  ten times worse when the product is small against ``c``: cotangent sums over hundreds of steps
  drift to 1e-5. Cotangents are fenced (:func:`_fence`) so the rewrite cannot match.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch._functorch.config as functorch_config
from torch import Tensor
from torch._higher_order_ops import while_loop
from torch.utils._pytree import tree_map

from ..gradients._vjp import choose_vjp
from ..schemes import Params
from ..schemes._scheme import VJP, add_optional
from ._flat import (
    Cond,
    Count,
    Index,
    TracedWhile,
    WhileBody,
    counter,
    flatten,
    tensors_of,
)
from ._mode import Mode, host_view, is_concrete
from ._scan import ScanLoops


def _host_any(flag: Tensor) -> bool:
    """``flag.any()`` on the host, across a vmapped batch too (one sync)."""
    x = host_view(flag)
    assert x is not None
    return bool(x.any())


class PythonLoops:
    """Eager loops: Python ``for``; cotangents by autograd (or torch.func.vjp under transforms)."""

    mode = Mode.EAGER

    def fori(
        self, n: Count, body: Callable[[Any, Any], Any], carry: Any, *, reverse: bool = False,
        unroll: int = 1,
    ):  # fmt: skip
        for j in range(int(n) - 1, -1, -1) if reverse else range(int(n)):
            carry = body(j, carry)
        return carry

    def while_(
        self,
        cond: Cond,
        body: WhileBody,
        carry: Any,
        *,
        max_steps: int,
        dtypes: tuple[torch.dtype, ...],
        check_every: int = 8,
    ) -> tuple[Any, tuple[Tensor, ...], Index]:
        """The stop flag is read on the host after every trial at first, then every
        ``min(check_every, trials // 8)``: the trials that run past the end (wasted field
        evaluations) stay under an eighth of the solve's, at a few host reads."""
        entries: list[tuple[Tensor, ...]] = []
        keeps: list[Tensor] = []
        for it in range(1, max_steps + 1):
            carry, entry, keep = body(carry)
            entries.append(entry)
            keeps.append(keep)
            every = max(1, min(check_every, it // 8))
            if (it % every == 0 or it == max_steps) and not _host_any(cond(carry)):
                break
        records = tuple(torch.stack(column) for column in zip(*entries))
        kept = torch.stack(keeps)
        if not is_concrete(kept):  # batched under vmap: each sample skips its own entries
            return carry, records, len(entries)
        index = kept.nonzero().squeeze(-1)
        return carry, tuple(r.index_select(0, index) for r in records), index.numel()

    def vjp(self, tensors: tuple[Tensor, ...]) -> VJP:
        if torch.is_grad_enabled() and all(is_concrete(x) for x in tensors):
            # Autograd's create_graph=True: differentiating the reverse pass this way gave wrong
            # second derivatives for the Runge-Kutta couplings (right for ALF), so it is refused.
            raise RuntimeError(
                "create_graph=True (a double backward) through a MALI or checkpointed solve "
                "(gradient='mali' or 'checkpoint') is not supported; "
                "use torch.func (e.g. torch.func.grad(torch.func.grad(f)) or jacrev(jacrev(f))), "
                "which differentiates the reverse pass exactly, or gradient='backprop'"
            )
        return choose_vjp(tensors)

    def accumulators(self, params: Params) -> tuple[Tensor | None, ...]:
        return (None,) * len(params)

    def add(self, acc: Tensor | None, d: Tensor | None) -> Tensor | None:
        return add_optional(acc, d)


def _fence(x: Tensor) -> Tensor:
    """``x`` itself, in a form that inductor's ``add(mm, c) -> addmm`` rewrite does not match."""
    return torch.neg(torch.neg(x))


def _fenced_vjp(fn: Any, *primals: Any) -> tuple[Any, Any]:
    out, pullback = torch.func.vjp(fn, *primals)
    return out, lambda cotangent: tree_map(_fence, pullback(cotangent))


@torch.compiler.assume_constant_result
def _no_donated_buffers() -> bool:
    """Turn off donated buffers; dynamo runs this while tracing (see the module docs)."""
    functorch_config.donated_buffer = False
    return True


class WhileLoops(TracedWhile):
    """Compiled loops: ``while_loop`` over flat carries (cloned: carries must not alias)."""

    mode = Mode.COMPILE

    def fori(
        self, n: Count, body: Callable[[Any, Any], Any], carry: Any, *, reverse: bool = False,
        unroll: int = 1,
    ):  # fmt: skip
        """``unroll`` bodies per iteration of a first ``while_loop`` while that many steps are left,
        then one per iteration: fewer iterations (each costs the compiled wrapper a round trip)
        for ``unroll + 1`` traced copies of ``body``."""
        self.prepare()
        leaves, rebuild = flatten(carry)
        leaves = [x.clone(memory_format=torch.contiguous_format) for x in leaves]

        def steps(k: int) -> Callable[..., tuple[Tensor, ...]]:
            def step(j: Tensor, *xs: Tensor) -> tuple[Tensor, ...]:
                c = rebuild(xs)
                for _ in range(k):
                    if reverse:
                        j = j - 1
                        c = body(j, c)
                    else:
                        c, j = body(j, c), j + 1
                return (j, *tensors_of(c))

            return step

        if reverse:
            loop: tuple[Tensor, ...] = (counter(leaves[0], n), *leaves)
            if unroll > 1:
                loop = while_loop(lambda j, *_: j >= unroll, steps(unroll), loop)
            return rebuild(while_loop(lambda j, *_: j > 0, steps(1), loop)[1:])
        loop = (counter(leaves[0]), *leaves)
        if unroll > 1:
            loop = while_loop(lambda j, *_: j + unroll <= n, steps(unroll), loop)
        return rebuild(while_loop(lambda j, *_: j < n, steps(1), loop)[1:])

    def prepare(self) -> None:
        _no_donated_buffers()

    def vjp(self, tensors: tuple[Tensor, ...]) -> VJP:
        return _fenced_vjp

    def accumulators(self, params: Params) -> tuple[Tensor | None, ...]:
        return tuple(torch.zeros_like(p) for p in params)

    def add(self, acc: Tensor | None, d: Tensor | None) -> Tensor | None:
        if acc is None or d is None:
            return add_optional(acc, d)
        return torch.sub(acc, torch.neg(d))  # acc + d, fenced


Loops = PythonLoops | WhileLoops | ScanLoops

PYTHON = PythonLoops()
_BACKENDS = {Mode.EAGER: PYTHON, Mode.COMPILE: WhileLoops(), Mode.EXPORT: ScanLoops()}


def loops_for(mode: Mode) -> Loops:
    """The loop backend of an execution mode."""
    return _BACKENDS[mode]
