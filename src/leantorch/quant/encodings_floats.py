"""Float-format entries of AIMET encodings files (:mod:`.float_formats`: ``float16``, ``bfloat16`` casts and scaled
``float8_e4m3fn`` / ``float8_e5m2``), in the three versions leantorch reads and writes.

In the 0.6.1 layout (what :mod:`.encodings_file` works with) a float tensor has one entry (fp16/bf16), or
one entry per tensor or per channel (fp8), with ``"dtype": "float"``::

    {"bitwidth": 16, "dtype": "float", "float_format": "float16"}          # also "bfloat16"
    {"bitwidth": 8, "dtype": "float", "float_format": "float8_e4m3fn", "scale": 0.01, "offset": 0}

AIMET writes fp16 as ``{"bitwidth": 16, "dtype": "float"}``: without ``float_format``, 16 bits mean
``float16``; 8 bits without it are refused (the file does not say which fp8). Version 1.0.0::

    {"name": "x", "enc_type": "PER_TENSOR", "dtype": "FLOAT", "bw": 16, "float_format": "float16"}
    {"name": "w", "enc_type": "PER_CHANNEL", "dtype": "FLOAT", "bw": 8, "float_format": "float8_e5m2",
     "scale": [0.01, 0.02]}

(``FLOAT`` without ``float_format`` and ``bw`` 16 is ``float16``, as AIMET writes it; ``is_sym`` may be present.)
Version 2.0.0 (ONNX QuantizeLinear's ``output_dtype``; fp16/bf16 are plain casts, without ``y_scale``)::

    {"name": "x", "output_dtype": "float16"}                              # or "bfloat16"
    {"name": "w", "output_dtype": "float8e4m3fn", "y_scale": [0.01, 0.02], "axis": 0}   # or "float8e5m2"

Every number is checked: fp8 scales are finite, positive, at least MIN_SCALE and fit float32; offsets and zero
points are 0; the casts' scale (if given) is 1; an unknown format name raises
:class:`~leantorch.errors.EncodingsFileError` naming the four. Loading a float entry makes its quantizer that
float format (:mod:`.encodings_matching`).

Example:
    >>> enc = parse_float_entries([{"bitwidth": 16, "dtype": "float"}], "x")
    >>> enc.float_format, enc.bitwidth, float(enc.scale)
    ('float16', 16, 1.0)
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import EncodingsFileError
from ..options import short_repr
from .encoding import Encoding
from .encodings_fields import check_scale
from .float_formats import FLOAT_FORMATS, float_bitwidth, is_scaled

__all__ = [
    "float_entries_of",
    "is_float_entries",
    "is_float_dtype",
    "parse_float_entries",
    "v1_float_entries",
    "v1_float_item",
    "v2_float_entries",
    "v2_float_item",
]

#: 2.0.0 ``output_dtype`` (ONNX's names) → leantorch's float format name
_V2_NAMES = {"float16": "float16", "bfloat16": "bfloat16", "float8e4m3fn": "float8_e4m3fn", "float8e5m2": "float8_e5m2"}
_BLOCK_FIELDS = ("block_size", "block_axis", "num_blocks", "decompressed_bw", "compressed_bw", "per_block_int_scale")
_SYMMETRY = (True, False, "True", "False", "true", "false")


def is_float_entries(entries: Any) -> bool:
    """Whether a 0.6.1-layout entry list holds float-format entries (``"dtype": "float"``).

    Example:
        >>> is_float_entries([{"bitwidth": 16, "dtype": "float"}]), is_float_entries([{"dtype": "int"}])
        (True, False)
    """
    return isinstance(entries, list) and any(isinstance(e, dict) and e.get("dtype") == "float" for e in entries)


def is_float_dtype(dtype: Any) -> bool:
    """Whether a 2.0.0 ``output_dtype`` names a float type (known or not).

    Example:
        >>> is_float_dtype("float8e4m3fn"), is_float_dtype("bfloat16"), is_float_dtype("int8")
        (True, True, False)
    """
    return isinstance(dtype, str) and (dtype.startswith("float") or dtype.startswith("bfloat"))


def _format(value: Any, bitwidth: Any, label: str, field: str = "float_format") -> str:
    """The float format of an entry: ``value`` (a name of :data:`FLOAT_FORMATS`) or, absent, 16 bits → float16."""
    if isinstance(bitwidth, bool) or bitwidth not in (8, 16):
        raise EncodingsFileError(
            f"{label}: a float entry with bitwidth {short_repr(bitwidth)}: float formats have 16 bits (float16, "
            "bfloat16) or 8 (float8_e4m3fn, float8_e5m2); drop the entry to keep the tensor in full float"
        )
    if value is None:
        if bitwidth == 8:
            raise EncodingsFileError(
                f"{label}: an 8-bit float entry without {field!r}: add {field!r}: 'float8_e4m3fn' or "
                "'float8_e5m2' (the file does not say which fp8 format)"
            )
        return "float16"  # AIMET's float entries: 16 bits are fp16
    if not isinstance(value, str) or value not in FLOAT_FORMATS:
        raise EncodingsFileError(
            f"{label}: {field}={short_repr(value)} is not a float format; use one of {sorted(FLOAT_FORMATS)}"
        )
    if float_bitwidth(value) != bitwidth:
        raise EncodingsFileError(
            f"{label}: {field}={value!r} has {float_bitwidth(value)} bits, not bitwidth {bitwidth}; fix either"
        )
    return value


def _check_common(entry: dict[str, Any], label: str, symmetry: str) -> None:
    stray = [f for f in _BLOCK_FIELDS if f in entry]
    if stray:
        raise EncodingsFileError(f"{label}: {stray} belong to blockwise integer entries, not to float ones; drop them")
    if symmetry in entry and entry[symmetry] not in _SYMMETRY:
        raise EncodingsFileError(f"{label}: {symmetry}={entry[symmetry]!r} is not a boolean; use true/false")


def _scales(raw: list[Any], offsets: Any, name: str, label: str, field: str) -> list[float]:
    """Checked scales of a float tensor (fp8: given, positive; casts: absent, or 1) and its zero offsets."""
    many = len(raw) > 1
    where = [f"{label} channel {i}" if many else label for i in range(len(raw))]
    if not is_scaled(name):
        if many:
            raise EncodingsFileError(f"{label}: {name} is a plain cast: give one entry, not {len(raw)}")
        if raw[0] is not None and (isinstance(raw[0], bool) or raw[0] != 1):
            raise EncodingsFileError(f"{label}: {field}={short_repr(raw[0])}: {name} is a plain cast; drop the scale")
        raw = [1.0]
    for value, at in zip(raw, where):
        if value is None:
            raise EncodingsFileError(f"{at}: missing field {field!r}: a {name} entry needs its scale (amax / fmax)")
        check_scale(value, at, field)
    points = offsets if isinstance(offsets, list) else [offsets] * len(raw)
    for value, at in zip(points, where):
        ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0)
        if not ok or len(points) != len(raw):
            raise EncodingsFileError(
                f"{at}: offset/zero point {short_repr(value)}: {name} has none; write 0 or drop it"
            )
    return [float(v) for v in raw]


def _encoding(name: str, scales: list[float], many: bool) -> Encoding:
    scale = torch.tensor(scales, dtype=torch.float32)
    scale = scale if many else scale[0]
    return Encoding(float_bitwidth(name), True, scale, torch.zeros_like(scale, dtype=torch.int64), float_format=name)


# ------------------------------------------------------------------------------------------------- 0.6.1
def parse_float_entries(entries: list[Any], label: str) -> Encoding:
    """The :class:`Encoding` of a 0.6.1-layout float entry list (one entry, or one per channel of an fp8 tensor:
    ``axis`` is left None for the caller to set), every field checked.

    Example:
        >>> entry = {"bitwidth": 8, "dtype": "float", "float_format": "float8_e5m2", "scale": 0.5, "offset": 0}
        >>> enc = parse_float_entries([entry, entry], "w")
        >>> enc.float_format, enc.scale.tolist()
        ('float8_e5m2', [0.5, 0.5])
    """
    many = len(entries) > 1
    names = []
    for i, entry in enumerate(entries):
        at = f"{label} channel {i}" if many else label
        if not isinstance(entry, dict) or entry.get("dtype") != "float":
            raise EncodingsFileError(
                f"{at}: {short_repr(entry)} is not a float entry like the others; one tensor is all float "
                "(dtype 'float') or all integer"
            )
        _check_common(entry, at, "is_symmetric")
        names.append(_format(entry.get("float_format"), entry.get("bitwidth"), at))
        if names[i] != names[0]:
            raise EncodingsFileError(f"{at}: float format {names[i]} differs from channel 0's {names[0]}")
        _check_bounds(entry, names[0], at)
    raw = [e.get("scale") for e in entries]
    return _encoding(names[0], _scales(raw, [e.get("offset") for e in entries], names[0], label, "scale"), many)


def _check_bounds(entry: dict[str, Any], name: str, label: str) -> None:
    """min/max, where given, are ∓fmax·scale (fp8) — as an AIMET reader would derive them."""
    fmax = FLOAT_FORMATS[name][2]
    for field, sign in (("min", -1), ("max", 1)):
        if field not in entry:
            continue
        value, scale = entry[field], entry.get("scale", 1.0)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        want = None if fmax is None or not isinstance(scale, (int, float)) else sign * fmax * scale
        if not ok or want is None or abs(value - want) > 1e-6 * abs(want):
            raise EncodingsFileError(
                f"{label}: {field}={short_repr(value)}: {name} has {'no range' if want is None else f'{want!r}'} "
                "there (∓fmax · scale for fp8); drop min/max or correct them"
            )


def float_entries_of(name: str, scales: list[float]) -> list[dict[str, Any]]:
    """0.6.1-layout entries of a float tensor (as :meth:`Encoding.to_aimet` writes them)."""
    head: dict[str, Any] = {"bitwidth": float_bitwidth(name), "dtype": "float", "float_format": name}
    return [head] if not is_scaled(name) else [head | {"scale": s, "offset": 0} for s in scales]


# ------------------------------------------------------------------------------------------------- 1.0.0
def v1_float_entries(item: dict[str, Any], label: str) -> list[dict[str, Any]]:
    """0.6.1-layout entries of a 1.0.0 ``FLOAT`` item.

    Example:
        >>> v1_float_entries({"name": "x", "enc_type": "PER_TENSOR", "dtype": "FLOAT", "bw": 16}, "x")
        [{'bitwidth': 16, 'dtype': 'float', 'float_format': 'float16'}]
    """
    _check_common(item, label, "is_sym")
    name = _format(item.get("float_format"), item.get("bw"), label)
    enc_type, raw = item.get("enc_type", "PER_TENSOR"), item.get("scale")
    if enc_type not in ("PER_TENSOR", "PER_CHANNEL"):
        raise EncodingsFileError(f"{label}: enc_type={short_repr(enc_type)}: FLOAT items are PER_TENSOR or PER_CHANNEL")
    if raw is not None and (not isinstance(raw, list) or not raw):
        raise EncodingsFileError(f"{label}: scale={short_repr(raw)} must be a non-empty list (one, or one per channel)")
    raw = raw or [None]
    if enc_type == "PER_TENSOR" and len(raw) > 1:
        raise EncodingsFileError(f"{label}: enc_type='PER_TENSOR' with {len(raw)} scales; use 'PER_CHANNEL'")
    offsets = item.get("offset")
    if offsets is not None and (not isinstance(offsets, list) or len(offsets) != len(raw)):
        raise EncodingsFileError(f"{label}: offset={short_repr(offsets)}: give one 0 per scale, or drop it")
    return float_entries_of(name, _scales(raw, offsets, name, label, "scale"))


def v1_float_item(name: str, entries: list[dict[str, Any]], axis: int | None) -> dict[str, Any]:
    """The 1.0.0 item of a float tensor's (checked) 0.6.1-layout entries."""
    fmt = _format(entries[0].get("float_format"), entries[0].get("bitwidth"), name)
    per_channel = is_scaled(fmt) and (len(entries) > 1 or axis is not None)
    item: dict[str, Any] = {"name": name, "enc_type": "PER_CHANNEL" if per_channel else "PER_TENSOR", "dtype": "FLOAT"}
    item |= {"bw": float_bitwidth(fmt), "float_format": fmt}
    return item | ({"scale": [e["scale"] for e in entries]} if is_scaled(fmt) else {})


# ------------------------------------------------------------------------------------------------- 2.0.0
def v2_float_entries(item: dict[str, Any], label: str) -> list[dict[str, Any]]:
    """0.6.1-layout entries of a 2.0.0 item with a float ``output_dtype``.

    Example:
        >>> v2_float_entries({"name": "w", "output_dtype": "float8e4m3fn", "y_scale": [0.5], "axis": 0}, "w")
        [{'bitwidth': 8, 'dtype': 'float', 'float_format': 'float8_e4m3fn', 'scale': 0.5, 'offset': 0}]
    """
    dtype = item.get("output_dtype")
    if dtype not in _V2_NAMES:
        raise EncodingsFileError(
            f"{label}: output_dtype={short_repr(dtype)} is not a supported float type; use one of "
            f"{list(_V2_NAMES)} (or an integer type such as 'int8')"
        )
    _check_common(item, label, "is_sym")
    name, raw = _V2_NAMES[dtype], item.get("y_scale")
    per_channel = isinstance(raw, list)
    if per_channel and (not raw or any(isinstance(s, list) for s in raw)):
        raise EncodingsFileError(f"{label}: y_scale={short_repr(raw)}: give a number or a flat list, one per channel")
    axis = item.get("axis")
    if per_channel and (isinstance(axis, bool) or not isinstance(axis, int)):
        raise EncodingsFileError(f"{label}: per-channel y_scale needs 'axis', an integer; got {short_repr(axis)}")
    points = item.get("y_zero_point")
    if points is not None and isinstance(points, list) != per_channel:
        raise EncodingsFileError(f"{label}: y_zero_point={short_repr(points)} does not match y_scale; drop it")
    raws: list[Any] = raw if isinstance(raw, list) else [raw]
    return float_entries_of(name, _scales(raws, points, name, label, "y_scale"))


def v2_float_item(name: str, entries: list[dict[str, Any]], axis: int | None) -> dict[str, Any]:
    """The 2.0.0 item of a float tensor's (checked) 0.6.1-layout entries."""
    fmt = _format(entries[0].get("float_format"), entries[0].get("bitwidth"), name)
    item: dict[str, Any] = {"name": name, "output_dtype": next(k for k, v in _V2_NAMES.items() if v == fmt)}
    if not is_scaled(fmt):
        return item
    if len(entries) > 1 or axis is not None:
        return item | {"y_scale": [e["scale"] for e in entries], "axis": 0 if axis is None else axis}
    return item | {"y_scale": entries[0]["scale"]}
