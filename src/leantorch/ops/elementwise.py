"""Functional ops made modules by :func:`leantorch.prepare`: arithmetic, concat, resize, mean.

Each spec lists the calls it replaces (``operator.add``, ``torch.add``, ``x.add(y)`` ...).
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from .attention_mask import AttentionMask, is_mask_operand
from .modules import Add, Cat, Div, Interpolate, MatMul, Mean, Mul, Sub
from .registry import ACT, OpSpec, register
from .rules import arg, binary, unary

__all__ = ["ADD", "SUB", "MUL", "DIV", "MATMUL", "CONCAT", "INTERPOLATE", "MEAN"]


def _cat(args: tuple, kwargs: dict) -> tuple[nn.Module, tuple] | None:
    tensors = args[0] if args else kwargs.get("tensors")
    if not isinstance(tensors, (list, tuple)):
        return None
    return Cat(arg(args, kwargs, 1, "dim", 0)), tuple(tensors)


def _interpolate(args: tuple, kwargs: dict) -> nn.Module:
    names = ["size", "scale_factor", "mode", "align_corners", "recompute_scale_factor", "antialias"]
    fixed = {name: args[i + 1] for i, name in enumerate(names) if len(args) > i + 1}
    fixed.update({k: v for k, v in kwargs.items() if k in names})
    return Interpolate(**fixed)


def _mean(args: tuple, kwargs: dict) -> nn.Module | None:
    if kwargs.get("dtype") is not None:
        return None
    return Mean(arg(args, kwargs, 1, "dim"), bool(arg(args, kwargs, 2, "keepdim", False)))


def _binary_op(name: str, cls: type[nn.Module], functions: tuple, method: str | None, **roles: object) -> OpSpec:
    rule = binary(cls)
    return register(
        OpSpec(
            name,
            (cls,),
            functions=tuple((f, rule) for f in functions),
            methods=((method, rule),) if method else (),
            **roles,
        )
    )


def _add(args: tuple, kwargs: dict) -> tuple[nn.Module, tuple] | None:
    """``a + b``; scores plus an attention mask made from the model's integer inputs is an AttentionMask."""
    if len(args) == 2 and not kwargs:
        for scores, mask in ((args[0], args[1]), (args[1], args[0])):
            if is_mask_operand(mask) and not is_mask_operand(scores):
                return AttentionMask("additive"), (scores, mask)
    return binary(Add)(args, kwargs)


# A residual add is fused with the activation after it.
ADD = register(
    OpSpec(
        "Add",
        (Add,),
        functions=((operator.add, _add), (torch.add, _add)),
        methods=(("add", _add),),
        supergroups=((ACT,),),
    )
)
SUB = _binary_op("Sub", Sub, (operator.sub, torch.sub), "sub")
MUL = _binary_op("Mul", Mul, (operator.mul, torch.mul), "mul")
DIV = _binary_op("Div", Div, (operator.truediv, torch.div), "div")
MATMUL = _binary_op("MatMul", MatMul, (operator.matmul, torch.matmul, torch.bmm), "matmul")
CONCAT = register(OpSpec("Concat", (Cat,), functions=((torch.cat, _cat), (torch.concat, _cat))))
INTERPOLATE = register(
    OpSpec("Interpolate", (Interpolate, nn.Upsample), functions=((F.interpolate, unary(_interpolate)),))
)
MEAN = register(OpSpec("Mean", (Mean,), functions=((torch.mean, unary(_mean)),), methods=(("mean", unary(_mean)),)))
