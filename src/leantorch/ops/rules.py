"""How a functional call is recognised in a traced graph and turned into an op module.

A rule gets the ``(args, kwargs)`` of an fx ``call_function``/``call_method`` node and returns
``(module, tensor_args)`` — the module that replaces the call and the arguments it is called with — or
None to leave the node alone (an unsupported argument). Op families list their rules in
``OpSpec.functions`` / ``OpSpec.methods``; :func:`leantorch.graph_rewrite.functional_to_modules` applies them.

Example:
    >>> from torch import fx, nn
    >>> module, args = simple(nn.ReLU)(("x",), {"inplace": True})
    >>> type(module).__name__, args
    ('ReLU', ('x',))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn

__all__ = ["Made", "Rule", "arg", "binary", "unary", "simple", "fixed_args", "integer_derived"]

Made = "tuple[nn.Module, tuple] | None"
Rule = Callable[[tuple, dict], "tuple[nn.Module, tuple] | None"]


def arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    """Argument ``name`` of a call, given positionally at ``index`` or by keyword."""
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def binary(factory: Callable[[], nn.Module]) -> Rule:
    """``f(a, b)`` → ``factory()(a, b)``; calls with ``alpha != 1`` (``torch.add(a, b, alpha=2)``) stay, and so
    do calls on values made from the model's integer inputs only (a mask: not an activation to quantize)."""

    def rule(args: tuple, kwargs: dict) -> tuple[nn.Module, tuple] | None:
        if len(args) != 2 or kwargs.get("alpha", 1) != 1:
            return None
        nodes = [a for a in args if isinstance(a, fx.Node)]
        if nodes and all(integer_derived(a) for a in nodes):
            return None
        return factory(), tuple(args)

    return rule


def integer_derived(node: object, floating: bool = False) -> bool:
    """Whether a traced value is computed from the model's integer (or bool) inputs and constants only: no float
    input, no layer with parameters, no parameter (sizes of float tensors may be read). Such values (attention
    masks, position indices) are not activations. ``floating``: the value itself must be a float tensor.

    Example:
        >>> integer_derived(None)
        False
    """
    if not isinstance(node, fx.Node) or (floating and not _is_float(node)):
        return False
    seen, stack, integer_input = set(), [node], False
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        if current.op == "placeholder":
            if _is_float(current):
                return False
            integer_input = True
        elif current.op in ("call_module", "get_attr") and _has_parameters(current):
            return False
        if _shape_only(current):
            continue  # x.shape, x.size(), x.dtype ...: the sizes of float tensors, not their values
        stack.extend(current.all_input_nodes)
    return integer_input


def _shape_only(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in ("size", "dim")
    return (
        node.op == "call_function"
        and node.target is getattr
        and node.args[1:2] in (("shape",), ("dtype",), ("device",))
    )


def _is_float(node: fx.Node) -> bool:
    value = node.meta.get("lt_value", node.meta.get("lt_example"))
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _has_parameters(node: fx.Node) -> bool:
    obj: object = node.graph.owning_module
    for part in str(node.target).split("."):
        obj = getattr(obj, part, None)
    if isinstance(obj, nn.Parameter):
        return True
    return isinstance(obj, nn.Module) and any(True for _ in obj.parameters())


def unary(factory: Callable[[tuple, dict], nn.Module | None]) -> Rule:
    """``f(x, ...)`` → ``factory(args, kwargs)(x)`` (None from the factory: leave the call)."""

    def rule(args: tuple, kwargs: dict) -> tuple[nn.Module, tuple] | None:
        # The other arguments become constants of the module: a value computed in the graph (a padding worked out
        # from the input's size) cannot, so the call stays a function call.
        if _holds_node((args[1:], kwargs)):
            return None
        module = factory(args, kwargs)
        return None if module is None else (module, (args[0],))

    return rule


def _holds_node(value: Any) -> bool:
    """Whether a traced value (an fx Node) sits anywhere in nested tuples, lists and dicts."""
    if isinstance(value, fx.Node):
        return True
    if isinstance(value, (list, tuple)):
        return any(_holds_node(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_node(v) for v in value.values())
    return False


def simple(cls: type[nn.Module]) -> Rule:
    """``f(x)`` / ``f(x, inplace)`` → ``cls()(x)``."""
    # ``inplace`` does not change the value; the module version is never in place.
    return unary(lambda args, kwargs: cls() if len(args) <= 2 and set(kwargs) <= {"inplace"} else None)


def fixed_args(cls: type[nn.Module], names: list[str]) -> Rule:
    """``f(x, *rest)`` → ``cls(**rest)(x)`` where ``rest`` are the call's arguments ``names`` (pooling)."""

    def factory(args: tuple, kwargs: dict) -> nn.Module:
        fixed = {name: args[i + 1] for i, name in enumerate(names) if len(args) > i + 1}
        fixed.update({k: v for k, v in kwargs.items() if k in names})
        return cls(**fixed)

    return unary(factory)
