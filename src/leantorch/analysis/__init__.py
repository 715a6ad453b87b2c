"""Quantization analysis: where accuracy is lost, and an HTML report with plots."""

from .analyzer import MODEL_INPUTS, analyze, sweepable_layers, weight_ranges
from .report import ActivationStats, AnalysisReport, WeightRanges

__all__ = [
    "MODEL_INPUTS",
    "ActivationStats",
    "AnalysisReport",
    "WeightRanges",
    "analyze",
    "sweepable_layers",
    "weight_ranges",
]
