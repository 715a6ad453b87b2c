"""Export formats of a calibrated QuantSim, as a registry: ``sim.export(..., format=name)`` and the CLI's
``--export-format`` choices come from it, so a new format is one :func:`register_exporter` call.

Built in:

* ``onnx_qdq`` (default): ONNX with QuantizeLinear/DequantizeLinear pairs that ONNX Runtime runs as the
  simulation does, the AIMET encodings file and the float weights (:mod:`.export`).
* ``onnx_float``: float ONNX (quantization pairs taken out; weights on their grids), the encodings file keyed
  by its tensor names, and the float weights: the AIMET/QNN flow, where the runtime's converter quantizes
  (:mod:`.export_float`).

Example:
    >>> exporter_names()
    ('onnx_qdq', 'onnx_float')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..registry import Registry
from .encodings_file import EncodingsVersion
from .export import export_quantsim
from .export_float import strip_qdq

if TYPE_CHECKING:
    from .sim import QuantSim

__all__ = ["Exporter", "register_exporter", "unregister_exporter", "exporter_names", "get_exporter"]

#: ``write(sim, path, filename_prefix, example_input, opset, unsigned_weights, encodings_version)`` → the
#: written files by kind (``"onnx"``, ``"encodings"``, ``"pth"`` ...).
Write = Callable[["QuantSim", "str | Path", str, Any, "int | None", bool, "EncodingsVersion | None"], dict[str, Path]]


@dataclass(frozen=True)
class Exporter:
    """One export format: its name, what it writes, and the function that writes it."""

    name: str
    write: Write
    description: str


_EXPORTERS: Registry[Exporter] = Registry("format", "export format")


def register_exporter(exporter: Exporter) -> Exporter:
    """Add an export format; raises :class:`ConfigError` if the name is taken."""
    return _EXPORTERS.add(exporter.name, exporter)


def unregister_exporter(name: str) -> None:
    """Remove an export format (tests add toy formats and take them away again)."""
    _EXPORTERS.remove(name)


def exporter_names() -> tuple[str, ...]:
    """The registered export formats, the default first."""
    return _EXPORTERS.names()


def get_exporter(name: Any) -> Exporter:
    """The export format called ``name``; :class:`InvalidOptionError` listing the formats otherwise."""
    return _EXPORTERS.get(name)


def _onnx_float(
    sim: QuantSim,
    path: str | Path,
    filename_prefix: str,
    example_input: Any,
    opset: int | None,
    unsigned_weights: bool,
    encodings_version: EncodingsVersion | None,
) -> dict[str, Path]:
    return export_quantsim(
        sim, path, filename_prefix, example_input, opset, unsigned_weights, encodings_version, rewrite=strip_qdq
    )


register_exporter(
    Exporter("onnx_qdq", export_quantsim, "QDQ ONNX (runs quantized in ONNX Runtime) + encodings + float weights")
)
register_exporter(
    Exporter("onnx_float", _onnx_float, "float ONNX + encodings keyed by its tensor names (AIMET/QNN flow) + weights")
)
