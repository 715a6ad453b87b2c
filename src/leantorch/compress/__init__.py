"""Model compression: cost model, weight SVD, spatial SVD, channel pruning, per-layer ratio selection, the
ONNX Runtime latency of the result (``lt.compress.compare_latency``), and recovery by distillation from the
original model (``lt.compress.refit_layers``: least squares, layer by layer, in seconds;
``lt.compress.distill``: gradient steps on the outputs, in minutes).

``lt.compress`` is this package and is also callable: ``lt.compress(model, x, eval_fn, ...)`` is
:func:`leantorch.compress.compressor.compress`; ``lt.compress.cost(model, x)`` is the cost model.
"""

import sys
import types

from .compressor import SCHEMES, CompressionInfo, compress
from .config import CompressConfig
from .cost import CostReport, LayerCost, cost
from .distill import DistillConfig, DistillResult, distill, distill_loss
from .latency import compare_latency
from .ratio_selection import CompressionError, EvalScoreTable
from .refit import RefitResult, refit_layers

__all__ = [
    "SCHEMES",
    "CompressConfig",
    "CompressionError",
    "CompressionInfo",
    "CostReport",
    "DistillConfig",
    "DistillResult",
    "EvalScoreTable",
    "LayerCost",
    "RefitResult",
    "compare_latency",
    "compress",
    "cost",
    "distill",
    "distill_loss",
    "refit_layers",
]


class _CallableModule(types.ModuleType):
    """Lets ``lt.compress(...)`` call :func:`compress` while ``lt.compress.cost`` stays reachable."""

    def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return compress(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
