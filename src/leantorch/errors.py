"""Typed errors. Every error leantorch raises on bad input subclasses :class:`LeanTorchError`
and says what to do about it."""

from __future__ import annotations


class LeanTorchError(Exception):
    """Base class of all leantorch errors."""


class TraceError(LeanTorchError):
    """The model could not be traced with torch.fx (data-dependent control flow, unsupported op).

    The message names the module, the source line and the fix (``leaf_modules=[...]``)."""


class UnsupportedBitwidthError(LeanTorchError, ValueError):
    """A bitwidth outside 2..16 (or 32, meaning "do not quantize") was requested."""


class CalibrationDataError(LeanTorchError, ValueError):
    """Calibration data is empty, has the wrong structure, or contains NaN/Inf."""


class EncodingsMissingError(LeanTorchError, RuntimeError):
    """A quantizer was used (evaluation, export, analysis) before its encoding was computed."""


class InputShapeError(LeanTorchError, ValueError):
    """The example input does not fit the model."""


class ConfigError(LeanTorchError, ValueError):
    """A quantization config (preset name, JSON file or dataclass) is invalid."""


class EncodingsFileError(LeanTorchError, ValueError):
    """An encodings file does not match the model (unknown names, wrong shapes, bad JSON)."""


class ExportError(LeanTorchError):
    """The simulated model cannot be expressed in the export format."""
