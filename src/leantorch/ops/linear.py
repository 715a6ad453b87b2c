"""Dense layers: ``Linear`` and ``Embedding``.

Example:
    >>> from torch import nn
    >>> linear_macs(nn.Linear(4, 3), (2, 5, 4), (2, 5, 3))
    60
"""

from __future__ import annotations

import math

from torch import nn

from .registry import ACT, OpSpec, register

__all__ = ["linear_macs", "LINEAR", "EMBEDDING"]


def linear_macs(module: nn.Module, input_shape: tuple, output_shape: tuple) -> int:
    """MACs per sample: ``in * out`` for each row (all dims between batch and features)."""
    rows = math.prod(output_shape[1:-1]) if len(output_shape) > 1 else 1
    return rows * module.in_features * module.out_features


LINEAR = register(
    OpSpec(
        "Linear",
        (nn.Linear,),
        weight_axis=0,
        mac_count=linear_macs,
        supergroups=(("BatchNorm",), (ACT,)),
        folds_bn_after=True,
        folds_bn_before=True,
        cle_scalable=True,
    )
)
# A table lookup: no MACs, and its weight rows are tokens, not output channels.
EMBEDDING = register(OpSpec("Embedding", (nn.Embedding,)))
