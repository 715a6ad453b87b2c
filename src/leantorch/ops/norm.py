"""Normalisations: ``BatchNorm`` (every ``_BatchNorm``), ``LayerNorm``, ``GroupNorm``."""

from __future__ import annotations

from torch import nn

from .registry import OpSpec, register

__all__ = ["BATCH_NORM", "LAYER_NORM", "GROUP_NORM"]

# Its statistics and affine are folded into the conv before deployment: not a weight to quantize by default.
BATCH_NORM = register(OpSpec("BatchNorm", (nn.modules.batchnorm._BatchNorm,), params_quantized=False))
LAYER_NORM = register(OpSpec("LayerNorm", (nn.LayerNorm,)))
GROUP_NORM = register(OpSpec("GroupNorm", (nn.GroupNorm,)))
