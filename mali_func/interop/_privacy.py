"""Per-sample gradients of an ``ODEBlock`` as one unit, for Opacus (differential privacy).

Opacus picks the modules whose per-sample gradients it computes by their *own* parameters
(``parameters(recurse=False)``): it hooks every module that owns a trainable parameter, and
recurses into its children only when the module's type has a registered grad sampler. In its
``torch.func`` mode (``grad_sample_mode="functorch"``) registered samplers are not used at all:
each hooked module is re-run per sample with ``vmap(grad(...))`` over the activations and
backprops captured by its hooks, and a module with buffers is refused.

An ``ODEBlock`` owns no parameter itself (they are its field's) and holds its time grid as a
buffer, so Opacus never takes it as a unit: it hooks the field, or the layers inside the field,
which the solver evaluates inside its ``autograd.Function`` many times per solve and again in
MALI's reverse pass. That breaks as soon as the field owns a parameter itself (Opacus then
feeds the 0-dim time ``t`` to ``vmap`` as the batch) and otherwise leans on Opacus pairing every
recorded activation with its backprop in reverse order across the whole solve.

:class:`DPODEBlock` wraps a block so that it owns the block's parameters (the same tensors) and
hides the block from the module tree: Opacus then hooks it as one module, does not recurse into
the field, and computes the per-sample gradients of all the block's parameters with
``vmap(grad(...))`` over ``functional_call`` of the whole solve, from the block's input and the
gradient of its output, in ``"functorch"`` and ``"hooks"`` modes alike. Its ``state_dict`` has the
block's keys, so weights trained privately load into the plain model. :func:`prepare_for_opacus`
swaps every ``ODEBlock`` of a model. Nothing here imports Opacus.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn
from torch.func import functional_call

from .._blocks import ODEBlock

_SEP = "__"


class DPODEBlock(nn.Module):
    """An :class:`~mali_func.ODEBlock` that per-sample gradient hooks (Opacus) take as one unit.

    Args:
        block: the block to wrap. Its parameters become this module's own (the same tensors,
            under names with ``"__"`` for ``"."``); its ``state_dict`` keys are kept.

    Raises:
        ValueError: the block returns states at several times (``t_eval``: the batch is then not
            the first axis of the output), or its field holds batch normalization or buffers,
            which mix samples or keep statistics of them (the error names the layer).

    The field is not a child module (``named_modules``, ``apply`` and module hooks do not reach
    it; ``.block`` does). Opacus copies the module once, when it attaches: set the block's
    ``options`` before ``make_private``.
    """

    def __init__(self, block: ODEBlock) -> None:
        super().__init__()
        if not isinstance(block, ODEBlock):
            raise TypeError(f"DPODEBlock wraps an ODEBlock, got {type(block).__name__}")
        if block.t_eval is not None:
            raise ValueError(
                "DPODEBlock needs the batch as the first axis of the block's output; a block "
                "with t_eval returns (len(t_eval), batch, ...): use one ODEBlock per output time"
            )
        _check_field(block.field)
        object.__setattr__(self, "_block", block)  # not a child: Opacus must not see into it
        self._flat: dict[str, str] = {}
        for name, param in block.named_parameters():
            flat = name.replace(".", _SEP)
            if flat in self._parameters:
                raise ValueError(f"parameter names {name!r} and another both flatten to {flat!r}")
            self.register_parameter(flat, param)
            self._flat[name] = flat
        self.train(block.training)

    @property
    def block(self) -> ODEBlock:
        """The wrapped block; its parameters are this module's."""
        return self._block

    def forward(self, x: Tensor) -> Tensor:
        params = {name: getattr(self, flat) for name, flat in self._flat.items()}
        if not self._tracing_opacus():
            for name, value in self._block.named_parameters():
                if params.get(name) is not value:
                    raise ValueError(
                        f"the block's parameter {name!r} was replaced after the block was "
                        "wrapped, so this DPODEBlock would train the old one: assign the new "
                        "parameter before prepare_for_opacus, or wrap the block again"
                    )
        return functional_call(self._block, params, (x,))

    def _tracing_opacus(self) -> bool:
        """Inside Opacus's functorch per-sample pass the parameters are substituted copies."""
        from ..backends._mode import under_transform

        return under_transform()

    def train(self, mode: bool = True) -> DPODEBlock:
        super().train(mode)
        self._block.train(mode)
        return self

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> DPODEBlock:
        super()._apply(fn, recurse)
        self._sync()
        return self

    def _sync(self) -> None:
        """Point the block at this module's parameters again (``.to()`` may replace them)."""
        for name, flat in self._flat.items():
            owner, _, leaf = name.rpartition(".")
            self._block.get_submodule(owner)._parameters[leaf] = self._parameters[flat]

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        for name, flat in self._flat.items():
            param = self._parameters[flat]
            assert param is not None
            destination[prefix + name] = param if keep_vars else param.detach()

    def _load_from_state_dict(
        self, state_dict: Mapping[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        renamed = {
            prefix + self._flat.get(key[len(prefix) :], key[len(prefix) :]): value
            for key, value in state_dict.items()
            if key.startswith(prefix)
        }
        super()._load_from_state_dict(renamed, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return repr(self._block)


def prepare_for_opacus(model: nn.Module) -> nn.Module:
    """Replace every :class:`~mali_func.ODEBlock` in ``model`` by a :class:`DPODEBlock`, in place.

    Returns ``model`` (or the wrapper, when ``model`` is itself a block). Parameters stay the same
    tensors, so an optimizer built before still holds them, and ``state_dict`` keys do not change.
    Call it before ``PrivacyEngine.make_private``.
    """
    return _prepared(model, {})


def _prepared(model: nn.Module, wrappers: dict[int, DPODEBlock]) -> nn.Module:
    """:func:`prepare_for_opacus`, refusing a block used in several places: two wrappers would
    share its parameters (per-sample gradients 48% off, silently), and one wrapper reused fails
    inside Opacus (its per-sample pass re-runs the module with Opacus's hooks attached)."""
    if isinstance(model, ODEBlock):
        if id(model) in wrappers:
            raise ValueError(
                "one ODEBlock is used in several places of the model; per-sample gradients "
                "(Opacus) need each use to be its own block: build one ODEBlock per use (with "
                "their own fields), or share the field's weights outside Opacus"
            )
        wrappers[id(model)] = DPODEBlock(model)
        return wrappers[id(model)]
    # Every slot (named_children yields a module used twice only once).
    for name, child in list(model._modules.items()):
        if child is None:
            continue
        if isinstance(child, ODEBlock):
            setattr(model, name, _prepared(child, wrappers))
        elif not isinstance(child, DPODEBlock):
            _prepared(child, wrappers)
    return model


def _check_field(field: nn.Module) -> None:
    """Refuse layers whose output for one sample depends on the others, or that keep state."""
    for name, module in field.named_modules(prefix="field"):
        kind = type(module).__name__
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ValueError(
                f"{name} ({kind}) normalizes with statistics of the whole batch, so per-sample "
                "gradients would mix samples: use GroupNorm or LayerNorm in the field"
            )
        buffers = [b for b, _ in module.named_buffers(recurse=False)]
        if buffers and not isinstance(module, ODEBlock):  # a nested block's grid is a constant
            raise ValueError(
                f"{name} ({kind}) keeps buffers {buffers}, which per-sample gradients do not "
                "cover (Opacus refuses layers with buffers too)"
            )
