"""Quantization analysis: where accuracy is lost, and an HTML report with plots."""

from .analyzer import MODEL_INPUTS, analyze, sweepable_layers
from .report import ActivationStats, AnalysisReport, WeightRanges
from .weight_ranges import weight_ranges

__all__ = [
    "MODEL_INPUTS",
    "ActivationStats",
    "AnalysisReport",
    "WeightRanges",
    "analyze",
    "sweepable_layers",
    "weight_ranges",
]
