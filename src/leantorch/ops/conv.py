"""Convolutions: ``Conv`` (1-3d) and ``ConvTranspose`` (1-3d), their MAC formulas, and the one definition
of a depthwise conv.

Example:
    >>> from torch import nn
    >>> conv_macs(nn.Conv2d(3, 8, 3, stride=2, padding=1), (1, 3, 8, 8), (1, 8, 4, 4))
    3456
    >>> is_depthwise(nn.Conv2d(8, 8, 3, groups=8)), is_depthwise(nn.Conv2d(8, 16, 3, groups=8))
    (True, False)
"""

from __future__ import annotations

import math

from torch import nn

from .registry import ACT, OpSpec, register

__all__ = ["is_depthwise", "conv_macs", "conv_transpose_macs", "CONV", "CONV_TRANSPOSE"]


def is_depthwise(module: nn.Module) -> bool:
    """A 2-D conv (or subclass) with one filter per input channel: ``groups == in == out > 1``.

    CLE and channel pruning both use this; pruning additionally requires the exact class ``nn.Conv2d``
    (it rebuilds the layer), which it checks itself.
    """
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == module.in_channels == module.out_channels
        and module.groups > 1
    )


def conv_macs(module: nn.Module, input_shape: tuple, output_shape: tuple) -> int:
    """MACs per sample: every output position costs ``in_channels / groups * kernel`` per output channel."""
    kernel = math.prod(module.kernel_size)
    return module.out_channels * math.prod(output_shape[2:]) * (module.in_channels // module.groups) * kernel


def conv_transpose_macs(module: nn.Module, input_shape: tuple, output_shape: tuple) -> int:
    """MACs per sample: every input position scatters ``out_channels / groups * kernel`` products."""
    kernel = math.prod(module.kernel_size)
    return module.in_channels * math.prod(input_shape[2:]) * (module.out_channels // module.groups) * kernel


def _cle_scalable(module: nn.Module) -> bool:
    # CLE scales a 1-D/2-D conv's output channels when each one has its own filter over all inputs, or is
    # depthwise (the scale then passes straight through to the next layer).
    return isinstance(module, (nn.Conv1d, nn.Conv2d)) and (module.groups == 1 or is_depthwise(module))


# Runtimes fuse a conv with the BatchNorm and/or activation after it.
_FUSED = (("BatchNorm",), (ACT,), ("BatchNorm", ACT))

CONV = register(
    OpSpec(
        "Conv",
        (nn.Conv1d, nn.Conv2d, nn.Conv3d),
        weight_axis=0,
        mac_count=conv_macs,
        supergroups=_FUSED,
        folds_bn_after=True,
        folds_bn_before=True,
        cle_scalable=_cle_scalable,
    )
)
# A transposed conv's weight is (in, out / groups, k...): its output channels are axis 1.
CONV_TRANSPOSE = register(
    OpSpec(
        "ConvTranspose",
        (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d),
        weight_axis=1,
        mac_count=conv_transpose_macs,
        supergroups=_FUSED,
        folds_bn_after=True,
    )
)
