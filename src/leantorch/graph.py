"""Tracing with torch.fx (:func:`prepare`), op types of modules, and pattern matching on the graph."""

from __future__ import annotations

import copy
import inspect
import logging
import os
import traceback
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import fx, nn

from . import ops
from .errors import InputShapeError, TraceError
from .example_tracing import ExampleTracer, example_value
from .graph_checks import check_finite, check_finite_output, check_module, run_checked, verify_same_outputs
from .graph_rewrite import functional_to_modules, record_values, split_shared_stateless_modules, store_value
from .model_state import carry_model_state
from .options import short_repr

__all__ = [
    "OP_TYPE_NAMES",
    "PASSTHROUGH_TYPES",
    "op_type",
    "as_tuple",
    "example_inputs",
    "prepare",
    "check_module",
    "check_finite",
    "run_checked",
    "call_sites",
    "call_counts",
    "untie_parameters",
    "find_chains",
    "unknown_leaf_modules",
]

log = logging.getLogger(__name__)

# Op type tables, derived from the op registry (leantorch.ops): one registration per op type.
OP_TYPE_NAMES = ops.OP_TYPE_NAMES
PASSTHROUGH_TYPES = ops.PASSTHROUGH_TYPES


def op_type(module: nn.Module) -> str:
    """The op type name of a module (``"Conv"``, ``"ReLU6"``, ``"Add"``...), ``"Unknown"`` if none.

    Example:
        >>> op_type(nn.Conv2d(3, 8, 3)), op_type(nn.ReLU6())
        ('Conv', 'ReLU6')
    """
    wrapped = getattr(module, "op_type", None)  # a QuantWrapper knows the type of what it wraps
    if isinstance(wrapped, str):
        return wrapped
    spec = ops.spec_for(module)
    return "Unknown" if spec is None else spec.name


def as_tuple(example_input: Any) -> tuple:
    """Normalise an example input (a tensor or a tuple/list of them) to a tuple of positional args."""
    return tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)


def example_inputs(example_input: Any) -> tuple[torch.Tensor, ...]:
    """The example input as a tuple of tensors, checked: a tensor or a non-empty tuple/list of tensors.

    Raises:
        InputShapeError: ``None``, an empty tuple, or an item that is not a tensor (a number, a numpy array).

    Example:
        >>> example_inputs([1, 2])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        leantorch.errors.InputShapeError: example input 0 is int 1, not a tensor: ...
    """
    inputs = as_tuple(example_input)
    if not inputs:
        raise InputShapeError(
            "the example input is empty: pass a tensor (or a tuple of tensors) the model accepts, "
            "e.g. torch.randn(1, 3, 224, 224)"
        )
    for j, x in enumerate(inputs):
        if not isinstance(x, torch.Tensor):
            hint = " (convert it with torch.from_numpy)" if type(x).__module__ == "numpy" else ""
            raise InputShapeError(
                f"example input {j} is {type(x).__name__} {short_repr(x, 60)}, not a tensor: pass a "
                f"tensor (or a tuple of tensors) the model accepts, e.g. torch.randn(1, 3, 224, "
                f"224){hint}"
            )
    return inputs


class _ScopeTracer(ExampleTracer):
    """fx tracer that records, for each node, the path of the module whose forward created it, and decides
    Python control flow on the example input (:class:`~leantorch.example_tracing.ExampleTracer`)."""

    # Defaults: unpickling a GraphModule re-traces its generated code with a no-argument tracer of this class.
    def __init__(self, leaf_types: tuple[type, ...] = (), leaf_names: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.leaf_types, self.leaf_names = leaf_types, leaf_names
        self.lt_scope: list[str] = [""]
        self.failed_in: tuple[str, type] | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaf_names or (self.leaf_types and isinstance(m, self.leaf_types)):
            return True
        # A registered op's decomposition (attention → projections, matmuls, softmax) is traced into, so each
        # of its ops gets its own quantizers.
        if getattr(m, "lt_traced_through", False):
            return False
        # Every class registered as an op type (leantorch's op modules included) and the simulation's own layers
        # (quantizers and wrappers, which set ``lt_leaf``) are never traced through. Only the exact registered
        # class: a user's nn.Conv2d subclass with its own forward (EfficientNet's Conv2dStaticSamePadding) must
        # still be traced into.
        if ops.is_registered_class(type(m)) or getattr(type(m), "lt_leaf", False):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        if self.evaluating:  # running on example values, not tracing
            return forward(*args, **kwargs)
        name = self.path_of_module(m)
        self.lt_scope.append(name)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = (name, type(m))
            raise
        finally:
            self.lt_scope.pop()

    def create_proxy(self, kind: str, target: Any, args: Any, kwargs: Any, *rest: Any, **more: Any) -> Any:
        # A function an op type decomposes (F.scaled_dot_product_attention) is traced as its decomposition.
        decompose = ops.decomposition(target) if kind == "call_function" else None
        if decompose is not None:
            return decompose(*args, **kwargs)
        return super().create_proxy(kind, target, args, kwargs, *rest, **more)

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        node.meta["lt_scope"] = self.lt_scope[-1]
        return node


def prepare(
    model: nn.Module,
    example_input: Any,
    leaf_modules: Sequence[type | str] | None = None,
    verify: bool = True,
) -> fx.GraphModule:
    """Trace a copy of ``model`` into a GraphModule ready for quantization and compression.

    Functional ops that need quantizers become modules (:mod:`leantorch.ops`), stateless modules called at
    several places are split, and convs written as ``F.conv2d(x, self.weight)`` in ``nn.Conv2d`` subclasses
    become real ``nn.Conv2d`` layers. The user's model is not modified.

    Args:
        model: the float model.
        example_input: a tensor or a tuple of tensors the model accepts.
        leaf_modules: module classes or qualified names to keep opaque (not traced through).
        verify: check that the traced model computes the same outputs on the example input.

    Raises:
        InvalidOptionError: ``model`` is not an ``nn.Module`` (a function, a class, a state dict).
        NonFiniteModelError: the example input, a parameter or a buffer holds NaN/Inf, or the model's output on
            the example input holds NaN (names the tensors).
        TraceError: the model cannot be traced (names the module, the source line and the fix).
        InputShapeError: ``example_input`` is not a tensor or a tuple of tensors, or does not fit the model.

    Example:
        >>> gm = prepare(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.randn(1, 3, 8, 8))
        >>> [type(m).__name__ for m in gm.children()]
        ['Conv2d', 'ReLU']
    """
    check_module(model)
    inputs = example_inputs(example_input)
    check_finite(model, inputs)
    copy_ = copy.deepcopy(model)
    was_training = copy_.training
    copy_.eval()
    reference = run_checked(copy_, inputs)
    check_finite_output(reference)
    leaf_types = tuple(x for x in (leaf_modules or []) if isinstance(x, type))
    leaf_names = frozenset(x for x in (leaf_modules or []) if isinstance(x, str))
    # Ops that are quantized as several ops (attention, RNNs) are swapped for their quantizable form first.
    # Modules the user keeps opaque (leaf_modules) stay as they are.
    copy_, replaced = ops.replace_registered_modules(
        copy_, keep=lambda name, m: name in leaf_names or bool(leaf_types and isinstance(m, leaf_types))
    )
    if replaced:
        log.info("replaced by quantizable equivalents: %s", ", ".join(n or "<root>" for n in replaced))
    gm, recorded = _trace(copy_, leaf_types, leaf_names, inputs)
    if not recorded:  # tracing could not compute every value on the example: one run of the traced graph does
        record_values(gm, inputs)
    functional_to_modules(gm)
    shared = split_shared_stateless_modules(gm)
    if shared:
        log.info(
            "layers called at several places (one weight quantizer, activation quantizers per call): %s",
            ", ".join(shared),
        )
    for node in gm.graph.nodes:
        # ``from __future__ import annotations`` makes argument annotations strings ("torch.Tensor"); fx turns
        # them into a str global that GraphModule.__reduce__ cannot import, so the model would not pickle
        # (Ray workers, torch.save, multiprocessing). The annotation is documentation only: drop it.
        if isinstance(node.type, str):
            node.type = None
    gm.graph.lint()
    gm.recompile()
    gm.eval()
    if verify:
        verify_same_outputs(reference, run_checked(gm, inputs))
    record_values(gm, inputs)
    # Layer statistics kept by BN folding/CLE describe layers by name, which tracing preserves.
    carry_model_state(model, gm)
    gm.train(was_training)
    return gm


def _trace(
    model: nn.Module, leaf_types: tuple[type, ...], leaf_names: frozenset[str], inputs: tuple[Any, ...]
) -> tuple[fx.GraphModule, bool]:
    """The traced GraphModule, and whether every node's value was recorded (:func:`record_values`) from the
    values tracing computed on the example."""
    tracer = _ScopeTracer(leaf_types, leaf_names)
    tracer.example_inputs = inputs
    num_inputs = len(inputs)
    cls = type(model)
    # The root is traced through a forward that takes exactly the example inputs and calls the model's own
    # forward with them: its other parameters keep their defaults as real Python values (fx would make each a
    # symbolic placeholder, so `if output_hidden_states:` or `kwargs[k] = v` in a Hugging Face forward would
    # fail), and a decorated forward (`def wrapper(self, *args, **kwargs)`) is called, not re-parsed by fx.
    model.__class__ = type(cls.__name__, (cls,), {"forward": _exact_forward(cls, num_inputs)})
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises many kinds (TraceError, TypeError, RuntimeError...)
        raise TraceError(_trace_failure_message(exc, tracer.failed_in)) from exc
    finally:
        model.__class__ = cls
    if tracer.specialised:
        log.info("tracing followed the example input at %d point(s) (branches, lengths, integers)", tracer.specialised)
    # The values tracing computed on the example are what record_values would find: keep their stand-ins rather
    # than run the model once more (the tensors themselves are not kept with the model).
    recorded = all("lt_example" in n.meta for n in graph.nodes if n.op != "output")
    if recorded:
        for node in graph.nodes:
            store_value(node, example_value(node.args[0] if node.op == "output" else node))
    for node in graph.nodes:
        node.meta.pop("lt_example", None)
        node.meta.pop("lt_static", None)
    return fx.GraphModule(tracer.root, graph, cls.__name__), recorded


def _exact_forward(cls: type, num_inputs: int) -> Any:
    """``forward(self, a, b, ...)`` with one parameter per example input (named like the model's own, for readable
    placeholders) that returns ``cls.forward(self, a, b, ...)``."""
    try:
        params = list(inspect.signature(inspect.unwrap(cls.forward)).parameters.values())[1:]
    except (TypeError, ValueError):
        params = []
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names = [
        positional[i] if i < len(positional) and positional[i].isidentifier() else f"input_{i}"
        for i in range(num_inputs)
    ]
    if len(set(names)) != len(names) or "self" in names or "_forward" in names:
        names = [f"input_{i}" for i in range(num_inputs)]
    arguments = ", ".join(names)
    namespace: dict[str, Any] = {"_forward": cls.forward}
    exec(f"def forward(self, {arguments}):\n    return _forward(self, {arguments})\n", namespace)  # noqa: S102
    return namespace["forward"]


def _trace_failure_message(exc: Exception, failed_in: tuple[str, type] | None) -> str:
    frame = _user_frame(exc)
    where = f" at {frame.filename}:{frame.lineno}: `{(frame.line or '').strip()}`" if frame else ""
    if failed_in is not None:
        name, cls = failed_in
        module = f"module '{name or '<root>'}' ({cls.__name__})"
        fix = (
            f"pass leaf_modules=[{cls.__module__}.{cls.__name__}] (or leaf_modules=['{name}']) to keep it "
            "opaque, or make its forward free of data-dependent Python control flow"
        )
    else:
        module = "the model's forward"
        fix = (
            "make the forward free of data-dependent Python control flow, or move the failing part into "
            "a submodule and pass it in leaf_modules=[...]"
        )
    return f"cannot trace {module}{where}: {type(exc).__name__}: {exc}. Fix: {fix}."


def _user_frame(exc: Exception) -> traceback.FrameSummary | None:
    """Innermost traceback frame outside torch and leantorch: the user's line that failed."""
    skip = (os.path.dirname(torch.__file__), os.path.dirname(__file__))
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(skip)]
    return frames[-1] if frames else None


def call_sites(gm: fx.GraphModule) -> Iterable[tuple[fx.Node, nn.Module]]:
    """``(node, module)`` for every ``call_module`` node, in execution order."""
    for node in gm.graph.nodes:
        if node.op == "call_module":
            yield node, gm.get_submodule(node.target)


def call_counts(gm: fx.GraphModule) -> Counter[str]:
    """How many ``call_module`` nodes call each module (a layer called at several places counts several)."""
    return Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_module")


def untie_parameters(gm: fx.GraphModule, module: nn.Module, names: Sequence[str] | None = None) -> list[str]:
    """Give ``module`` its own copy of every direct parameter (of ``names``, default all) another module of ``gm``
    shares (tied weights); returns the names of the parameters copied.

    Why: transforms that rewrite a layer's weights for that layer alone (BN folding, CLE scaling, bias
    absorption) would otherwise change the other module too. Call it on the traced copy, never the user's model.

    Example:
        >>> a, b = nn.Linear(2, 2), nn.Linear(2, 2)
        >>> b.weight = a.weight
        >>> gm = fx.symbolic_trace(nn.Sequential(a, b))
        >>> untie_parameters(gm, gm.get_submodule("1")), gm.get_submodule("1").weight is gm.get_submodule("0").weight
        (['weight'], False)
    """
    owners = Counter(id(p) for m in gm.modules() for p in m.parameters(recurse=False))
    copied = []
    for name, param in list(module.named_parameters(recurse=False)):
        if owners[id(param)] > 1 and (names is None or name in names):
            setattr(module, name, nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad))
            copied.append(name)
    return copied


def find_chains(gm: fx.GraphModule, pattern: Sequence[str]) -> list[list[fx.Node]]:
    """Module-call chains whose op types follow ``pattern``, each link consumed only by the next.

    Example:
        >>> gm = prepare(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()), torch.randn(1, 3, 8, 8))
        >>> [[n.target for n in c] for c in find_chains(gm, ["Conv", "BatchNorm", "ReLU"])]
        [['0', '1', '2']]
    """
    chains = []
    for node, module in call_sites(gm):
        if op_type(module) != pattern[0]:
            continue
        chain = [node]
        for wanted in pattern[1:]:
            users = list(chain[-1].users)
            if len(users) != 1 or users[0].op != "call_module":
                break
            nxt = users[0]
            if op_type(gm.get_submodule(nxt.target)) != wanted or nxt.args[0] is not chain[-1]:
                break
            chain.append(nxt)
        if len(chain) == len(pattern):
            chains.append(chain)
    return chains


def unknown_leaf_modules(gm: fx.GraphModule) -> list[str]:
    """Names of called leaf modules leantorch has no op type for (quantized at their output only)."""
    return [str(node.target) for node, module in call_sites(gm) if op_type(module) == "Unknown"]
