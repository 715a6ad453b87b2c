"""Typed errors. Every error leantorch raises on bad input subclasses :class:`LeanTorchError`
and says what happened and what to do about it.

Where Python has an idiomatic builtin for the kind of mistake, the class also subclasses it
(``ValueError`` for a bad value, ``KeyError`` for an unknown name, ``TypeError`` for a wrong type), so
``except ValueError`` in user code keeps working.

Example:
    >>> import leantorch as lt
    >>> issubclass(lt.CalibrationDataError, (lt.LeanTorchError, ValueError))
    True
"""

from __future__ import annotations

__all__ = [
    "LeanTorchError",
    "TraceError",
    "UnsupportedBitwidthError",
    "InvalidOptionError",
    "UnknownLayerError",
    "DataError",
    "CalibrationDataError",
    "TrainingDataError",
    "NonFiniteModelError",
    "EncodingsMissingError",
    "InputShapeError",
    "ConfigError",
    "EncodingsFileError",
    "ExportError",
    "TrainingDivergedError",
    "OutputPathError",
    "RayNotInstalledError",
    "ParallelBackendError",
    "DistributedMismatchError",
]


class LeanTorchError(Exception):
    """Base class of all leantorch errors."""


class TraceError(LeanTorchError):
    """The model could not be traced with torch.fx (data-dependent control flow, unsupported op).

    The message names the module, the source line and the fix (``leaf_modules=[...]``)."""


class UnsupportedBitwidthError(LeanTorchError, ValueError):
    """A bitwidth outside 2..16 (or 32, meaning "do not quantize") was requested."""


class InvalidOptionError(LeanTorchError, ValueError):
    """An option has an unknown value (method, objective, optimizer, scheme…) or is out of its range
    (a negative learning rate, zero samples); the message lists what is accepted."""


class UnknownLayerError(LeanTorchError, KeyError):
    """A layer name given by the user does not exist in the model; the message lists valid names."""

    def __str__(self) -> str:  # KeyError would print the message quoted, as a repr
        return str(self.args[0]) if self.args else ""


class DataError(LeanTorchError, ValueError):
    """Data passed to leantorch is empty, has the wrong structure or shape, or contains NaN/Inf."""


class CalibrationDataError(DataError):
    """Calibration data is empty, has the wrong structure, or contains NaN/Inf."""


class TrainingDataError(DataError):
    """Training data (QAT, fine-tuning, distillation) is empty, mis-structured or contains NaN/Inf."""


class NonFiniteModelError(LeanTorchError, ValueError):
    """The model's parameters/buffers or the example input contain NaN or Inf (the message names them)."""


class EncodingsMissingError(LeanTorchError, RuntimeError):
    """A quantizer was used (evaluation, export, analysis) before its encoding was computed."""


class InputShapeError(LeanTorchError, ValueError):
    """The example input does not fit the model."""


class ConfigError(LeanTorchError, ValueError):
    """A quantization config (preset name, JSON file or dataclass) is invalid."""


class EncodingsFileError(LeanTorchError, ValueError):
    """An encodings file does not match the model (unknown names, wrong shapes, bad JSON) or holds an
    invalid number (scale ≤ 0, NaN/Inf, an offset off the grid, min > max)."""


class ExportError(LeanTorchError):
    """The simulated model cannot be expressed in the export format."""


class TrainingDivergedError(LeanTorchError, FloatingPointError):
    """The training loss became NaN or Inf; the last finite state was restored."""


class OutputPathError(LeanTorchError, ValueError):
    """An output location cannot be written (not a directory, no permission, an empty file name)."""


class RayNotInstalledError(InvalidOptionError, ImportError):
    """``workers`` > 1 or a ``ray_address`` was given but Ray is not installed; the message names the fix.

    An ``ImportError`` too, so ``except ImportError`` around optional back ends keeps working."""


class ParallelBackendError(LeanTorchError, RuntimeError):
    """Ray itself failed (a worker process died, out of memory, the cluster went away), or a sweep function
    returned the wrong number of results for its chunk. Errors raised by the sweep function are re-raised
    with their own type instead."""


class DistributedMismatchError(LeanTorchError, RuntimeError):
    """Ranks disagree on what to synchronise (quantizer names, schemes, channels, data size), or one rank
    failed; raised on every rank so that none waits forever in a collective."""
