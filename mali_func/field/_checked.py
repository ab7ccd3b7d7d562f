"""The field's first evaluation, checked: the solve's start state and what the checks found.

Before the steps run, the field is evaluated once (the scheme's :meth:`init`, or one call) under
checks that catch what would make the gradient silently wrong (MALI, Zhuang et al., ICLR 2021,
differentiates only the tensors passed to its Function): a plain callable capturing a tensor that
requires grad (:mod:`._captures`), a module reading a tensor that is none of its parameters,
buffers or the solve's inputs (:mod:`._module_checks`), a module changing a buffer in place
(:mod:`._module_state`), an output of the wrong shape or dtype. The first call runs on copies of
the state, so a field never modifies the caller's ``y0``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..backends import _mode
from ..backends._flat import unaliased
from ..schemes import Params, ReversibleScheme, State
from ._captures import check_no_capture, guard_captures
from ._declared import check_declared
from ._field import BoundField, autocast_field, check_output
from ._module_checks import (
    check_module_attributes,
    check_module_detached,
    check_module_inputs,
    module_attributes,
)
from ._module_state import buffer_versions, check_buffers_kept, first_call


def start_checked(
    func: Callable[..., Any],
    bound: BoundField,
    scheme: ReversibleScheme,
    t: Tensor,
    state: State,
    *,
    engine: bool,
) -> tuple[BoundField, State, int]:
    """The field to step with, the scheme's start state, and the evaluations made so far
    (``engine``: the gradient sees only the tensors passed to the solve). A scheme whose
    tableau perturbs its stage times is checked one ulp after ``t[0]`` too."""
    t0 = t[0]
    if getattr(getattr(scheme, "tableau", None), "perturb", False):
        t0 = t0 + (torch.nextafter(t0, t[1]) - t0).detach()
    attributes: dict[str, Tensor] = {}
    n_checks = 0  # field evaluations made by the checks, counted in the stats
    if getattr(bound.field, "declared", False):  # adjoint_params of a plain function
        n_checks = check_declared(bound, t0, state)
    elif not isinstance(func, nn.Module):
        n_checks = check_no_capture(bound, t0, state)
        if engine and _mode.current() is _mode.Mode.EAGER and torch.is_grad_enabled():
            if not _mode.under_transform():
                bound = dataclasses.replace(bound, field=guard_captures(bound.field))
    elif engine and _mode.current() is not _mode.Mode.EXPORT:
        # Python attributes and flags only, so compiled solves are checked too. Refused after
        # the first evaluation: attributes the field sets itself (weight_norm's weight) are not
        # inputs.
        attributes = module_attributes(func)
    device_type = state[0].device.type
    if torch.is_autocast_enabled(device_type):
        bound = dataclasses.replace(bound, field=autocast_field(bound.field, device_type))
    checked: list[bool] = []
    # A module reading a tensor that is none of the solve's inputs: seen in the autograd graph of
    # the first evaluation in eager code; while dynamo traces (no graph to read) by one detached
    # evaluation after the start (traced, its result unused; not counted in the stats).
    module_check = isinstance(func, nn.Module) and engine and torch.is_grad_enabled()
    module_check = module_check and not _mode.under_transform()
    graph_check = module_check and _mode.current() is _mode.Mode.EAGER
    # A module that changes a buffer in place as it runs: seen at its first evaluation.
    versions = buffer_versions(func) if module_check and not _mode.tracing() else None

    def field_checked(t_: Tensor, y_: State, p_: Params) -> State:
        if checked or _mode.tracing() or _mode.under_transform():
            out = bound.field(t_, y_, p_)
        else:  # on copies: a field never modifies the caller's y0
            y_ = tuple(x.clone() for x in y_)
            out = first_call(bound.field, t_, y_, p_)
        check_output(out, state)
        if not checked and attributes:
            check_module_attributes(func, attributes)
        if not checked and graph_check:
            check_module_inputs(func, out, (t, t_, *state, *y_, *bound.params, *p_))
        if not checked and versions is not None:
            check_buffers_kept(func, versions)
        checked.append(True)
        return out

    start = scheme.init(field_checked, t0, state, bound.params)
    # One tensor twice among a solve's inputs (a field that returns its parameter as it is, kept
    # in the state): torch.compile refuses that, so each repeat becomes its own copy.
    start = tuple(unaliased(start, bound.params))
    if not checked:
        field_checked(t0, state, bound.params)
    n_init = len(checked) + n_checks  # evaluations before the steps, counted in the stats
    if module_check and _mode.current() is _mode.Mode.COMPILE:
        check_module_detached(bound, t0, state)
    return bound, start, n_init
