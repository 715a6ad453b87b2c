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

from torch import fx, nn

__all__ = ["Made", "Rule", "arg", "binary", "unary", "simple", "fixed_args"]

Made = "tuple[nn.Module, tuple] | None"
Rule = Callable[[tuple, dict], "tuple[nn.Module, tuple] | None"]


def arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    """Argument ``name`` of a call, given positionally at ``index`` or by keyword."""
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def binary(factory: Callable[[], nn.Module]) -> Rule:
    """``f(a, b)`` → ``factory()(a, b)``; calls with ``alpha != 1`` (``torch.add(a, b, alpha=2)``) stay."""

    def rule(args: tuple, kwargs: dict) -> tuple[nn.Module, tuple] | None:
        if len(args) != 2 or kwargs.get("alpha", 1) != 1:
            return None
        return factory(), tuple(args)

    return rule


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
