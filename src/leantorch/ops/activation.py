"""Activations. ``ReLU6`` is a ``Hardtanh`` subclass; lookup by class hierarchy keeps it a ``"ReLU6"``."""

from __future__ import annotations

from torch import nn

from .modules import BoundedReLU
from .registry import OpSpec, register

for _name, _classes in [
    ("ReLU6", (nn.ReLU6,)), ("ReLU", (nn.ReLU,)), ("BoundedReLU", (BoundedReLU,)), ("Hardtanh", (nn.Hardtanh,)),
    ("GELU", (nn.GELU,)), ("Sigmoid", (nn.Sigmoid,)), ("Tanh", (nn.Tanh,)), ("SiLU", (nn.SiLU,)),
    ("Hardswish", (nn.Hardswish,)), ("Hardsigmoid", (nn.Hardsigmoid,)), ("LeakyReLU", (nn.LeakyReLU, nn.PReLU)),
    ("ELU", (nn.ELU,)), ("Softmax", (nn.Softmax, nn.LogSoftmax)),
]:
    register(OpSpec(_name, _classes))
