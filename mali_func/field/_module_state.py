"""Fields that are not pure functions of their inputs: state they change as they run.

A solve evaluates its field many times, and MALI's reverse pass and checkpointed replays evaluate
it again; the gradient is backprop's only if every evaluation of one solve sees the same module.
Handled here:

* the caller's ``y0``: the first evaluation gets a copy, and a field that modifies its input in
  place is refused (:func:`first_call`);
* spectral normalization in training mode (the parametrization and the older hook) advances its
  power iteration at every evaluation: a solve takes one power iteration, its first evaluation's,
  and holds that weight (:func:`power_iterations`, used by
  :meth:`mali_func.field._field.BoundField.frozen`), so the forward, the backward's re-evaluations
  and backprop see one computation and the ``_u``/``_v`` buffers end as backprop's do (Miyato et
  al., "Spectral normalization for generative adversarial networks", ICLR 2018, take one iteration
  per forward call too);
* any other floating buffer the field changes in place is refused by name under MALI and
  checkpointing (:func:`check_buffers_kept`); batch-norm running statistics are handled by
  :meth:`mali_func.field._field.BoundField.replaying`.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.nn.parameter import UninitializedBuffer

from ..backends._mode import tracing
from ..schemes import Field, Params, State


def first_call(field: Field, t: Tensor, y: State, params: Params) -> State:
    """A solve's first evaluation of the field, eagerly, on ``y``: the caller passes copies of
    its state, so a field never modifies ``y0``; one that modifies its input in place is refused
    (the same for every gradient: MALI's reverse would rebuild another state than the forward
    saw)."""
    if tracing() or any(x.is_inference() for x in y):
        return field(t, y, params)  # no version counters (dynamo tracing, inference tensors)
    before = [x._version for x in y]
    out = field(t, y, params)
    if any(x._version != v for x, v in zip(y, before)):
        raise TypeError(
            "func modifies its input y in place (e.g. y.mul_(...) or y += ...): the solver "
            "passes its own state tensors, which must not change under it; return a new tensor "
            "(y = y * ...) instead"
        )
    return out


def power_iterations(module: nn.Module) -> list[Any]:
    """The spectral normalizations in training mode under ``module``: the parametrizations'
    modules and the older hooks (:func:`torch.nn.utils.spectral_norm`), each with its
    ``n_power_iterations``."""
    found: list[Any] = []
    for m in module.modules():
        if hasattr(m, "n_power_iterations") and hasattr(m, "_u") and m.training:
            found.append(m)  # torch.nn.utils.parametrizations.spectral_norm
        for hook in m._forward_pre_hooks.values():
            if hasattr(hook, "n_power_iterations") and hasattr(hook, "compute_weight"):
                if m.training:
                    found.append(hook)  # torch.nn.utils.spectral_norm
    return found


def buffer_versions(module: nn.Module) -> dict[str, int]:
    """The in-place version counter of each floating buffer of ``module``."""
    return {
        name: b._version for name, b in module.named_buffers()
        if b.is_floating_point() and not isinstance(b, UninitializedBuffer)
    }  # fmt: skip


def check_buffers_kept(module: nn.Module, before: dict[str, int]) -> None:
    """Refuse a field that changes a floating buffer in place as it runs (other than batch-norm
    running statistics and spectral normalization's vectors, which the engine handles): MALI and
    checkpointing re-evaluate the field in the backward and would see another buffer than the
    forward did."""
    handled = {
        id(b) for m in module.modules()
        for b in (getattr(m, "running_mean", None), getattr(m, "running_var", None),
                  getattr(m, "_u", None), getattr(m, "_v", None),
                  getattr(m, "weight_u", None), getattr(m, "weight_v", None))
        if isinstance(b, Tensor)
    }  # fmt: skip
    for name, b in module.named_buffers():
        if name in before and b._version != before[name] and id(b) not in handled:
            raise TypeError(
                f"func changes its buffer {name!r} in place as it runs: gradient='mali' and "
                "'checkpoint' evaluate the field again in the backward pass, where the buffer "
                "would differ from the forward's, so the gradient would not be backprop's. "
                "Update the buffer outside the field (before or after the solve), or use "
                "gradient='backprop'."
            )
