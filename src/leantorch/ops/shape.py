"""Data movement: flatten, pad, pooling, dropout, identity. All but ``AvgPool`` are passthrough (their
output values are input values, already on the input's grid); an average makes new values."""

from __future__ import annotations

from torch import nn

from .modules import Pad
from .registry import OpSpec, register

FLATTEN = register(OpSpec("Flatten", (nn.Flatten, nn.Unflatten), passthrough=True))
PAD = register(OpSpec("Pad", (Pad, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d),
                      passthrough=True))
MAX_POOL = register(OpSpec("MaxPool", (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool2d),
                           passthrough=True))
AVG_POOL = register(OpSpec("AvgPool", (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
                                       nn.AdaptiveAvgPool2d)))
DROPOUT = register(OpSpec("Dropout", (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d), passthrough=True))
IDENTITY = register(OpSpec("Identity", (nn.Identity,), passthrough=True))
