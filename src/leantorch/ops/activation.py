"""Activations. ``ReLU6`` is a ``Hardtanh`` subclass; lookup by class hierarchy keeps it a ``"ReLU6"``.

The ReLU family can be fused into the layer before it (supergroups), CLE scales through it, and bias
correction knows its clip range. Every pointwise activation is channelwise for channel pruning.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .modules import BoundedReLU
from .registry import OpSpec, register
from .rules import arg, simple, unary

__all__ = ["is_relu6", "RELU", "RELU6", "BOUNDED_RELU", "HARDTANH", "GELU", "SIGMOID", "TANH", "LEAKY_RELU", "SOFTMAX"]


def is_relu6(module: nn.Module) -> bool:
    """A ``Hardtanh`` clipping to ``[0, 6]`` (``nn.ReLU6`` is one): the bound CLE must keep exact."""
    return isinstance(module, nn.Hardtanh) and (module.min_val, module.max_val) == (0.0, 6.0)


def _hardtanh(args: tuple, kwargs: dict) -> nn.Module:
    lo, hi = arg(args, kwargs, 1, "min_val", -1.0), arg(args, kwargs, 2, "max_val", 1.0)
    return nn.ReLU6() if (lo, hi) == (0.0, 6.0) else nn.Hardtanh(lo, hi)


def _softmax(args: tuple, kwargs: dict) -> nn.Module | None:
    dim = arg(args, kwargs, 1, "dim")
    return None if dim is None or kwargs.get("dtype") is not None else nn.Softmax(dim=dim)


def _calls(*targets: object, rule: object) -> tuple:
    return tuple((t, rule) for t in targets)


_RELU = dict(fusable_activation=True, cle_activation=True, cle_equivariant=True)
_RELU6 = dict(fusable_activation=True, cle_activation=is_relu6, cle_relu6=is_relu6, cle_equivariant=is_relu6)

# Registration order is the order of the default supergroups (ReLU, ReLU6, BoundedReLU).
RELU = register(
    OpSpec(
        "ReLU",
        (nn.ReLU,),
        relu_upper=lambda m: math.inf,
        prune_channelwise=True,
        functions=_calls(F.relu, torch.relu, rule=simple(nn.ReLU)),
        methods=_calls("relu", rule=simple(nn.ReLU)),
        **_RELU,
    )
)
RELU6 = register(
    OpSpec(
        "ReLU6",
        (nn.ReLU6,),
        relu_upper=lambda m: 6.0,
        prune_channelwise=True,
        functions=_calls(F.relu6, rule=simple(nn.ReLU6)),
        **_RELU6,
    )
)
# Not channelwise for pruning: its bound has one entry per channel, which pruning does not slice.
BOUNDED_RELU = register(OpSpec("BoundedReLU", (BoundedReLU,), relu_upper=lambda m: m.upper, **_RELU))
HARDTANH = register(
    OpSpec(
        "Hardtanh",
        (nn.Hardtanh,),
        cle_activation=is_relu6,
        cle_relu6=is_relu6,
        cle_equivariant=is_relu6,
        prune_channelwise=True,
        functions=_calls(F.hardtanh, rule=unary(_hardtanh)),
    )
)
GELU = register(
    OpSpec(
        "GELU",
        (nn.GELU,),
        prune_channelwise=True,
        functions=_calls(F.gelu, rule=unary(lambda a, k: nn.GELU(approximate=arg(a, k, 1, "approximate", "none")))),
    )
)
SIGMOID = register(
    OpSpec(
        "Sigmoid",
        (nn.Sigmoid,),
        prune_channelwise=True,
        functions=_calls(torch.sigmoid, F.sigmoid, rule=simple(nn.Sigmoid)),
        methods=_calls("sigmoid", rule=simple(nn.Sigmoid)),
    )
)
TANH = register(
    OpSpec(
        "Tanh",
        (nn.Tanh,),
        prune_channelwise=True,
        functions=_calls(torch.tanh, F.tanh, rule=simple(nn.Tanh)),
        methods=_calls("tanh", rule=simple(nn.Tanh)),
    )
)
for _name, _cls, _function in [
    ("SiLU", nn.SiLU, F.silu),
    ("Hardswish", nn.Hardswish, F.hardswish),
    ("Hardsigmoid", nn.Hardsigmoid, F.hardsigmoid),
    ("ELU", nn.ELU, None),
]:
    register(
        OpSpec(
            _name, (_cls,), prune_channelwise=True, functions=_calls(_function, rule=simple(_cls)) if _function else ()
        )
    )
# PReLU may learn one slope per channel, which pruning does not slice.
LEAKY_RELU = register(
    OpSpec(
        "LeakyReLU",
        (nn.LeakyReLU, nn.PReLU),
        prune_channelwise=lambda m: isinstance(m, nn.LeakyReLU),
        functions=_calls(F.leaky_relu, rule=unary(lambda a, k: nn.LeakyReLU(arg(a, k, 1, "negative_slope", 0.01)))),
    )
)
SOFTMAX = register(
    OpSpec(
        "Softmax",
        (nn.Softmax, nn.LogSoftmax),
        functions=_calls(F.softmax, torch.softmax, rule=unary(_softmax)),
        methods=_calls("softmax", rule=unary(_softmax)),
    )
)
