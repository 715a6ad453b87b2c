"""Dense layers: ``Linear``, ``TransposedLinear`` (``torch.addmm(bias, x, W)`` with ``W`` stored as (in, out),
Hugging Face's GPT-2 ``Conv1D``) and ``Embedding``.

Example:
    >>> from torch import nn
    >>> linear_macs(nn.Linear(4, 3), (2, 5, 4), (2, 5, 3))
    60
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .registry import ACT, OpSpec, register

__all__ = ["linear_macs", "TransposedLinear", "LINEAR", "TRANSPOSED_LINEAR", "EMBEDDING"]


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


class TransposedLinear(nn.Module):
    """``addmm(bias, x, weight)`` on 2-D ``x`` with ``weight`` of shape (in, out): a dense layer whose weight is
    stored transposed (GPT-2's ``Conv1D``). It keeps the model's own parameters, so its output channels are
    axis 1 of the weight.

    Example:
        >>> layer = TransposedLinear(torch.ones(3, 2), torch.zeros(2))
        >>> layer(torch.ones(4, 3)).tolist()[0]
        [3.0, 3.0]
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight)
        self.bias = bias if bias is None or isinstance(bias, nn.Parameter) else nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.mm(x, self.weight)
        return torch.addmm(self.bias, x, self.weight)


def _transposed_linear_macs(module: nn.Module, input_shape: tuple, output_shape: tuple) -> int:
    return math.prod(output_shape[:-1][1:] or (1,)) * module.weight.shape[0] * module.weight.shape[1]


TRANSPOSED_LINEAR = register(
    OpSpec("TransposedLinear", (TransposedLinear,), weight_axis=1, mac_count=_transposed_linear_macs)
)
