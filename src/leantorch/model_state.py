"""What leantorch knows about a model beyond its weights, in one typed object per model.

BN folding records each folded layer's output distribution (used later by high-bias absorption and analytical
bias correction), CLE its scaling sets and a report. That state travels with the model: it lives in the
GraphModule's ``meta`` dict, which torch keeps through ``copy.deepcopy`` and pickling, and
:func:`leantorch.prepare` carries it to the traced copy of a model that has it.

Example:
    >>> import torch
    >>> from torch import nn
    >>> import leantorch as lt
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    >>> folded, _ = lt.fold_batch_norms(net, torch.randn(1, 3, 8, 8))
    >>> list(model_state(folded).output_stats)
    ['0']
    >>> model_state(net).output_stats  # a model leantorch did not make has an empty state
    {}
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

__all__ = ["ModelState", "model_state", "set_model_state", "carry_model_state"]

#: The key of the state in ``GraphModule.meta``.
STATE_KEY = "leantorch_state"


@dataclass
class ModelState:
    """Per-model state.

    Attributes:
        output_stats: per layer name, the ``(mean, std)`` per output channel of its (pre-activation) output,
            from the BN folded into it; transforms that rescale a layer update it.
        scaling_sets: the CLE scaling sets (:class:`leantorch.ptq.cle.ScalingSet`) of the last equalization.
        cle_report: per equalized layer, the channel-range spread before and after scaling.
    """

    output_stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    scaling_sets: list[Any] = field(default_factory=list)
    cle_report: list[dict[str, Any]] = field(default_factory=list)


def model_state(model: nn.Module) -> ModelState:
    """The state leantorch keeps for ``model`` (an empty one, not attached, when it has none)."""
    meta = getattr(model, "meta", None)
    state = meta.get(STATE_KEY) if isinstance(meta, dict) else None
    return state if isinstance(state, ModelState) else ModelState()


def set_model_state(model: fx.GraphModule, state: ModelState) -> None:
    """Attach ``state`` to ``model`` (replacing what it had)."""
    model.meta[STATE_KEY] = state


def carry_model_state(source: nn.Module, target: fx.GraphModule) -> None:
    """Give ``target`` a deep copy of ``source``'s state, if it has one (layer names survive tracing)."""
    meta = getattr(source, "meta", None)
    if isinstance(meta, dict) and isinstance(meta.get(STATE_KEY), ModelState):
        set_model_state(target, copy.deepcopy(meta[STATE_KEY]))
