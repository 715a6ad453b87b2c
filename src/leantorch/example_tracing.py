"""Tracing with the example input's values at hand: an fx tracer whose proxies also carry what each traced value
is on the example input, so that Python control flow and the few places where Python needs a real value can be
decided the way the example run goes.

Plain torch.fx fails on code like ``if x.shape[1] != self.channels:``, ``torch.finfo(x.dtype)``,
``int(features.shape[-2])`` or ``h, w = size`` (Hugging Face models are full of it): a proxy has no truth value,
dtype or length. Here every traced operation is also run on the example values (a second forward pass, during
tracing only), and

* ``bool(p)``, ``int(p)``, ``float(p)``, ``p.__index__()`` use the example value when ``p`` depends only on shapes,
  dtypes and the model's own parameters (never on the input's values): the graph keeps the branch and the
  numbers the example took, as a runtime exporting a static graph would. A branch on the input's *values*
  (``if x.sum() > 0``) is still refused: it would hold for the example only;
* ``len(p)`` and ``iter(p)`` (which depend on shapes only) use the example value;
* ``p.dtype``, ``p.device``, ``p.ndim``, ``p.is_cuda`` are the example's (they do not vary between batches);
* ``iter(p)`` yields one symbolic item per element of the example value, so ``b, c, h, w = x.shape`` stays
  symbolic;
* ``p.shape`` and ``p.size()`` stay symbolic: a reshape written with them follows the batch size;
* ``p[index] = value`` is recorded as an in-place ``operator.setitem`` call (and done on the example value);
* tensor factories called with a traced size (``torch.zeros(b, 4)``, ``torch.arange(seq_len)``), which torch does
  not dispatch to proxies, are recorded as graph calls too.

Example:
    >>> import torch
    >>> from torch import nn
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc = nn.Linear(4, 4)
    ...     def forward(self, x):
    ...         if x.shape[-1] != 4:  # control flow on a shape: plain fx cannot trace this
    ...             raise ValueError("expected 4 features")
    ...         return self.fc(x) * torch.finfo(x.dtype).eps
    >>> net, x = Net(), torch.randn(2, 4)
    >>> tracer = ExampleTracer()
    >>> tracer.example_inputs = (x,)
    >>> gm = fx.GraphModule(net, tracer.trace(net))
    >>> bool(torch.equal(gm(torch.ones(5, 4)), net(torch.ones(5, 4))))  # another batch size: the shape stays symbolic
    True
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import operator
from collections.abc import Iterator
from typing import Any

import torch
from torch import fx

from .hf_support import cache_as_tensors, is_kv_cache, tracing_without_cache

__all__ = ["ExampleTracer", "example_value", "is_static"]

log = logging.getLogger(__name__)

#: Attributes taken from the example value itself: they do not change with the batch.
_CONCRETE_ATTRIBUTES = frozenset({"dtype", "device", "ndim", "is_cuda", "is_sparse", "layout", "is_quantized"})
#: Attributes and methods of a tensor that depend on its shape only, not on its values.
_SHAPE_ATTRIBUTES = frozenset({"shape", "dtype", "device", "ndim", "layout"})
_SHAPE_METHODS = frozenset({"size", "dim", "numel", "nelement", "is_floating_point", "is_contiguous"})
#: torch functions that take sizes rather than tensors, so a traced size does not reach fx by itself.
_FACTORIES = ("zeros", "ones", "full", "empty", "arange", "rand", "randn", "randint", "eye", "tril_indices")
_MISSING = object()


def example_value(value: Any) -> Any:
    """What ``value`` (a proxy, or a structure holding proxies) is on the example input; ``_MISSING`` parts raise."""
    if isinstance(value, fx.Proxy):
        found = value.node.meta.get("lt_example", _MISSING)
        if found is _MISSING:
            raise LookupError(f"no example value for {value.node.name}")
        return found
    if isinstance(value, fx.Node):
        found = value.meta.get("lt_example", _MISSING)
        if found is _MISSING:
            raise LookupError(f"no example value for {value.name}")
        return found
    if isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
        items = [example_value(v) for v in value]
        return type(value)(items) if not hasattr(value, "_fields") else type(value)(*items)
    if isinstance(value, dict):
        return {k: example_value(v) for k, v in value.items()}
    if isinstance(value, slice):
        return slice(example_value(value.start), example_value(value.stop), example_value(value.step))
    return value


def is_static(value: Any) -> bool:
    """Whether a traced value depends only on shapes, dtypes and the model's parameters (not on input values)."""
    node = value.node if isinstance(value, fx.Proxy) else value
    return bool(node.meta.get("lt_static", False)) if isinstance(node, fx.Node) else True


class _ExampleMixin:
    """Proxy behaviour that needs a real value, answered from the example."""

    tracer: ExampleTracer

    def _value(self) -> Any:
        return example_value(self)  # type: ignore[arg-type]

    def _static_value(self, what: str) -> Any:
        if not is_static(self):
            raise fx.proxy.TraceError(
                f"{what} of a value computed from the input's data: the traced graph could only hold for the "
                "example input"
            )
        self.tracer.specialised += 1
        return self._value()

    def __len__(self) -> int:
        return len(self._value())

    def __int__(self) -> int:
        return int(self._static_value("int()"))

    def __index__(self) -> int:
        return operator.index(self._static_value("an index"))

    def __float__(self) -> float:
        return float(self._static_value("float()"))

    def __setitem__(self, key: Any, value: Any) -> None:
        # ``mask[:, a:b, c:d] = k`` on a traced tensor (timm's Swin builds its shifted-window mask so when the input
        # size may vary: ``torch.zeros((1, H, W, 1))``, then region numbers written in). An in-place graph call, which
        # fx keeps (operator.setitem has side effects) and runs in order; the example value is written too, so later
        # reads see the write. A value or index from the input's data makes the tensor depend on it too.
        write = self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})
        if not is_static(write):
            self.node.meta["lt_static"] = False  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        if name in _CONCRETE_ATTRIBUTES:
            try:
                return getattr(self._value(), name)
            except LookupError:
                pass
        return _ExampleAttribute(self, name)  # type: ignore[arg-type]


class _ExampleProxy(_ExampleMixin, fx.Proxy):
    pass


class _ExampleAttribute(_ExampleMixin, fx.proxy.Attribute):
    pass


class ExampleTracer(fx.Tracer):
    """An fx tracer that also computes every traced value on ``example_inputs`` (set before :meth:`trace`), and
    answers truth values, lengths, integers, dtypes and iteration from them (see the module docstring).
    Without ``example_inputs`` it behaves like ``fx.Tracer``."""

    #: Buffers read in forward become graph values (``self.token_type_ids[:, :seq_len].expand(batch, seq_len)``
    #: must stay symbolic in the batch size).
    proxy_buffer_attributes = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.example_inputs: tuple[Any, ...] | None = None
        #: how many times a value was fixed to the example's (``int(p)``, slicing with ``p`` ...)
        self.specialised = 0
        self._placeholders = 0
        self._inputs: tuple[Any, ...] = ()
        #: > 0 while a traced operation runs on example values (module calls then run for real)
        self.evaluating = 0

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        # The example run must not change the caller's tensors (in-place ops in a forward).
        self._inputs = copy.deepcopy(self.example_inputs) if self.example_inputs is not None else ()
        self._placeholders = 0
        # A decoder's key/value cache is incremental-decoding state, not part of the traced function (hf_support).
        with self._traced_factories(), tracing_without_cache(root):
            return super().trace(root, concrete_args)

    def create_arg(self, a: Any) -> Any:
        if is_kv_cache(a):  # a cache the forward was asked for explicitly: its keys and values, as tensors
            return super().create_arg(cache_as_tensors(a))
        return super().create_arg(a)

    @contextlib.contextmanager
    def _traced_factories(self) -> Iterator[None]:
        originals = {name: getattr(torch, name) for name in _FACTORIES}

        def traced(function: Any) -> Any:
            @functools.wraps(function)
            def call(*args: Any, **kwargs: Any) -> Any:
                if any(isinstance(v, fx.Proxy) for v in _traced_values((args, kwargs))):
                    return self.create_proxy("call_function", function, args, kwargs)
                return function(*args, **kwargs)

            return call

        try:
            for name, function in originals.items():
                setattr(torch, name, traced(function))
            yield
        finally:
            for name, function in originals.items():
                setattr(torch, name, function)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if self.evaluating:  # fx patches Module.__getattr__ while tracing: an example run reads the real tensor
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def call_module(self, m: torch.nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        if self.evaluating:  # fx patches Module.__call__ while tracing: an example run calls the module itself
            return forward(*args, **kwargs)
        if _stateless(m) and not self._installed(m):  # a function in a module's clothes: traced into
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def path_of_module(self, mod: torch.nn.Module) -> str:
        # A module without parameters or buffers that is not a submodule of the model (a global: the `kernels`
        # package makes Llama's apply_rotary_pos_emb one; or built inline) holds nothing a graph needs to refer to:
        # it is traced into (call_module), under a scope name of its class. With state it stays fx's NameError.
        if _stateless(mod) and not self._installed(mod):
            return f"<{type(mod).__name__}>"
        return super().path_of_module(mod)

    def _installed(self, mod: torch.nn.Module) -> bool:
        try:
            super().path_of_module(mod)
        except NameError:
            return False
        return True

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ExampleProxy(node, self)

    def create_proxy(self, kind: str, target: Any, args: Any, kwargs: Any, *rest: Any, **more: Any) -> Any:
        proxy = super().create_proxy(kind, target, args, kwargs, *rest, **more)
        if self.example_inputs is not None and isinstance(proxy, fx.Proxy) and "lt_example" not in proxy.node.meta:
            proxy.node.meta["lt_static"] = _static_node(kind, target, args, kwargs)
            try:
                proxy.node.meta["lt_example"] = self._evaluate(kind, target, args, kwargs)
            except Exception:  # no example value: this node then behaves as in plain fx
                pass
        return proxy

    def _evaluate(self, kind: str, target: Any, args: Any, kwargs: Any) -> Any:
        if kind == "placeholder":
            index = self._placeholders
            self._placeholders += 1
            return self._inputs[index]
        cargs, ckwargs = example_value(tuple(args)), example_value(dict(kwargs))
        self.evaluating += 1
        try:
            with torch.no_grad():
                if kind == "get_attr":
                    value: Any = self.root
                    for part in str(target).split("."):
                        value = getattr(value, part)
                    return value
                if kind == "call_function":
                    return target(*cargs, **ckwargs)
                if kind == "call_method":
                    return getattr(cargs[0], target)(*cargs[1:], **ckwargs)
                if kind == "call_module":
                    return self.root.get_submodule(target)(*cargs, **ckwargs)
        finally:
            self.evaluating -= 1
        raise LookupError(kind)

    def to_bool(self, obj: fx.Proxy) -> bool:
        if not is_static(obj):  # a branch on the input's values: plain fx's refusal
            return super().to_bool(obj)
        try:
            value = example_value(obj)
        except LookupError:
            return super().to_bool(obj)
        self.specialised += 1
        return bool(value)

    def iter(self, obj: fx.Proxy) -> Iterator[Any]:
        try:
            value = example_value(obj)
        except LookupError:
            return super().iter(obj)
        return iter([obj[i] for i in range(len(value))])

    def keys(self, obj: fx.Proxy) -> Any:
        try:
            return example_value(obj).keys()
        except LookupError:
            return super().keys(obj)


def _stateless(module: torch.nn.Module) -> bool:
    """Whether ``module`` (and its submodules) holds no parameter and no buffer."""
    return next(module.parameters(), None) is None and next(module.buffers(), None) is None


def _static_node(kind: str, target: Any, args: Any, kwargs: Any) -> bool:
    """Whether a new node's value depends only on shapes, dtypes and parameters (see :func:`is_static`)."""
    if kind == "placeholder":
        return False
    if kind == "get_attr":
        return True  # a parameter, buffer or constant of the model: the same for every input
    if kind == "call_function" and target is getattr and len(args) > 1 and args[1] in _SHAPE_ATTRIBUTES:
        return True
    if kind == "call_method" and target in _SHAPE_METHODS:
        return True
    return all(is_static(v) for v in _traced_values((args, kwargs)))


def _traced_values(value: Any) -> Iterator[Any]:
    """The proxies and nodes inside nested tuples, lists, dicts and slices."""
    if isinstance(value, (fx.Proxy, fx.Node)):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _traced_values(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _traced_values(item)
    elif isinstance(value, slice):
        yield from _traced_values((value.start, value.stop, value.step))
