"""Rewrites of a traced graph: functional calls become modules, shared stateless modules are split.

Each functional call that needs a quantizer (``x + y``, ``F.relu``, ``torch.cat``, ``F.conv2d`` with the
model's own weight ...) becomes a ``call_module`` node, so that every call site carries its own
quantizers. Only nodes whose recorded value is a floating-point tensor are rewritten, so arithmetic on
shapes (``x.size(1) * 2``) stays as it is.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from . import ops
from .ops.rules import arg

__all__ = [
    "is_float_tensor_node",
    "record_values",
    "store_value",
    "functional_to_modules",
    "split_shared_stateless_modules",
]

log = logging.getLogger(__name__)

# Which calls become which op modules is each op's OpSpec.functions / OpSpec.methods (leantorch.ops).
_arg = arg  # the weighted-functional rules below read arguments the same way


def is_float_tensor_node(node: fx.Node) -> bool:
    """True if the recorded value of ``node`` (see :func:`record_values`) is a floating-point tensor."""
    value = node.meta.get("lt_value")
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def record_values(gm: fx.GraphModule, example_inputs: tuple) -> None:
    """Run ``gm`` once and keep, in ``node.meta['lt_value']``, a zero-size stand-in of each value.

    Tensors are kept as ``torch.empty(0)`` of the right dtype plus their shape in ``lt_shape``, so the
    pass costs no memory.
    """

    class _Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            result = super().run_node(n)
            store_value(n, result)
            return result

    with torch.no_grad():
        _Recorder(gm).run(*example_inputs)


def store_value(node: fx.Node, value: Any) -> None:
    """Keep what :func:`record_values` keeps of ``node``'s value: a zero-size stand-in and the tensor's shape."""
    node.meta["lt_value"] = _stand_in(value)
    if isinstance(value, torch.Tensor):
        node.meta["lt_shape"] = tuple(value.shape)


def _stand_in(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return torch.empty(0, dtype=value.dtype)
    if isinstance(value, (list, tuple)):
        return type(value)(_stand_in(v) for v in value) if isinstance(value, tuple) else [_stand_in(v) for v in value]
    return value


def functional_to_modules(gm: fx.GraphModule) -> int:
    """Replace functional calls that need quantizers by modules; returns how many were replaced."""
    replaced = 0
    for node in list(gm.graph.nodes):
        rule = None
        if node.op == "call_function":
            rule = ops.function_rule(node.target)
        elif node.op == "call_method":
            rule = ops.method_rule(node.target)
        if rule is None or not is_float_tensor_node(node):
            continue
        made = rule(tuple(node.args), dict(node.kwargs))
        if made is None:
            continue
        module, tensor_args = made
        op_name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "op")
        _insert_module_call(gm, node, module, _unique_name(gm, node, op_name), tensor_args)
        replaced += 1
    replaced += _weighted_functionals_to_modules(gm)
    return replaced


def _unique_name(gm: fx.GraphModule, node: fx.Node, op_name: str) -> str:
    scope = node.meta.get("lt_scope", "")
    base = f"{scope}.{op_name}".lstrip(".")
    existing = dict(gm.named_modules())
    name, k = base, 1
    while name in existing:
        name, k = f"{base}_{k}", k + 1
    return name


def _insert_module_call(gm: fx.GraphModule, node: fx.Node, module: nn.Module, target: str, args: tuple) -> fx.Node:
    gm.add_submodule(target, module)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(target, args=tuple(args))
    new.meta.update(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return new


_CONV_FUNCTIONS = {F.conv1d: nn.Conv1d, F.conv2d: nn.Conv2d, F.conv3d: nn.Conv3d}


def _weighted_functionals_to_modules(gm: fx.GraphModule) -> int:
    """``F.conv*``/``F.linear``/``F.layer_norm``/``F.batch_norm`` on the model's own parameters become real layers.

    This is how nn.Conv2d subclasses with their own forward (EfficientNet's ``Conv2dStaticSamePadding``:
    pad, then ``F.conv2d(x, self.weight, ...)``) end up as ordinary convs that BN folding, CLE and the
    quantizers see. The new layer takes the name of the module that owned the weight.
    """
    replaced = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or not is_float_tensor_node(node):
            continue
        if node.target in _CONV_FUNCTIONS:
            built = _conv_from_node(gm, node)
        elif node.target is F.linear:
            built = _linear_from_node(gm, node)
        elif node.target is F.layer_norm:
            built = _layer_norm_from_node(gm, node)
        elif node.target is torch.addmm:
            built = _addmm_from_node(gm, node)
        elif node.target is F.batch_norm:
            built = _batch_norm_from_node(gm, node)
        else:
            continue
        if built is None:
            continue
        module, owner = built
        target = _claim_owner_name(gm, owner) or _unique_name(gm, node, type(module).__name__.lower())
        data = node.args[1] if node.target is torch.addmm else node.args[0]
        _insert_module_call(gm, node, module, target, (data,))
        replaced += 1
    # fx's eliminate_dead_code without its lint: a folded weight's dead reads name attributes its owner lost.
    for dead in [n for n in reversed(gm.graph.nodes) if n.op not in ("placeholder", "output")]:
        if not dead.users and not _has_side_effects(dead):
            gm.graph.erase_node(dead)
    gm.delete_all_unused_submodules()
    return replaced


def _has_side_effects(node: fx.Node) -> bool:
    """fx's impure nodes, and in-place tensor methods and functions (``x.mul_(gamma)``, ``torch.relu_(x)``).

    Their result is often unused: the mutated tensor is read through its old name (``y.add_(x); return relu(y)``,
    timm's ``LayerScale(inplace=True)`` style). fx's dead-code elimination counts a ``call_method`` as pure and
    dropped the write: the traced model computed something else, and prepare refused it.

    Example:
        >>> gm = fx.symbolic_trace(lambda x: (x.add_(1), x)[1])
        >>> [_has_side_effects(n) for n in gm.graph.nodes if n.op == "call_method"]
        [True]
    """
    if node.is_impure():
        return True
    if node.op == "call_method":
        name = node.target
    elif node.op == "call_function":
        name = getattr(node.target, "__name__", "")
    else:
        return False
    return isinstance(name, str) and name.endswith("_") and not name.endswith("__")


def _param(gm: fx.GraphModule, arg: Any) -> tuple[nn.Parameter, str] | None:
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        value = _fetch(gm, arg.target)
        if isinstance(value, nn.Parameter):
            return value, arg.target.rsplit(".", 1)[0] if "." in arg.target else ""
    return None


def _fetch(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _optional_param(gm: fx.GraphModule, arg: Any) -> tuple[bool, nn.Parameter | None]:
    """(ok, param): ok is False when ``arg`` is a computed tensor we cannot own."""
    if arg is None:
        return True, None
    found = _param(gm, arg)
    return (found is not None), (found[0] if found else None)


def _owned_weight_and_bias(
    gm: fx.GraphModule, node: fx.Node, fold_weight: bool = False
) -> tuple[nn.Parameter, nn.Parameter | None, str] | None:
    """(weight, bias, owner) of a functional conv/linear: parameters, or computed from them (:func:`_folded_weight`;
    conv weights, any bias: BEiT/EVA's ``cat(q_bias, 0, v_bias)``)."""
    args, kwargs = tuple(node.args), dict(node.kwargs)
    weight = _param(gm, _arg(args, kwargs, 1, "weight"))
    if weight is None and fold_weight:
        weight = _folded_weight(gm, node, _arg(args, kwargs, 1, "weight"))
    ok, bias = _optional_param(gm, _arg(args, kwargs, 2, "bias"))
    if not ok and weight is not None:
        folded = _folded_weight(gm, node, _arg(args, kwargs, 2, "bias"))
        ok, bias = folded is not None, folded[0] if folded else None
    if weight is None or not ok:
        return None
    return weight[0], bias, weight[1]


def _conv_from_node(gm: fx.GraphModule, node: fx.Node) -> tuple[nn.Module, str] | None:
    args, kwargs = tuple(node.args), dict(node.kwargs)
    owned = _owned_weight_and_bias(gm, node, fold_weight=True)
    if owned is None:
        return None
    w, bias, owner = owned
    groups = _arg(args, kwargs, 6, "groups", 1)
    conv = _CONV_FUNCTIONS[node.target](
        w.shape[1] * groups,
        w.shape[0],
        tuple(w.shape[2:]),
        stride=_arg(args, kwargs, 3, "stride", 1),
        padding=_arg(args, kwargs, 4, "padding", 0),
        dilation=_arg(args, kwargs, 5, "dilation", 1),
        groups=groups,
        bias=bias is not None,
    )
    conv.weight, conv.bias = w, bias
    return conv, owner


def _folded_weight(gm: fx.GraphModule, conv: fx.Node, weight: Any) -> tuple[nn.Parameter, str] | None:
    """A conv weight (or a bias) computed from parameters alone → its value as a parameter, and its owner.

    Weight-standardised convs (timm's ``StdConv2d``/``ScaledStdConv2d``: BiT, ResNetV2, NF-Nets) run ``F.batch_norm``
    over their raw weight in every forward; left so, the conv stays float. Folded like BN: the same function. Only
    when the computation reads no input, calls no layer with state, writes nothing and feeds nothing else.
    """
    nodes: dict[fx.Node, None] = {}
    stack = [weight]
    while stack:
        n = stack.pop()
        if not isinstance(n, fx.Node) or n.op not in ("get_attr", "call_function", "call_method", "call_module"):
            return None
        # an op module made from a call (``gain * scale`` → Mul) is a function; a layer with state is not
        if _has_side_effects(n) or (n.op == "call_module" and gm.get_submodule(str(n.target)).state_dict()):
            return None
        if n not in nodes:
            nodes[n] = None
            stack.extend(n.all_input_nodes)
    if any(u not in nodes and u is not conv for n in nodes for u in n.users):
        return None
    values: dict[fx.Node, Any] = {}
    with torch.no_grad():
        for n in sorted(nodes, key=list(gm.graph.nodes).index):
            a, k = fx.node.map_arg((n.args, n.kwargs), values.__getitem__)
            values[n] = (
                _fetch(gm, str(n.target))
                if n.op == "get_attr"
                else n.target(*a, **k)
                if n.op == "call_function"
                else getattr(a[0], str(n.target))(*a[1:], **k)
                if n.op == "call_method"
                else gm.get_submodule(str(n.target))(*a, **k)
            )
    params = [n for n in nodes if n.op == "get_attr" and isinstance(values[n], nn.Parameter)]
    if len(nodes) < 2 or not params or not isinstance(values[weight], torch.Tensor):
        return None
    raw = min(params, key=lambda n: (not str(n.target).endswith("weight"), str(n.target)))
    log.info("a layer's weight/bias computed from parameters alone is folded: %s", raw.target)
    return nn.Parameter(values[weight].detach().clone(), values[raw].requires_grad), str(raw.target).rpartition(".")[0]


def _linear_from_node(gm: fx.GraphModule, node: fx.Node) -> tuple[nn.Module, str] | None:
    owned = _owned_weight_and_bias(gm, node)
    if owned is None:
        return None
    w, bias, owner = owned
    linear = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    linear.weight, linear.bias = w, bias
    return linear, owner


def _addmm_from_node(gm: fx.GraphModule, node: fx.Node) -> tuple[nn.Module, str] | None:
    """``torch.addmm(bias, x, weight)`` on parameters (GPT-2's ``Conv1D``) → a ``TransposedLinear`` layer."""
    if len(node.args) != 3 or node.kwargs:  # beta/alpha scaling: leave the call
        return None
    bias, weight = _param(gm, node.args[0]), _param(gm, node.args[2])
    if bias is None or weight is None or bias[1] != weight[1]:
        return None
    return ops.TransposedLinear(weight[0], bias[0]), weight[1]


def _layer_norm_from_node(gm: fx.GraphModule, node: fx.Node) -> tuple[nn.Module, str] | None:
    args, kwargs = tuple(node.args), dict(node.kwargs)
    ok_w, weight = _optional_param(gm, _arg(args, kwargs, 2, "weight"))
    ok_b, bias = _optional_param(gm, _arg(args, kwargs, 3, "bias"))
    if not (ok_w and ok_b) or (weight is None) != (bias is None):
        return None
    shape = _arg(args, kwargs, 1, "normalized_shape")
    norm = nn.LayerNorm(shape, eps=_arg(args, kwargs, 4, "eps", 1e-5), elementwise_affine=weight is not None)
    if weight is not None:
        norm.weight, norm.bias = weight, bias
    owner = _param(gm, _arg(args, kwargs, 2, "weight"))
    return norm, owner[1] if owner else ""


_BATCH_NORMS = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def _batch_norm_from_node(gm: fx.GraphModule, node: fx.Node) -> tuple[nn.Module, str] | None:
    """An inference ``F.batch_norm`` on a module's running statistics (a BatchNorm subclass with its own
    forward, e.g. timm's ``BatchNormAct2d``: BN, then its activation) → an ``nn.BatchNorm*d`` that BN folding
    and the quantizers see. Training-mode calls (batch statistics) stay."""
    args, kwargs = tuple(node.args), dict(node.kwargs)
    mean, var = (_arg(args, kwargs, i, n) for i, n in ((1, "running_mean"), (2, "running_var")))
    if _arg(args, kwargs, 5, "training", False) is not False or not all(
        isinstance(a, fx.Node) and a.op == "get_attr" for a in (mean, var)
    ):
        return None
    ok_w, weight = _optional_param(gm, _arg(args, kwargs, 3, "weight"))
    ok_b, bias = _optional_param(gm, _arg(args, kwargs, 4, "bias"))
    shape = args[0].meta.get("lt_shape") if isinstance(args[0], fx.Node) else None
    if not (ok_w and ok_b) or (weight is None) != (bias is None) or shape is None or len(shape) not in _BATCH_NORMS:
        return None
    running_mean, running_var = _fetch(gm, str(mean.target)), _fetch(gm, str(var.target))
    bn = _BATCH_NORMS[len(shape)](
        shape[1], eps=_arg(args, kwargs, 7, "eps", 1e-5), affine=weight is not None, device=running_mean.device
    )
    bn.running_mean, bn.running_var = running_mean, running_var  # shared, like the parameters
    if weight is not None:
        bn.weight, bn.bias = weight, bias
    return bn.eval(), str(mean.target).rpartition(".")[0]


def _claim_owner_name(gm: fx.GraphModule, owner: str) -> str | None:
    """Free the name of the module that owned a weight so the new layer can take it.

    The owner is a plain container left by tracing (its forward was traced through). Child modules that
    are still called (e.g. its padding) move next to it as ``<owner>_<child>``.
    """
    if not owner:
        return None
    called = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    if owner in called:
        return None
    old = gm.get_submodule(owner)
    for child_name, child in list(old.named_children()):
        new_name = f"{owner}_{child_name}"
        gm.add_submodule(new_name, child)
        for n in gm.graph.nodes:
            if n.op == "call_module" and (
                n.target == f"{owner}.{child_name}" or str(n.target).startswith(f"{owner}.{child_name}.")
            ):
                n.target = new_name + str(n.target)[len(f"{owner}.{child_name}") :]
    parent_name, _, leaf = owner.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    delattr(parent, leaf)
    return owner


def split_shared_stateless_modules(gm: fx.GraphModule) -> list[str]:
    """Give each call site of a stateless module (one ``nn.ReLU6`` used five times) its own copy.

    Returns the names of parametrised modules that are called more than once: those stay one module (one set
    of weights); QuantSim gives each of their calls its own activation quantizers.
    """
    seen: dict[str, int] = {}
    shared_with_params = []
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        count = seen.get(node.target, 0)
        seen[node.target] = count + 1
        if count == 0:
            continue
        module = gm.get_submodule(node.target)
        if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
            if node.target not in shared_with_params:
                shared_with_params.append(node.target)
            continue
        name, k = f"{node.target}_{count}", count
        existing = dict(gm.named_modules())
        while name in existing:
            k += 1
            name = f"{node.target}_{k}"
        gm.add_submodule(name, copy.deepcopy(module))
        node.target = name
    return shared_with_params
