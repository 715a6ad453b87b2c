"""``torchvision.ops.misc.FrozenBatchNorm2d``, copied faithfully for the benchmark shim (see the package docstring).

The same buffers (``weight``, ``bias``, ``running_mean``, ``running_var``; no parameters), the same forward
(``x * scale + shift`` with ``scale = weight * rsqrt(running_var + eps)``, computed in that order so results are
bit-identical with torchvision's) and the same state-dict loading (``num_batches_tracked`` dropped), so that a
timm model built here behaves exactly as it would with the real torchvision.

Example:
    >>> import torch
    >>> bn = FrozenBatchNorm2d(3)
    >>> bn(torch.ones(1, 3, 2, 2)).shape
    torch.Size([1, 3, 2, 2])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["FrozenBatchNorm2d"]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d whose statistics and affine parameters are fixed (buffers, not trained)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # A checkpoint of an nn.BatchNorm2d carries num_batches_tracked, which a frozen BN has no use for.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: Tensor) -> Tensor:
        # Reshapes first, as torchvision does (its comment: "to make it fuser-friendly").
        w = self.weight.reshape(1, -1, 1, 1)
        b = self.bias.reshape(1, -1, 1, 1)
        rv = self.running_var.reshape(1, -1, 1, 1)
        rm = self.running_mean.reshape(1, -1, 1, 1)
        scale = w * (rv + self.eps).rsqrt()
        bias = b - rm * scale
        return x * scale + bias

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.weight.shape[0]}, eps={self.eps})"
