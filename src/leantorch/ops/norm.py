"""Normalisations: ``BatchNorm`` (every ``_BatchNorm``), ``LayerNorm``, ``GroupNorm``."""

from __future__ import annotations

from torch import nn

from .registry import OpSpec, register

__all__ = ["BATCH_NORM", "LAYER_NORM", "GROUP_NORM"]

BATCH_NORM = register(OpSpec("BatchNorm", (nn.modules.batchnorm._BatchNorm,)))
LAYER_NORM = register(OpSpec("LayerNorm", (nn.LayerNorm,)))
GROUP_NORM = register(OpSpec("GroupNorm", (nn.GroupNorm,)))
