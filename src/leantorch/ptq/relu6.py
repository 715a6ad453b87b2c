"""ReLU6 → ReLU, so that cross-layer scaling (which needs f(s·x) = s·f(x)) applies.

Accuracy caveat: the model changes wherever an activation exceeds 6 (it is no longer clipped). After
BN this is rare in trained MobileNet/EfficientNet-style networks, but check the float accuracy of the
result; the DFQ paper makes the same replacement.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import fx, nn

from ..graph import call_sites, prepare

__all__ = ["replace_relu6"]


def replace_relu6(model: nn.Module, example_input: Any = None, inplace: bool = False) -> fx.GraphModule:
    """Return a copy of ``model`` with every ReLU6 (and ``Hardtanh(0, 6)``) replaced by ReLU.

    ``model`` may be a prepared GraphModule (then ``example_input`` is not needed) or any module with an
    ``example_input`` to trace it. ``inplace`` modifies a given GraphModule instead of copying it.

    Example:
        >>> gm = replace_relu6(nn.Sequential(nn.Linear(2, 2), nn.ReLU6()), torch.randn(1, 2))
        >>> type(gm.get_submodule("1")).__name__
        'ReLU'
    """
    if isinstance(model, fx.GraphModule) and (inplace or example_input is None):
        gm = model if inplace else _copy(model)
    else:
        gm = prepare(model, example_input)
    for node, module in list(call_sites(gm)):
        if isinstance(module, nn.ReLU6) or (
            isinstance(module, nn.Hardtanh) and (module.min_val, module.max_val) == (0.0, 6.0)
        ):
            parent, _, leaf = str(node.target).rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, leaf, nn.ReLU())
    gm.recompile()
    return gm


def _copy(gm: fx.GraphModule) -> fx.GraphModule:
    return copy.deepcopy(gm)  # the model's state (BN statistics) is in gm.meta, which deepcopy keeps
