"""Hugging Face ``transformers`` models under tracing: the key/value cache of decoders (GPT-2, GPT-Neo, OPT, Llama ...).

A decoder called with ``use_cache=True`` (its config's default) builds a ``DynamicCache`` inside its forward: a
Python object that each attention layer appends its keys and values to, returned in the output's
``past_key_values``. That is incremental-decoding state, not part of the function being quantized: a traced graph
is one full-sequence forward (the prefill), whose cache length is fixed by the example. So :func:`prepare
<leantorch.prepare>` traces with ``use_cache=False`` semantics (:func:`tracing_without_cache`): no cache is built,
the output's ``past_key_values`` is ``None``, and the graph holds no cache bookkeeping (whose ``torch.cat`` with an
empty 1-D placeholder tensor has no ONNX equivalent). A forward that asks for a cache explicitly
(``model(ids, use_cache=True)``) still gets one; the traced graph then returns its keys and values as tensors, one
``(key, value)`` pair per layer (:func:`cache_as_tensors`), which is what a static graph can return. Such a graph
exports too: the cache's first update concatenates an empty 1-D placeholder (``torch.tensor([])``) with the
keys, which ``torch.cat`` skips and ONNX ``Concat`` refuses, so leantorch's ``Cat`` op leaves it out.

Nothing here imports ``transformers``: models and caches are recognised by their attributes, so leantorch works
without it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from torch import nn

__all__ = ["cache_as_tensors", "is_kv_cache", "tracing_without_cache"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def tracing_without_cache(model: Any) -> Iterator[int]:
    """Within the block, every Hugging Face config reachable from ``model``'s modules has ``use_cache=False``;
    restored afterwards. Yields how many configs were changed (0 for a model without one).

    Example:
        >>> from types import SimpleNamespace
        >>> net = nn.Linear(2, 2)
        >>> net.config = SimpleNamespace(use_cache=True)
        >>> with tracing_without_cache(net) as changed:
        ...     changed, net.config.use_cache
        (1, False)
        >>> net.config.use_cache
        True
    """
    configs: dict[int, Any] = {}
    if isinstance(model, nn.Module):
        for module in model.modules():
            config = getattr(module, "config", None)
            # Sub-configs of composite models (a vision-text model's text_config) belong to their own submodules,
            # which model.modules() reaches too.
            if config is not None and getattr(config, "use_cache", None) is True:
                configs[id(config)] = config
    for config in configs.values():
        config.use_cache = False
    if configs:
        log.info("tracing without the key/value cache (use_cache=False): the graph is one full-sequence forward")
    try:
        yield len(configs)
    finally:
        for config in configs.values():
            config.use_cache = True


def is_kv_cache(value: Any) -> bool:
    """Whether ``value`` is a ``transformers`` cache object (a ``Cache`` subclass: ``DynamicCache``,
    ``EncoderDecoderCache`` ...), recognised without importing ``transformers``.

    Example:
        >>> is_kv_cache([1, 2]), is_kv_cache(nn.Linear(1, 1))
        (False, False)
    """
    return any(cls.__name__ == "Cache" and cls.__module__.startswith("transformers.") for cls in type(value).__mro__)


def cache_as_tensors(value: Any) -> tuple[Any, ...]:
    """The keys and values a ``transformers`` cache holds, as a tuple with one ``(key, value)`` pair per layer (an
    encoder-decoder cache: ``(self_attention_pairs, cross_attention_pairs)``): what a traced graph can return in
    place of the cache object.

    Raises:
        TypeError: ``value`` is not a cache this function knows the layout of.

    Example:
        >>> from types import SimpleNamespace
        >>> layer = SimpleNamespace(keys="k0", values="v0")
        >>> cache_as_tensors(SimpleNamespace(layers=[layer]))
        (('k0', 'v0'),)
    """
    layers = getattr(value, "layers", None)
    if isinstance(layers, (list, tuple)):
        return tuple((getattr(layer, "keys", None), getattr(layer, "values", None)) for layer in layers)
    self_attention = getattr(value, "self_attention_cache", None)
    cross_attention = getattr(value, "cross_attention_cache", None)
    if self_attention is not None and cross_attention is not None:
        return (cache_as_tensors(self_attention), cache_as_tensors(cross_attention))
    raise TypeError(f"unknown key/value cache layout: {type(value).__name__}")
