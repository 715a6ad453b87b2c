"""Encodings: the (bitwidth, symmetric, scale, offset, min, max) of a quantized tensor, and their math.

One definition, used by the simulation, the ONNX export and the encodings files::

    q  = clamp(round(x / scale) - offset, 0, 2**bw - 1)      # round half to even
    x̂  = (q + offset) * scale

* Asymmetric: the observed range is widened to contain 0, ``scale = (max - min) / (2**bw - 1)``,
  ``offset = round(min / scale)`` (an integer in ``[-(2**bw - 1), 0]``), so 0.0 is exactly
  representable. ONNX: ``uint`` container, ``zero_point = -offset``.
* Symmetric (signed): ``scale = max(|min|, |max|) / (2**(bw-1) - 1)``, ``offset = -2**(bw-1)``, i.e. the
  signed grid ``[-2**(bw-1), 2**(bw-1) - 1]``. ONNX: ``int`` container, ``zero_point = 0``.
* Unsigned symmetric (symmetric requested, tensor never negative, e.g. after ReLU):
  ``scale = max / (2**bw - 1)``, ``offset = 0``. ONNX: ``uint`` container, ``zero_point = 0``.

These match the AIMET encodings file (``offset`` is stored as is, ``min = offset * scale``,
``max = min + (2**bw - 1) * scale``) and ONNX QuantizeLinear. The scale is rounded to float32 *before*
the offset is derived from it, so every consumer (torch kernel, ONNX Runtime, file) sees the same grid.

Every grid fits float32 (scales are float32 in the simulation, ONNX and the file): a range that does not
(NaN, Inf, or a float64 magnitude above float32's maximum ``FLT_MAX``) raises
:class:`~leantorch.errors.DataError`. A range within float32 whose grid would end past ``±FLT_MAX`` (only
ranges within a few steps of ``FLT_MAX`` can) gets a scale capped so that both grid ends stay finite
(asymmetric: ``scale ≤ 2·FLT_MAX / 2**bw``, the offset then clamped to keep ``min`` and ``max`` inside;
symmetric: ``scale ≤ FLT_MAX / 2**(bw-1)``; unsigned: ``scale ≤ FLT_MAX / (2**bw - 1)``).

The arithmetic itself is in :mod:`.primitives` (pure tensor functions); this module wraps it in
:class:`Encoding`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import UnsupportedBitwidthError
from . import primitives
from .primitives import FLT_MAX as FLT_MAX  # re-exported: their home was here
from .primitives import MIN_SCALE as MIN_SCALE

#: Bitwidths that are simulated. 32 means "leave this tensor in floating point".
MIN_BITWIDTH, MAX_BITWIDTH, FLOAT_BITWIDTH = 2, 16, 32


def check_bitwidth(bitwidth: Any, what: str = "bitwidth") -> int:
    """Return ``bitwidth`` if it is supported, else raise :class:`UnsupportedBitwidthError`.

    Example:
        >>> check_bitwidth(8)
        8
    """
    ok = isinstance(bitwidth, int) and not isinstance(bitwidth, bool)
    if not ok or not (MIN_BITWIDTH <= bitwidth <= MAX_BITWIDTH or bitwidth == FLOAT_BITWIDTH):
        raise UnsupportedBitwidthError(
            f"{what}={bitwidth!r} is not supported: use an integer from {MIN_BITWIDTH} to "
            f"{MAX_BITWIDTH}, or {FLOAT_BITWIDTH} to keep the tensor in floating point."
        )
    checked: int = bitwidth  # an int, as checked above
    return checked


@dataclass(frozen=True)
class Encoding:
    """Quantization grid of one tensor (per-tensor: 0-d ``scale``) or of its channels along ``axis``.

    Example:
        >>> enc = compute_encoding(torch.tensor(-1.0), torch.tensor(3.0), bitwidth=8, symmetric=False)
        >>> int(enc.offset), round(float(enc.scale), 6)
        (-64, 0.015686)
    """

    bitwidth: int
    symmetric: bool
    scale: torch.Tensor  # float32; shape () or (C,)
    offset: torch.Tensor  # int64; same shape as scale
    axis: int | None = None

    @property
    def num_steps(self) -> int:
        """Number of quantization steps, ``2**bw - 1``."""
        steps: int = 2**self.bitwidth - 1  # (typeshed types int ** int as Any: the exponent could be negative)
        return steps

    @property
    def min(self) -> torch.Tensor:
        """Smallest representable value (float64)."""
        return self.offset.double() * self.scale.double()

    @property
    def max(self) -> torch.Tensor:
        """Largest representable value (float64)."""
        return (self.offset.double() + self.num_steps) * self.scale.double()

    @property
    def zero_point(self) -> torch.Tensor:
        """Zero point in the unsigned convention of torch's fake-quant kernels (``-offset``)."""
        return (-self.offset).to(torch.int32)

    @property
    def is_signed(self) -> bool:
        """True when the integer container is signed (symmetric with a negative range)."""
        return self.symmetric and bool((self.offset != 0).any())

    @property
    def is_per_channel(self) -> bool:
        """True for per-channel encodings."""
        return self.axis is not None

    def to(self, device: torch.device | str) -> Encoding:
        """Return the same encoding with its tensors on ``device``."""
        return Encoding(self.bitwidth, self.symmetric, self.scale.to(device), self.offset.to(device), self.axis)

    def to_aimet(self) -> list[dict[str, Any]]:
        """Entries in the AIMET encodings-file format: one per tensor or one per channel."""
        scales = self.scale.reshape(-1).double().tolist()
        offsets = self.offset.reshape(-1).tolist()
        entries = []
        for scale, offset in zip(scales, offsets):
            entries.append(
                {
                    "bitwidth": self.bitwidth,
                    "dtype": "int",
                    "is_symmetric": str(self.symmetric),
                    "max": (offset + self.num_steps) * scale,
                    "min": offset * scale,
                    "offset": int(offset),
                    "scale": scale,
                }
            )
        return entries

    @classmethod
    def from_aimet(cls, entries: list[dict[str, Any]], axis: int | None = None) -> Encoding:
        """Parse AIMET encodings-file entries (a list of one entry, or one per channel along ``axis``).

        Every number is checked as :func:`leantorch.quant.encodings_file.parse_encoding` does (a scale
        that is not positive, an offset off the grid, min/max that disagree raise
        :class:`~leantorch.errors.EncodingsFileError`).
        """
        from .encodings_file import parse_encoding  # that module builds on this one

        enc = parse_encoding(entries, "encoding")
        if axis is None:
            return enc
        return cls(enc.bitwidth, enc.symmetric, enc.scale.reshape(-1), enc.offset.reshape(-1), axis)


def compute_encoding(
    min_val: torch.Tensor,
    max_val: torch.Tensor,
    bitwidth: int,
    symmetric: bool,
    unsigned_symmetric: bool = True,
    axis: int | None = None,
) -> Encoding:
    """Encoding for an observed range ``[min_val, max_val]`` (0-d, or one value per channel).

    See the module docstring for the formulas.

    Example:
        >>> enc = compute_encoding(torch.tensor(-2.0), torch.tensor(1.0), 8, symmetric=True)
        >>> int(enc.offset), round(float(enc.scale) * 127, 6)
        (-128, 2.0)
    """
    check_bitwidth(bitwidth)
    scale, offset = primitives.grid_from_range(min_val, max_val, bitwidth, symmetric, unsigned_symmetric)
    return Encoding(bitwidth, bool(symmetric), scale, offset, axis)


def quantize(x: torch.Tensor, enc: Encoding) -> torch.Tensor:
    """Integer codes ``q`` in ``[0, 2**bw - 1]`` (int64) of ``x`` under ``enc``.

    Division (not multiplication by 1/scale) as in ONNX QuantizeLinear.

    Example:
        >>> enc = compute_encoding(torch.tensor(0.0), torch.tensor(2.55), 8, symmetric=False)
        >>> quantize(torch.tensor([0.0, 1.0, 9.0]), enc).tolist()
        [0, 100, 255]
    """
    return primitives.quantize(x, enc.scale, enc.offset, enc.bitwidth, enc.axis)


def dequantize(q: torch.Tensor, enc: Encoding) -> torch.Tensor:
    """Real values ``(q + offset) * scale`` (float32) of integer codes ``q``."""
    return primitives.dequantize(q, enc.scale, enc.offset, enc.axis)
