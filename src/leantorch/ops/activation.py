"""Activations. ``ReLU6`` is a ``Hardtanh`` subclass; lookup by class hierarchy keeps it a ``"ReLU6"``.

The ReLU family can be fused into the layer before it (supergroups), CLE scales through it, and bias
correction knows its clip range. Every pointwise activation is channelwise for channel pruning.
"""

from __future__ import annotations

import math

from torch import nn

from .modules import BoundedReLU
from .registry import OpSpec, register


def is_relu6(module: nn.Module) -> bool:
    """A ``Hardtanh`` clipping to ``[0, 6]`` (``nn.ReLU6`` is one): the bound CLE must keep exact."""
    return isinstance(module, nn.Hardtanh) and (module.min_val, module.max_val) == (0.0, 6.0)


_RELU = dict(fusable_activation=True, cle_activation=True, cle_equivariant=True)
_RELU6 = dict(fusable_activation=True, cle_activation=is_relu6, cle_relu6=is_relu6, cle_equivariant=is_relu6)

# Registration order is the order of the default supergroups (ReLU, ReLU6, BoundedReLU).
RELU = register(OpSpec("ReLU", (nn.ReLU,), relu_upper=lambda m: math.inf, prune_channelwise=True, **_RELU))
RELU6 = register(OpSpec("ReLU6", (nn.ReLU6,), relu_upper=lambda m: 6.0, prune_channelwise=True, **_RELU6))
# Not channelwise for pruning: its bound has one entry per channel, which pruning does not slice.
BOUNDED_RELU = register(OpSpec("BoundedReLU", (BoundedReLU,), relu_upper=lambda m: m.upper, **_RELU))
HARDTANH = register(OpSpec("Hardtanh", (nn.Hardtanh,), cle_activation=is_relu6, cle_relu6=is_relu6,
                           cle_equivariant=is_relu6, prune_channelwise=True))
for _name, _classes in [("GELU", (nn.GELU,)), ("Sigmoid", (nn.Sigmoid,)), ("Tanh", (nn.Tanh,)),
                        ("SiLU", (nn.SiLU,)), ("Hardswish", (nn.Hardswish,)), ("Hardsigmoid", (nn.Hardsigmoid,)),
                        ("ELU", (nn.ELU,))]:
    register(OpSpec(_name, _classes, prune_channelwise=True))
# PReLU may learn one slope per channel, which pruning does not slice.
LEAKY_RELU = register(OpSpec("LeakyReLU", (nn.LeakyReLU, nn.PReLU),
                             prune_channelwise=lambda m: isinstance(m, nn.LeakyReLU)))
SOFTMAX = register(OpSpec("Softmax", (nn.Softmax, nn.LogSoftmax)))
