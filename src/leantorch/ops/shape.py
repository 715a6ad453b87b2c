"""Data movement: flatten, pad, pooling, dropout, identity. All but ``AvgPool`` are passthrough (their
output values are input values, already on the input's grid); an average makes new values.

Roles are per class where the algorithms only handle some dimensionalities (CLE: 1-D/2-D max-pool,
channel pruning: 2-D layers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .modules import Pad
from .registry import OpSpec, register
from .rules import arg, fixed_args, unary

__all__ = ["FLATTEN", "PAD", "MAX_POOL", "AVG_POOL", "DROPOUT", "IDENTITY"]


def _flatten(args: tuple, kwargs: dict) -> nn.Module:
    return nn.Flatten(arg(args, kwargs, 1, "start_dim", 0), arg(args, kwargs, 2, "end_dim", -1))


def _pad(args: tuple, kwargs: dict) -> nn.Module:
    return Pad(
        arg(args, kwargs, 1, "pad"), arg(args, kwargs, 2, "mode", "constant"), arg(args, kwargs, 3, "value", None)
    )


def _pad_equivariant(m: nn.Module) -> bool:
    # Padding zeros commutes with a per-channel scale; padding another constant does not.
    if isinstance(m, nn.ZeroPad2d):
        return True
    if isinstance(m, (nn.ConstantPad1d, nn.ConstantPad2d)):
        return m.value == 0
    return isinstance(m, Pad) and m.mode == "constant" and not m.value


def _isinstance(*classes: type):  # a role predicate: "only these classes of the op type"
    return lambda m: isinstance(m, classes)


FLATTEN = register(
    OpSpec(
        "Flatten",
        (nn.Flatten, nn.Unflatten),
        passthrough=True,
        functions=((torch.flatten, unary(_flatten)),),
        methods=(("flatten", unary(_flatten)),),
    )
)
PAD = register(
    OpSpec(
        "Pad",
        (Pad, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d),
        passthrough=True,
        cle_equivariant=_pad_equivariant,
        zero_pads=_isinstance(nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, Pad),
        prune_channelwise=_isinstance(nn.ZeroPad2d, nn.ConstantPad2d),
        functions=((F.pad, unary(_pad)),),
    )
)
MAX_POOL = register(
    OpSpec(
        "MaxPool",
        (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool2d),
        passthrough=True,
        cle_equivariant=_isinstance(nn.MaxPool1d, nn.MaxPool2d),
        prune_channelwise=_isinstance(nn.MaxPool2d),
        functions=(
            (F.max_pool2d, fixed_args(nn.MaxPool2d, ["kernel_size", "stride", "padding", "dilation", "ceil_mode"])),
        ),
    )
)
AVG_POOL = register(
    OpSpec(
        "AvgPool",
        (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d),
        prune_channelwise=_isinstance(nn.AvgPool2d),
        functions=(
            (F.adaptive_avg_pool2d, fixed_args(nn.AdaptiveAvgPool2d, ["output_size"])),
            (
                F.avg_pool2d,
                fixed_args(nn.AvgPool2d, ["kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"]),
            ),
        ),
    )
)
DROPOUT = register(
    OpSpec(
        "Dropout",
        (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d),
        passthrough=True,
        cle_equivariant=_isinstance(nn.Dropout),
        bc_transparent=_isinstance(nn.Dropout),
        prune_channelwise=_isinstance(nn.Dropout, nn.Dropout2d),
    )
)
IDENTITY = register(
    OpSpec(
        "Identity", (nn.Identity,), passthrough=True, cle_equivariant=True, bc_transparent=True, prune_channelwise=True
    )
)
