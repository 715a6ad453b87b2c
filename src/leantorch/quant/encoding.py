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

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..errors import EncodingsFileError, UnsupportedBitwidthError
from ..options import short_repr
from . import primitives
from .primitives import FLT_MAX as FLT_MAX  # re-exported: their home was here
from .primitives import MIN_SCALE as MIN_SCALE

__all__ = [
    "check_bitwidth",
    "Encoding",
    "compute_encoding",
    "quantize",
    "dequantize",
    "REQUIRED_FIELDS",
    "same_encoding",
    "parse_encoding",
]

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
    scale: torch.Tensor  # float32; shape () or (C,), or (C, n_blocks) blockwise
    offset: torch.Tensor  # int64; same shape as scale
    axis: int | None = None
    #: blockwise (:mod:`.blocks`): input channels per block, along ``block_axis`` of the weight
    block_size: int | None = None
    block_axis: int | None = None
    #: LPBQ: the block scales are integers in [1, 2**(decompressed_bw - bitwidth)] times one float per channel
    decompressed_bw: int | None = None
    #: a float format (:mod:`.float_formats`: float16, bfloat16, float8_e4m3fn, float8_e5m2) instead of an integer grid
    float_format: str | None = None

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

    @property
    def is_blockwise(self) -> bool:
        """True for blockwise (and LPBQ) encodings: one scale per block of input channels per output channel."""
        return self.block_size is not None

    def to(self, device: torch.device | str) -> Encoding:
        """Return the same encoding with its tensors on ``device``."""
        return replace(self, scale=self.scale.to(device), offset=self.offset.to(device))

    def to_aimet(self) -> list[dict[str, Any]]:
        """Entries in the AIMET encodings-file format: one per tensor or one per channel."""
        scales = self.scale.reshape(-1).double().tolist()
        offsets = self.offset.reshape(-1).tolist()
        if self.float_format is not None:  # :mod:`.encodings_floats`: no grid; fp8 (8 bits) has scales
            head = {"bitwidth": self.bitwidth, "dtype": "float", "float_format": self.float_format}
            return [head] if self.bitwidth == 16 else [head | {"scale": s, "offset": 0} for s in scales]
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

        Every number is checked as :func:`parse_encoding` does (a scale
        that is not positive, an offset off the grid, min/max that disagree raise
        :class:`~leantorch.errors.EncodingsFileError`).
        """
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


# ------------------------------------------------------------------------------ AIMET encodings-file entries
#: Fields every encodings-file entry must have (the rules are in :mod:`.encodings_file`).
REQUIRED_FIELDS = ("bitwidth", "is_symmetric", "scale", "offset", "min", "max")

_FLOAT32_MAX = 3.4028234663852886e38
_SYMMETRY = {True: True, False: False, "True": True, "False": False, "true": True, "false": False}


def same_encoding(a: Encoding, b: Encoding) -> bool:
    """True when two encodings define the same grid (bitwidth, symmetry, scales, offsets, axis).

    Example:
        >>> from leantorch.quant.encoding import compute_encoding
        >>> e = compute_encoding(torch.tensor(-1.0), torch.tensor(1.0), 8, symmetric=False)
        >>> same_encoding(e, e.to("cpu"))
        True
    """
    return (
        (a.bitwidth, a.symmetric, a.axis, a.block_size, a.block_axis, a.decompressed_bw, a.float_format)
        == (b.bitwidth, b.symmetric, b.axis, b.block_size, b.block_axis, b.decompressed_bw, b.float_format)
        and a.scale.shape == b.scale.shape
        and torch.equal(a.scale.cpu(), b.scale.cpu())
        and torch.equal(a.offset.cpu(), b.offset.cpu())
    )


def parse_encoding(entries: Any, name: str) -> Encoding:
    """The :class:`Encoding` of one file entry list, every number checked (rules in the module docstring).

    One entry gives a per-tensor encoding (0-d scale); several give one scale per channel (``axis`` is
    left None for the caller to set).

    Example:
        >>> entry = {"bitwidth": 4, "is_symmetric": "False", "scale": 0.5, "offset": -4, "min": -2.0, "max": 5.5}
        >>> enc = parse_encoding([entry], "x")
        >>> enc.bitwidth, float(enc.scale), int(enc.offset)
        (4, 0.5, -4)
        >>> parse_encoding([dict(entry, scale=0.0)], "x")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        leantorch.errors.EncodingsFileError: x: scale=0.0 is not a valid scale...
    """
    if not isinstance(entries, list) or not entries:
        raise EncodingsFileError(
            f"{name}: expected a non-empty list of entries (one per tensor or one per "
            f"channel), got {short_repr(entries)}"
        )
    many = len(entries) > 1
    parsed = [_parse_entry(e, f"{name} channel {i}" if many else name) for i, e in enumerate(entries)]
    first = parsed[0]
    for i, p in enumerate(parsed[1:], start=1):
        # One tensor has one container: same bitwidth, symmetry and signedness on every channel.
        if (p[0], p[1]) != (first[0], first[1]):
            raise EncodingsFileError(
                f"{name} channel {i}: bitwidth {p[0]}, is_symmetric {p[1]} differ from channel 0 "
                f"(bitwidth {first[0]}, is_symmetric {first[1]}); all channels of one tensor share them"
            )
        if first[1] and (p[3] == 0) != (first[3] == 0):
            raise EncodingsFileError(
                f"{name} channel {i}: offset {p[3]} mixes an unsigned and a signed symmetric grid (channel 0 "
                f"has offset {first[3]}); use one of 0 or {-(2 ** (first[0] - 1))} on every channel"
            )
    scale = torch.tensor([p[2] for p in parsed], dtype=torch.float32)
    offset = torch.tensor([p[3] for p in parsed], dtype=torch.int64)
    if not many:
        scale, offset = scale[0], offset[0]
    return Encoding(first[0], first[1], scale, offset, None)


def _parse_entry(entry: Any, label: str) -> tuple[int, bool, float, int]:
    """(bitwidth, symmetric, scale, offset) of one entry, after every check of the module docstring."""
    if not isinstance(entry, dict):
        raise EncodingsFileError(
            f"{label}: expected an entry object {{bitwidth, is_symmetric, scale, offset, "
            f"min, max}}, got {short_repr(entry)}"
        )
    # dtype first: float entries ({"bitwidth": 16, "dtype": "float"}) are parsed by .encodings_floats
    dtype = entry.get("dtype", "int")
    if dtype != "int":
        raise EncodingsFileError(
            f"{label}: dtype={short_repr(dtype)} is not a known dtype; use 'int' (or 'float' with a float_format, "
            "which sim.load_encodings reads) — or drop the entry to keep the tensor in float"
        )
    missing = [f for f in REQUIRED_FIELDS if f not in entry]
    if missing:
        raise EncodingsFileError(f"{label}: missing field(s) {missing}; every entry needs {list(REQUIRED_FIELDS)}")
    bitwidth = _bitwidth(entry["bitwidth"], label)
    symmetric = _symmetry(entry["is_symmetric"], label)
    scale = _scale(entry["scale"], label)
    offset = _offset(entry["offset"], bitwidth, symmetric, label)
    _check_range(entry["min"], entry["max"], bitwidth, scale, offset, label)
    return bitwidth, symmetric, scale, offset


def _bitwidth(value: Any, label: str) -> int:
    try:
        bitwidth = check_bitwidth(value, f"{label}: bitwidth")
    except UnsupportedBitwidthError as exc:
        raise EncodingsFileError(str(exc)) from exc
    if bitwidth == FLOAT_BITWIDTH:
        raise EncodingsFileError(
            f"{label}: bitwidth=32 means 'not quantized' and has no integer grid; drop the "
            "entry (and disable that quantizer) or give a bitwidth from 2 to 16"
        )
    return bitwidth


def _symmetry(value: Any, label: str) -> bool:
    if isinstance(value, (bool, str)) and value in _SYMMETRY:
        return _SYMMETRY[value]
    raise EncodingsFileError(f'{label}: is_symmetric={value!r} is not a boolean; use true/false or "True"/"False"')


def _number(value: Any, label: str, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EncodingsFileError(f"{label}: {field}={value!r} is not a number; write it as a JSON number")
    try:
        number = float(value)
    except OverflowError:  # a JSON integer beyond float range
        number = math.inf
    if not math.isfinite(number):
        raise EncodingsFileError(
            f"{label}: {field}={value!r} is not finite; recompute the encodings from "
            "finite data (sim.compute_encodings) and write the file again"
        )
    return number


def _scale(value: Any, label: str) -> float:
    scale = _number(value, label, "scale")
    if not MIN_SCALE <= scale <= _FLOAT32_MAX:
        raise EncodingsFileError(
            f"{label}: scale={value!r} is not a valid scale: it must be positive, at least "
            f"{MIN_SCALE} and fit float32; recompute the encodings or correct the entry"
        )
    return scale


def _offset(value: Any, bitwidth: int, symmetric: bool, label: str) -> int:
    number = _number(value, label, "offset")
    if number != round(number):
        raise EncodingsFileError(
            f"{label}: offset={value!r} is not an integer; offsets are integer grid "
            "positions (offset = round(min / scale))"
        )
    offset = int(number)
    if symmetric:
        allowed = (-(2 ** (bitwidth - 1)), 0)
        if offset not in allowed:
            raise EncodingsFileError(
                f"{label}: offset={value!r} is off the symmetric {bitwidth}-bit grid: use {allowed[0]} (signed) "
                "or 0 (unsigned), or set is_symmetric to false for an asymmetric offset"
            )
    elif not -(2**bitwidth - 1) <= offset <= 0:
        raise EncodingsFileError(
            f"{label}: offset={value!r} is off the asymmetric {bitwidth}-bit grid: it must lie in "
            f"[{-(2**bitwidth - 1)}, 0] so that 0.0 is representable (offset = round(min / scale))"
        )
    return offset


def _check_range(lo_value: Any, hi_value: Any, bitwidth: int, scale: float, offset: int, label: str) -> None:
    lo, hi = _number(lo_value, label, "min"), _number(hi_value, label, "max")
    if lo > hi:
        raise EncodingsFileError(f"{label}: min={lo_value!r} > max={hi_value!r}; swap them or recompute the entry")
    steps = 2**bitwidth - 1
    want_lo, want_hi = offset * scale, (offset + steps) * scale
    # Bounds written as float32 (AIMET) are off by float32 rounding of values up to `steps` steps large.
    tolerance = scale * (1e-3 + 1e-6 * (abs(offset) + steps))
    for field, got, want, value in (("min", lo, want_lo, lo_value), ("max", hi, want_hi, hi_value)):
        if abs(got - want) > tolerance:
            raise EncodingsFileError(
                f"{label}: {field}={value!r} disagrees with scale={scale!r} and offset={offset} (which give "
                f"{field}={want!r}); min must be offset * scale and max = min + {steps} * scale — fix the "
                "numbers or recompute the entry"
            )


# ---------------------------------------------------------------------------------------------- matching
