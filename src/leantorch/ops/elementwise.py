"""Functional ops made modules by :func:`leantorch.prepare`: arithmetic, concat, resize, mean."""

from __future__ import annotations

from torch import nn

from .modules import Add, Cat, Div, Interpolate, MatMul, Mean, Mul, Sub
from .registry import ACT, OpSpec, register

# A residual add is fused with the activation after it.
ADD = register(OpSpec("Add", (Add,), supergroups=((ACT,),)))
for _name, _classes in [
    ("Sub", (Sub,)), ("Mul", (Mul,)), ("Div", (Div,)), ("MatMul", (MatMul,)),
    ("Concat", (Cat,)), ("Interpolate", (Interpolate, nn.Upsample)), ("Mean", (Mean,)),
]:
    register(OpSpec(_name, _classes))
