"""The op registry and the modules that stand in for functional ops (``x + y``, ``torch.cat`` ...).

:func:`leantorch.prepare` replaces functional calls in the traced graph by the modules of
:mod:`leantorch.ops.modules` so that each call site can carry its own quantizers, exactly like a
``nn.Conv2d``. Every op type leantorch knows is one :class:`OpSpec` registered by one family file below;
``graph.op_type``, the config's per-op tables and the cost model read it. A new op type is one file that
calls :func:`register` (see ``tests/test_ops_registry.py``).

Example:
    >>> Add()(torch.ones(2), 2.0).tolist()
    [3.0, 3.0]
    >>> spec_for(Add()).name
    'Add'
"""

from __future__ import annotations

import torch  # noqa: F401  (the doctest above uses it)

from .modules import Add, BoundedReLU, Cat, Div, Interpolate, MatMul, Mean, Mul, Pad, Sub
from .registry import (
    ACT,
    OP_TYPE_NAMES,
    PASSTHROUGH_TYPES,
    WEIGHT_AXES,
    OpSpec,
    counted,
    counted_classes,
    decomposition,
    default_supergroups,
    function_rule,
    has_role,
    is_registered_class,
    method_rule,
    register,
    relu_upper,
    replace_registered_modules,
    spec_for,
    specs,
    unregister,
    weight_names,
)

# Importing a family registers its op types; the order is the order of specs() (names, messages), so it is
# kept out of import sorting.
# isort: off
from . import conv, linear, norm, activation, elementwise, shape, attention, rnn  # noqa: F401

# isort: on
from .conv import is_depthwise
from .linear import TransposedLinear

__all__ = [
    "Add",
    "BoundedReLU",
    "Cat",
    "Div",
    "Interpolate",
    "MatMul",
    "Mean",
    "Mul",
    "Pad",
    "Sub",
    "TransposedLinear",
    "ACT",
    "OP_TYPE_NAMES",
    "PASSTHROUGH_TYPES",
    "WEIGHT_AXES",
    "OpSpec",
    "counted",
    "counted_classes",
    "decomposition",
    "default_supergroups",
    "function_rule",
    "has_role",
    "is_depthwise",
    "is_registered_class",
    "method_rule",
    "register",
    "relu_upper",
    "replace_registered_modules",
    "spec_for",
    "specs",
    "unregister",
    "weight_names",
]
