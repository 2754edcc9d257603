"""Which parameters train with weight decay: timm's rule, and the grouping a resumed run's checkpoint holds.

A trainable parameter is trained without weight decay when

- it has at most one dimension (biases, the scales and shifts of BatchNorm, LayerNorm, RMSNorm), or
- its name ends in ``.bias``, or
- the model, or one of its submodules, lists it in a ``no_weight_decay()`` method: a set of parameter names
  relative to that module (a submodule ``blocks.0`` returning ``{"table"}`` spares ``blocks.0.table``).

That is timm's convention (``timm.optim.param_groups_weight_decay`` with the model's ``no_weight_decay()``): a ViT
spares ``pos_embed`` and ``cls_token``, Swin's window attention its relative position bias table (in Swin or plugged
into a ResNet), as the papers' official code does; BoTNet's, HaloNet's, SASA's and axial attention's relative
embeddings and Image GPT's embeddings are decayed (timm's BoTNet and HaloNet and the official Axial-DeepLab code
decay theirs; Image GPT's recipe has no weight decay). Names a method lists that are not parameters of its module
are skipped, as timm skips them (timm's ViT names a ``dist_token`` that most ViTs do not have). Models only name
parameters; the optimizer is built by :func:`visionattn.recipe.build_optimizer`.

Before this rule the trainer spared the parameters of at most one dimension only, so a ViT's ``pos_embed`` and
``cls_token`` and Swin's bias tables were decayed. A checkpoint's optimizer state maps its moments to the
parameters by position within the two groups, so every trainer state records the names it spared
(:data:`STATE_KEY`) and a resumed run builds its optimizer with the checkpoint's grouping
(:func:`resumed_no_decay`): a state without the record was written under the old rule, and the run continues with
that rule, exactly as it began.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from visionattn.errors import CheckpointError, UsageError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["STATE_KEY", "no_weight_decay_names", "dimension_rule_names", "split_by_decay", "resumed_no_decay"]

STATE_KEY = "no_weight_decay"
"""The trainer state's entry holding the names of the parameters its optimizer trains without weight decay."""


def _listed(model: nn.Module) -> set[int]:
    """The ids of the parameters that ``model`` and its submodules list in their ``no_weight_decay()``."""
    ids: set[int] = set()
    for _, module in model.named_modules():
        method = getattr(module, "no_weight_decay", None)
        if not callable(method):
            continue
        for name in method():
            try:
                ids.add(id(module.get_parameter(name)))
            except AttributeError:  # not a parameter of this module (timm's ViT lists a dist_token it may lack)
                continue
    return ids


def no_weight_decay_names(model: nn.Module) -> list[str]:
    """The trainable parameters of ``model`` trained without weight decay (the module docstring's rule), by name in
    ``model.named_parameters()`` order."""
    listed = _listed(model)
    return [n for n, p in model.named_parameters()
            if p.requires_grad and (p.ndim <= 1 or n.endswith(".bias") or id(p) in listed)]


def dimension_rule_names(model: nn.Module) -> list[str]:
    """The trainable parameters of at most one dimension: the trainer's rule before ``no_weight_decay()`` and
    ``.bias`` names counted, under which a trainer state without :data:`STATE_KEY` was written."""
    return [n for n, p in model.named_parameters() if p.requires_grad and p.ndim <= 1]


def split_by_decay(model: nn.Module, no_decay: Collection[str]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``model``'s trainable parameters as (decayed, not decayed), each in ``model.named_parameters()`` order;
    ``no_decay`` names the second group. :class:`UsageError` for a name that is not a trainable parameter."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    unknown = sorted(set(no_decay) - params.keys())
    if unknown:
        raise UsageError(f"no_decay: got {unknown[:3]} ({len(unknown)} in all), needed names of trainable "
                         f"parameters of the {type(model).__name__}")
    spared = set(no_decay)
    return [p for n, p in params.items() if n not in spared], [p for n, p in params.items() if n in spared]


def resumed_no_decay(model: nn.Module, state: Mapping[str, Any], where: object) -> tuple[list[str], str | None]:
    """The names a resumed run's optimizer trains without weight decay, and a note for the log when they are not
    the current rule's.

    They are the checkpoint's (``state``, the trainer state of the checkpoint in ``where``): its record, or, for a
    state written before the record existed, the dimension rule it was written under (:func:`dimension_rule_names`).
    Its optimizer moments belong to that grouping, so the run keeps it to the end and computes what it would have
    computed uninterrupted. :class:`CheckpointError` for a record that names no parameter of ``model``.
    """
    current = no_weight_decay_names(model)
    saved = state.get(STATE_KEY)
    if saved is None:
        saved, when = dimension_rule_names(model), "written before no_weight_decay() and .bias names were spared"
    else:
        params = {n for n, p in model.named_parameters() if p.requires_grad}
        if not isinstance(saved, (list, tuple)) or not set(saved) <= params:
            bad = saved if not isinstance(saved, (list, tuple)) else sorted(set(saved) - params)[:3]
            raise CheckpointError(f"{where}: the trainer state's {STATE_KEY!r} record holds {bad!r}, needed names "
                                  f"of trainable parameters of the {type(model).__name__}; the state is corrupt "
                                  "or of another model")
        saved, when = list(saved), "written with another weight-decay rule"
    if saved == current:
        return current, None
    decayed = [n for n in current if n not in set(saved)]
    spared = [n for n in saved if n not in set(current)]
    parts = [f"decays {_some(decayed)}" if decayed else "", f"spares {_some(spared)}" if spared else ""]
    return saved, (f"the checkpoint's optimizer ({when}) {' and '.join(p for p in parts if p)}, unlike the current "
                   "rule; the resumed run keeps the checkpoint's weight-decay groups, so it continues as it began")


def _some(names: list[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
