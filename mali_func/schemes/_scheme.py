"""The interface of a reversible one-step scheme.

A reversible scheme is a one-step map ``Phi_h: (t, x) -> x'`` on an extended state ``x`` together
with its exact algebraic inverse ``Phi_h^{-1}``. The state is a flat tuple of tensors whose first
entries are the ODE solution ``y`` itself; a scheme may append auxiliary entries (the asynchronous
leapfrog method appends a velocity ``v ~ dy/dt``).

Because ``Phi_h`` can be undone, a chain ``x_N = Phi_{h_N} o ... o Phi_{h_1}(x_0)`` can be
differentiated in constant memory: keep only ``x_N``, and walk back, rebuilding ``x_{n-1}`` from
``x_n`` and pulling the cotangent back through ``Phi`` at the rebuilt point (Zhuang et al., "MALI:
A memory efficient and reverse accurate integrator for Neural ODEs", ICLR 2021).

Schemes are pure: no autograd calls in :meth:`step` or :meth:`inverse`, no loops over steps, no
state kept between calls. The solver in :mod:`mali_func.gradients._solve` owns the loop.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

State = tuple[Tensor, ...]
"""A scheme's flat state; its first entries are the solution components."""

Params = tuple[Tensor, ...]
"""Tensors the vector field reads and that gradients are returned for."""

Field = Callable[[Tensor, State, Params], State]
"""A pure vector field ``field(t, y, params) -> dy/dt`` over tuples of tensors."""

VJP = Callable[..., tuple[Any, Callable[[Any], tuple[Any, ...]]]]
"""The signature of :func:`torch.func.vjp`."""

Reverse = tuple[State, State, "Tensor | None", "Tensor | None", tuple[Any, ...]]
"""``(previous state, its cotangent, d/dt, d/dh, cotangents of params)`` of one reversed step."""


def dot(a: State, b: State) -> Tensor:
    """Sum of elementwise products over every component (a scalar per vmapped sample)."""
    total = (a[0] * b[0]).sum()
    for x, y in zip(a[1:], b[1:]):
        total = total + (x * y).sum()
    return total


def add_optional(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    """``a + b`` where ``None`` stands for zero (a cotangent that was not needed)."""
    if a is None:
        return b
    if b is None:
        return a
    return a + b


class ReversibleScheme(abc.ABC):
    """A one-step method with an exact inverse; subclass it to plug a scheme into the engine.

    Implement :meth:`step` and :meth:`inverse` (and :meth:`init` if the state carries more than
    ``y``, :meth:`step_with_error` for adaptive steps). The default :meth:`reverse` inverts
    the step and then pulls the cotangent back through a re-run of :meth:`step` with
    :func:`torch.func.vjp`; a scheme whose inverse already evaluates the field at the forward
    step's point (as ALF does) can override it to save that evaluation.
    """

    order: int = 1
    """Order of accuracy of the solution component (used by documentation and tests)."""

    error_order: int = 1
    """Order ``q`` of :meth:`step_with_error`'s estimate; the controller scales by
    ``err^(-1/(q+1))``."""

    evaluations_per_step: int = 1
    """Field evaluations of one :meth:`step`, counted in :class:`~mali_func.SolveStats`
    ``n_f_evals``; a scheme of your own declares its number."""

    evaluations_with_error: int | None = None
    """Field evaluations of one :meth:`step_with_error`, where they differ from
    :attr:`evaluations_per_step` (a Runge-Kutta step evaluates its last stage only for the
    estimate)."""

    def has(self, method: str) -> bool:
        """Whether this scheme implements ``method`` itself (not just the base class's stub)."""
        return getattr(type(self), method) is not getattr(ReversibleScheme, method)

    def init(self, field: Field, t0: Tensor, y0: State, params: Params) -> State:
        """Build the initial extended state from the solution ``y0`` at ``t0``.

        Called outside the engine with ordinary autograd, so it may read the field. The default
        carries no auxiliary state.
        """
        return y0

    @abc.abstractmethod
    def step(self, field: Field, t: Tensor, h: Tensor, state: State, params: Params) -> State:
        """Advance ``state`` from ``t`` to ``t + h``."""

    def inverse(self, field: Field, t: Tensor, h: Tensor, state: State, params: Params) -> State:
        """Undo :meth:`step`: given the state at ``t + h``, return the state at ``t``.

        ``t`` is the *start* time of the step being undone, so that the time arithmetic is the
        same as in :meth:`step`. Needed for ``gradient="mali"`` (unless :meth:`reverse` is
        overridden); ``odeint`` refuses a scheme without it there.
        """
        raise NotImplementedError(f"{type(self).__name__} has no inverse")

    def step_with_error(
        self, field: Field, t: Tensor, h: Tensor, state: State, params: Params
    ) -> tuple[State, State]:
        """:meth:`step` and a local error estimate for each solution component.

        Needed only for adaptive step sizes; a scheme without an estimate cannot solve
        adaptively.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no local error estimate, so it cannot choose its steps; "
            "give n_steps or step_size"
        )

    def reverse(
        self,
        field: Field,
        t: Tensor,
        h: Tensor,
        state: State,
        cotangent: State,
        params: Params,
        *,
        time_grad: bool,
        vjp: VJP = torch.func.vjp,
    ) -> Reverse:
        """Rebuild the previous state and pull ``cotangent`` back through one step.

        Returns the previous state, its cotangent, the cotangents of ``t`` and ``h`` (``None``
        unless ``time_grad``) and those of ``params`` (``None`` where not needed). ``vjp`` has
        the signature of :func:`torch.func.vjp`, which is what the engine passes under
        :mod:`torch.func` transforms; in eager code it passes a faster autograd-based one. Put
        ``params`` last among the primals: that one may skip tensors that need no gradient.
        """
        previous = self.inverse(field, t, h, state, params)
        return pull_back(
            self, field, t, h, previous, cotangent, params, time_grad=time_grad, vjp=vjp
        )


def pull_back(
    scheme: ReversibleScheme,
    field: Field,
    t: Tensor,
    h: Tensor,
    previous: State,
    cotangent: State,
    params: Params,
    *,
    time_grad: bool,
    vjp: VJP = torch.func.vjp,
) -> Reverse:
    """Pull ``cotangent`` back through ``scheme.step`` taken from ``previous`` (a re-run of the
    step under ``vjp``): the part of :meth:`ReversibleScheme.reverse` after the inverse, also
    used by checkpointed gradients, which look ``previous`` up instead of inverting."""
    if time_grad:

        def timed(x: State, t_: Tensor, h_: Tensor, p: Params) -> State:
            return scheme.step(field, t_, h_, x, p)

        _, pullback = vjp(timed, previous, t, h, params)
        cot_x, cot_t, cot_h, cot_p = pullback(cotangent)
        return previous, cot_x, cot_t, cot_h, cot_p

    def untimed(x: State, p: Params) -> State:
        return scheme.step(field, t, h, x, p)

    _, pullback = vjp(untimed, previous, params)
    cot_x, cot_p = pullback(cotangent)
    return previous, cot_x, None, None, cot_p
