"""Normalisations: ``BatchNorm`` (every ``_BatchNorm``), ``FrozenBatchNorm``, ``LayerNorm``, ``GroupNorm``.

A BatchNorm subclass with its own forward that calls ``F.batch_norm`` on its running statistics (timm's
``BatchNormAct2d``: BN, then an activation in the same module) is traced through, and the call becomes an
``nn.BatchNorm*d`` (:func:`leantorch.graph_rewrite.functional_to_modules`), so it folds like any BN.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .registry import OpSpec, register

__all__ = ["BATCH_NORM", "FROZEN_BATCH_NORM", "LAYER_NORM", "GROUP_NORM", "FrozenBatchNorm2d"]

_FROZEN_BUFFERS = ("weight", "bias", "running_mean", "running_var")


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that always normalises with its running statistics, in training mode too, and whose
    affine does not train: what torchvision's ``FrozenBatchNorm2d`` (a module of buffers) computes, as a
    BatchNorm that BN folding and the quantizers know.

    Example:
        >>> bn = FrozenBatchNorm2d(4).train()
        >>> bn.training, bn.weight.requires_grad
        (False, False)
    """

    #: its forward is BatchNorm2d's (:mod:`leantorch.quant.exact_batch_norm` may compute it)
    lt_plain_batch_norm: ClassVar[bool] = True

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__(num_features, eps=eps)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenBatchNorm2d:
        return super().train(False)


def _is_frozen_batch_norm(module: nn.Module) -> bool:
    """torchvision's (or a copy's) ``FrozenBatchNorm2d``: that class name and its four buffers."""
    return type(module).__name__ == "FrozenBatchNorm2d" and all(
        isinstance(module._buffers.get(name), torch.Tensor) for name in _FROZEN_BUFFERS
    )


def _as_batch_norm(frozen: nn.Module) -> FrozenBatchNorm2d:
    weight = frozen._buffers["weight"]
    assert weight is not None  # _is_frozen_batch_norm checked the buffers
    bn = FrozenBatchNorm2d(weight.numel(), eps=float(getattr(frozen, "eps", 1e-5)))
    bn.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        for name in _FROZEN_BUFFERS:
            value = frozen._buffers[name]
            assert value is not None
            getattr(bn, name).copy_(value)
    return bn


# Its statistics and affine are folded into the conv before deployment: not a weight to quantize by default.
BATCH_NORM = register(OpSpec("BatchNorm", (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d), params_quantized=False))
# prepare() swaps it for leantorch's FrozenBatchNorm2d (op type BatchNorm) before tracing.
FROZEN_BATCH_NORM = register(
    OpSpec("FrozenBatchNorm", (), matches=_is_frozen_batch_norm, replace=_as_batch_norm, params_quantized=False)
)
LAYER_NORM = register(OpSpec("LayerNorm", (nn.LayerNorm,)))
GROUP_NORM = register(OpSpec("GroupNorm", (nn.GroupNorm,)))
