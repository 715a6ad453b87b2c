"""The op registry: one :class:`OpSpec` per op type, and the tables every other module derives from it.

An op type (``"Conv"``, ``"ReLU6"``, ``"Add"`` ...) is what configs, supergroups and reports name. Each is
registered once, in the file of its op family (``conv.py``, ``activation.py`` ...); a new op type is one
new file that calls :func:`register`. The views below (:data:`OP_TYPE_NAMES`, :data:`PASSTHROUGH_TYPES`,
:data:`WEIGHT_AXES`) read the registry on every use, so an op registered after import is seen at once.

Lookup walks the module's class hierarchy (most derived class first), so a subclass of ``nn.Conv2d`` is a
``"Conv"`` and ``nn.ReLU6`` (a ``Hardtanh`` subclass) is a ``"ReLU6"`` whatever the registration order.

Example:
    >>> from torch import nn
    >>> spec_for(nn.ReLU6()).name, spec_for(nn.Conv2d(1, 1, 1)).weight_axis, spec_for(nn.Module()) is None
    ('ReLU6', 0, True)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Set
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, LeanTorchError
from .rules import Rule

__all__ = [
    "Role",
    "ACT",
    "MacCount",
    "OpSpec",
    "register",
    "unregister",
    "spec_for",
    "weight_names",
    "is_registered_class",
    "specs",
    "OP_TYPE_NAMES",
    "PASSTHROUGH_TYPES",
    "WEIGHT_AXES",
    "counted",
    "counted_classes",
    "has_role",
    "default_supergroups",
    "relu_upper",
    "function_rule",
    "method_rule",
    "decomposition",
    "replace_registered_modules",
]

#: A role of an op: a constant, or a predicate on the module (where it depends on the module's settings).
Role = bool | Callable[[nn.Module], bool]
#: In :attr:`OpSpec.supergroups`: any op type with ``fusable_activation``.
ACT = "*activation"

#: ``mac_count(module, input_shape, output_shape)``: MACs per sample of one call with these batched shapes.
MacCount = Callable[[nn.Module, tuple, tuple], int]


@dataclass(frozen=True)
class OpSpec:
    """Everything leantorch knows about one op type.

    Attributes:
        name: the op type name configs and supergroups use.
        modules: the module classes recognised as this op (subclasses match too).
        matches: ``matches(module)`` recognises modules of classes leantorch cannot import (duck typing, e.g.
            torchvision's ``FrozenBatchNorm2d``); asked only for modules no registered class covers.
        passthrough: the output only selects/rearranges input values (already on the input's grid), so
            the default config leaves it unquantized.
        weight_axis: the output-channel axis of the weights when they may be quantized per channel (None: never).
        weight_params: ``weight_params(module)`` names the module's parameters that are weights (quantized by
            the config's weight rule, per channel along ``weight_axis``); None: just ``weight``. Every other
            parameter follows the bias rule.
        mac_count: the cost model's MAC formula; None means the cost model does not count this op.
        supergroups: chains that start at this op and run fused (only their last output is quantized), as
            the op type names that follow it; :data:`ACT` stands for every ``fusable_activation``.
        fusable_activation: may end a supergroup in place of :data:`ACT`.
        functions: ``(target, rule)`` pairs: fx ``call_function`` targets (``F.relu``, ``operator.add``) that
            become this op's module (see :mod:`leantorch.ops.rules`).
        methods: ``(name, rule)`` pairs for tensor methods (``x.relu()``).
        replace: ``replace(module)`` builds what :func:`leantorch.prepare` puts in place of each module of this
            type before tracing: either a decomposition into registered ops that the tracer traces through
            (its class sets ``lt_traced_through = True``; e.g. attention → projections, matmuls, softmax), or a
            leantorch op module that owns its internal quantizers (e.g. an RNN cell loop). It must compute
            the same function in float.
        decompositions: ``(target, function)`` pairs: while tracing, a ``call_function`` of ``target`` is
            replaced by calling ``function`` with the same arguments (on fx proxies), so the call becomes
            the graph of registered ops ``function`` is written in (e.g. ``F.scaled_dot_product_attention``).

    Roles (each ``True``/``False`` or a predicate on the module, for roles that depend on its settings):
        params_quantized: the default config quantizes its parameters (False for BatchNorm, whose affine is
            folded into the conv before deployment rather than being a weight).
        folds_bn_after: a BatchNorm right after it folds into its weight and bias (BN folding).
        folds_bn_before: a BatchNorm right before it folds into it, where that is exact (BN folding checks
            padding and groups).
        cle_scalable: CLE may scale this layer's output channels (and the next one's inputs).
        cle_activation: a (bounded) ReLU CLE may scale through; cle_relu6: one with the fixed bound 6.
        cle_equivariant: ``f(s·x) = s·f(x)`` per channel, so CLE may scale through it.
        zero_pads: pads zeros (CLE's high-bias absorption would turn them into ``-c``).
        relu_upper: for a ReLU-like clip ``[0, upper]``, its upper bound (bias correction's analytical mean).
        bc_transparent: leaves channel means unchanged (bias correction looks through it).
        prune_channelwise: acts on each channel on its own (channel pruning looks through it).
    """

    name: str
    modules: tuple[type, ...]
    matches: Callable[[nn.Module], bool] | None = None
    passthrough: bool = False
    weight_axis: int | None = None
    mac_count: MacCount | None = None
    supergroups: tuple[tuple[str, ...], ...] = ()
    fusable_activation: bool = False
    functions: tuple[tuple[Any, Rule], ...] = ()
    methods: tuple[tuple[str, Rule], ...] = ()
    replace: Callable[[nn.Module], nn.Module] | None = None
    weight_params: Callable[[nn.Module], tuple[str, ...]] | None = None
    decompositions: tuple[tuple[Any, Callable[..., Any]], ...] = ()
    params_quantized: bool = True
    folds_bn_after: bool = False
    folds_bn_before: bool = False
    cle_scalable: Role = False
    cle_activation: Role = False
    cle_relu6: Role = False
    cle_equivariant: Role = False
    zero_pads: Role = False
    relu_upper: Callable[[nn.Module], float | torch.Tensor] | None = None
    bc_transparent: Role = False
    prune_channelwise: Role = False


_SPECS: dict[str, OpSpec] = {}
_BY_CLASS: dict[type, OpSpec] = {}
_FUNCTIONS: dict[Any, Rule] = {}
_METHODS: dict[str, Rule] = {}
_DECOMPOSITIONS: dict[Any, Callable[..., Any]] = {}


def register(spec: OpSpec) -> OpSpec:
    """Add an op type; returns it. Raises :class:`ConfigError` if its name or a module class is taken.

    Example:
        >>> register(OpSpec("Conv", ()))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        leantorch.errors.ConfigError: op type 'Conv' is already registered ...
    """
    if spec.name in _SPECS or spec.name == "Unknown":
        raise ConfigError(
            f"op type {spec.name!r} is already registered (pick another name, or unregister({spec.name!r}) first)"
        )
    taken = [c.__name__ for c in spec.modules if c in _BY_CLASS]
    if taken:
        raise ConfigError(f"{', '.join(taken)} already belong to op type {_BY_CLASS[spec.modules[0]].name!r}")
    targets = (
        [t for t, _ in spec.functions if t in _FUNCTIONS]
        + [m for m, _ in spec.methods if m in _METHODS]
        + [t for t, _ in spec.decompositions if t in _DECOMPOSITIONS]
    )
    if targets:
        raise ConfigError(f"{', '.join(map(str, targets))} already become another op type's module")
    _SPECS[spec.name] = spec
    _FUNCTIONS.update(spec.functions)
    _METHODS.update(spec.methods)
    _DECOMPOSITIONS.update(spec.decompositions)
    for cls in spec.modules:
        _BY_CLASS[cls] = spec
    return spec


def _matched(module: nn.Module) -> OpSpec | None:
    return next((s for s in _SPECS.values() if s.matches is not None and s.matches(module)), None)


def unregister(name: str) -> None:
    """Remove an op type (tests register toy ops and take them away again)."""
    spec = _SPECS.pop(name)
    for cls in spec.modules:
        del _BY_CLASS[cls]
    for target, _ in spec.functions:
        del _FUNCTIONS[target]
    for method, _ in spec.methods:
        del _METHODS[method]
    for target, _ in spec.decompositions:
        del _DECOMPOSITIONS[target]


def spec_for(module: nn.Module) -> OpSpec | None:
    """The spec of a module's most derived registered class, None for modules leantorch has no type for."""
    for cls in type(module).__mro__:
        spec = _BY_CLASS.get(cls)
        if spec is not None:
            return spec
    return _matched(module)


def weight_names(module: nn.Module) -> tuple[str, ...]:
    """The parameters of ``module`` that are weights (its op type's ``weight_params``; else ``weight``).

    Example:
        >>> from torch import nn
        >>> weight_names(nn.Linear(2, 2)), weight_names(nn.LSTM(2, 2, num_layers=2))
        (('weight',), ())
    """
    spec = spec_for(module)
    if spec is None or spec.weight_params is None:
        return ("weight",)
    return spec.weight_params(module)


def is_registered_class(cls: type) -> bool:
    """Whether ``cls`` itself (not a base of it) is registered: tracing keeps such modules opaque."""
    return cls in _BY_CLASS


def specs() -> tuple[OpSpec, ...]:
    """All registered specs, in registration order."""
    return tuple(_SPECS.values())


class _NameView(Set):
    """A read-only set of op type names, recomputed from the registry on each use."""

    def __init__(self, select: Callable[[OpSpec], bool], extra: tuple[str, ...] = ()) -> None:
        self._select, self._extra = select, extra

    def _names(self) -> list[str]:
        return [s.name for s in _SPECS.values() if self._select(s)] + list(self._extra)

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return f"{{{', '.join(map(repr, self._names()))}}}"


class _WeightAxes(Mapping):
    """Op type name → per-channel weight axis, for the registered ops that have one."""

    def _axes(self) -> dict[str, int]:
        return {s.name: s.weight_axis for s in _SPECS.values() if s.weight_axis is not None}

    def __getitem__(self, name: str) -> int:
        return self._axes()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._axes())

    def __len__(self) -> int:
        return len(self._axes())

    def __repr__(self) -> str:
        return repr(self._axes())


#: Every op type name a config may use (``"Unknown"``: leaf modules leantorch has no type for).
OP_TYPE_NAMES: Set = _NameView(lambda s: True, extra=("Unknown",))
#: Op types whose output is a selection/rearrangement of input values (already on the input's grid).
PASSTHROUGH_TYPES: Set = _NameView(lambda s: s.passthrough)
#: Op types whose ``weight`` may be quantized per output channel, with the channel axis of the weight.
WEIGHT_AXES: Mapping = _WeightAxes()


def counted(module: nn.Module) -> bool:
    """Whether the cost model counts this module's MACs (its op type has a MAC formula)."""
    spec = spec_for(module)
    return spec is not None and spec.mac_count is not None


def counted_classes() -> tuple[type, ...]:
    """The module classes the cost model counts, in registration order (for messages)."""
    return tuple(c for s in _SPECS.values() if s.mac_count is not None for c in s.modules)


def has_role(module: nn.Module, role: str) -> bool:
    """Whether ``module``'s op type plays ``role`` (an :class:`OpSpec` role field) for this module.

    Example:
        >>> from torch import nn
        >>> has_role(nn.Hardtanh(0.0, 6.0), "cle_relu6"), has_role(nn.Hardtanh(), "cle_relu6")
        (True, False)
    """
    spec = spec_for(module)
    if spec is None:
        return False
    value = getattr(spec, role)
    return bool(value(module)) if callable(value) else bool(value)


def default_supergroups() -> list[list[str]]:
    """The default config's supergroups: every op's chains without an activation, then for each fusable
    activation (in registration order) every op's chains ending in it."""
    groups = [[s.name, *tail] for s in _SPECS.values() for tail in s.supergroups if ACT not in tail]
    for act in [s.name for s in _SPECS.values() if s.fusable_activation]:
        groups += [
            [s.name, *(act if t == ACT else t for t in tail)]
            for s in _SPECS.values()
            for tail in s.supergroups
            if ACT in tail
        ]
    return groups


def relu_upper(module: nn.Module) -> float | torch.Tensor | None:
    """The upper clip of a ReLU-like module (``inf``, ``6.0``, a per-channel tensor), None if it is none."""
    spec = spec_for(module)
    return None if spec is None or spec.relu_upper is None else spec.relu_upper(module)


def function_rule(target: Any) -> Rule | None:
    """The rule that turns a ``call_function`` of ``target`` into an op module, None if no op has one."""
    return _FUNCTIONS.get(target)


def method_rule(name: str) -> Rule | None:
    """The rule that turns a ``call_method`` of tensor method ``name`` into an op module, None if none."""
    return _METHODS.get(name)


def decomposition(target: Any) -> Callable[..., Any] | None:
    """The function a traced ``call_function`` of ``target`` is decomposed into, None if no op has one."""
    return _DECOMPOSITIONS.get(target)


def replace_registered_modules(
    model: nn.Module, keep: Callable[[str, nn.Module], bool] | None = None
) -> tuple[nn.Module, list[str]]:
    """Put ``spec.replace(module)`` in place of every module whose op type has a ``replace`` (except where
    ``keep(name, module)`` is true); returns the (possibly new) root and the qualified names replaced.
    Mutates ``model``: call it on a copy.

    Example:
        >>> from torch import nn
        >>> replace_registered_modules(nn.Sequential(nn.ReLU()))[1]
        []
    """
    replaced: list[str] = []
    for name, module in list(model.named_modules()):
        spec = spec_for(module)
        inside_replaced = any(name.startswith(r + ".") for r in replaced)
        if spec is None or spec.replace is None or inside_replaced or getattr(module, "lt_traced_through", False):
            continue
        if keep is not None and keep(name, module):
            continue
        try:
            new = spec.replace(module)
        except LeanTorchError as exc:  # name the module: replace() sees only the module itself
            raise type(exc)(f"{name or '<root>'}: {exc}") from exc
        if not name:
            return new, [""]
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
        replaced.append(name)
    return model, replaced
