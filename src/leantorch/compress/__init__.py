"""Model compression: cost model, weight SVD, spatial SVD, channel pruning, per-layer ratio selection, and
the ONNX Runtime latency of the result (``lt.compress.compare_latency``).

``lt.compress`` is this package and is also callable: ``lt.compress(model, x, eval_fn, ...)`` is
:func:`leantorch.compress.compressor.compress`; ``lt.compress.cost(model, x)`` is the cost model.
"""

import sys
import types

from .compressor import SCHEMES, CompressionInfo, compress
from .config import CompressConfig
from .cost import CostReport, LayerCost, cost
from .latency import compare_latency
from .ratio_selection import CompressionError, EvalScoreTable

__all__ = [
    "SCHEMES",
    "CompressConfig",
    "CompressionError",
    "CompressionInfo",
    "CostReport",
    "EvalScoreTable",
    "LayerCost",
    "compare_latency",
    "compress",
    "cost",
]


class _CallableModule(types.ModuleType):
    """Lets ``lt.compress(...)`` call :func:`compress` while ``lt.compress.cost`` stays reachable."""

    def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return compress(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
