"""AIMET encodings-file layouts 1.0.0 and 2.0.0, converted to and from the 0.6.1 layout.

:mod:`.encodings_file` is the public entry point (it reads every version, checks every number and writes
the version asked for); this module only moves fields between layouts. The 0.6.1 layout (``{name: [entry
per tensor or per channel]}`` with ``{bitwidth, dtype, is_symmetric, scale, offset, min, max}``) is the one
the rest of leantorch works with.

Version 1.0.0 (AIMET ``aimet_common.defs.EncodingType``, ``Docs/techniques/encoding_spec.rst``)::

    {"version": "1.0.0",
     "activation_encodings": [item, ...], "param_encodings": [item, ...],   # lists, the name inside
     "quantizer_args": {...}, "excluded_layers": [...]}
    item = {"name": "conv.weight", "enc_type": "PER_CHANNEL", "dtype": "INT", "bw": 8, "is_sym": true,
            "scale": [0.1, 0.2], "offset": [-128, -128]}      # one value per channel; [x] per tensor

``offset`` is the 0.6.1 offset (``x̂ = (q + offset) * scale``, ``q`` in ``[0, 2**bw - 1]``); ``min``/``max``
are gone (they follow from scale and offset). ``enc_type`` ``PER_BLOCK``, ``LPBQ`` and ``VECTOR``
(``block_size``, ``compressed_bw``, ``per_block_int_scale``, ...) and ``dtype`` ``FLOAT`` are refused: not
supported yet.

Version 2.0.0 (fields of ONNX QuantizeLinear)::

    {"version": "2.0.0", "encodings": [item, ...]}          # one list: activations and parameters alike
    item = {"name": "input", "output_dtype": "uint8", "y_scale": 0.01, "y_zero_point": 41}
    item = {"name": "conv.weight", "output_dtype": "int8", "y_scale": [0.1, 0.2], "axis": 0}

``q = saturate(round(x / y_scale) + y_zero_point)`` in the range of ``output_dtype`` (``int{bw}`` or
``uint{bw}``); ``y_zero_point`` defaults to 0. Hence ``offset = -y_zero_point`` for ``uint{bw}`` and
``offset = -y_zero_point - 2**(bw-1)`` for ``int{bw}``. The format has no symmetry flag: leantorch writes a
signed symmetric encoding as ``int{bw}`` (zero point 0) and every other one as ``uint{bw}``, and on loading a
2.0.0 entry is symmetric when its quantizer is and its grid is a symmetric one (offset ``-2**(bw-1)`` or
0), as AIMET takes the setting from the sim. Blockwise entries (``block_size``, nested ``y_scale``, LPBQ's
``per_block_int_scale``), float ``output_dtype`` and fractional zero points (2-bit custom grids) are
refused: not supported yet. The read 2.0.0 list becomes the section ``"encodings"`` (name → 0.6.1 entries),
looked up among activations and parameters alike.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

from ..errors import EncodingsFileError
from ..options import short_repr
from .encodings_fields import bits, check_scale, output_dtype, zero_points

__all__ = ["EncodingsVersion", "VERSIONS", "POOLED", "legacy_entries", "to_legacy", "from_legacy"]

#: An AIMET encodings-file format version that leantorch reads and writes.
EncodingsVersion = Literal["0.6.1", "1.0.0", "2.0.0"]
#: The versions read and written, oldest first.
VERSIONS: tuple[str, ...] = get_args(EncodingsVersion)
#: The section of a 2.0.0 file (one list for activations and parameters).
POOLED = "encodings"
_SECTIONS = ("activation_encodings", "param_encodings")
_NAMES_KEY = "quantizer_names"
_V1_FIELDS = ("bw", "is_sym", "scale", "offset")
_BLOCKWISE_TYPES = ("PER_BLOCK", "LPBQ", "VECTOR")
_FLOAT32_MAX = 3.4028234663852886e38
_SYMMETRY = {True: True, False: False, "True": True, "False": False, "true": True, "false": False}
_NOT_YET = "not supported yet (leantorch has no blockwise quantization); only per-tensor and per-channel"


def legacy_entries(bitwidth: Any, symmetric: Any, scales: list[Any], offsets: list[Any]) -> list[dict[str, Any]]:
    """0.6.1 entries (one per value of ``scales``) with ``min``/``max`` derived from scale and offset.

    Values that are not numbers are passed on as they are, for the 0.6.1 checks to name them.

    Example:
        >>> legacy_entries(8, True, [0.5], [-128])[0]["max"]
        63.5
    """
    entries = []
    for scale, offset in zip(scales, offsets):
        lo = hi = 0.0
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (scale, offset, bitwidth)):
            try:
                lo, hi = offset * scale, (offset + 2**bitwidth - 1) * scale
            except (OverflowError, ValueError):
                lo = hi = math.inf
        entries.append(
            {
                "bitwidth": bitwidth,
                "dtype": "int",
                "is_symmetric": symmetric,
                "scale": scale,
                "offset": offset,
                "min": lo,
                "max": hi,
            }
        )
    return entries


# ---------------------------------------------------------------------------------------------- reading
def to_legacy(data: dict[str, Any], source: str = "the file") -> dict[str, Any]:
    """A parsed 1.0.0 or 2.0.0 file with its sections in the 0.6.1 layout (other keys kept).

    Only the layout is checked here; the numbers are checked by the caller, entry by entry.

    Example:
        >>> item = {"name": "fc.weight", "enc_type": "PER_TENSOR", "dtype": "INT", "bw": 8, "is_sym": True,
        ...         "scale": [0.5], "offset": [-128]}
        >>> to_legacy({"version": "1.0.0", "param_encodings": [item]})["param_encodings"]["fc.weight"][0]["min"]
        -64.0
        >>> to_legacy({"version": "2.0.0", "encodings": [{"name": "x", "output_dtype": "uint8", "y_scale": 0.5,
        ...                                                "y_zero_point": 3}]})["encodings"]["x"][0]["offset"]
        -3
    """
    out = {k: v for k, v in data.items() if k not in (*_SECTIONS, POOLED)}
    if data.get("version") == "1.0.0":
        present = [s for s in _SECTIONS if s in data]
        if not present:
            raise EncodingsFileError(
                f"{source} holds no encodings: neither {_SECTIONS[0]!r} nor {_SECTIONS[1]!r} "
                "is present. Write the file with sim.save_encodings or sim.export."
            )
        for section in present:
            out[section] = _read_list(
                data[section],
                section,
                source,
                _v1_entries,
                "{name, enc_type, dtype, bw, is_sym, scale, offset}",
                "1.0.0",
            )
        return out
    stray = [s for s in _SECTIONS if s in data]
    if stray:
        raise EncodingsFileError(
            f"{source}: version 2.0.0 files hold one list {POOLED!r}, not {stray}; set the "
            "version that matches the layout (0.6.1 or 1.0.0) or rewrite the file"
        )
    if POOLED not in data:
        raise EncodingsFileError(
            f"{source} holds no encodings: {POOLED!r} is not present. Write the file with "
            "sim.save_encodings or sim.export."
        )
    out[POOLED] = _read_list(
        data[POOLED], POOLED, source, _v2_entries, "{name, output_dtype, y_scale, [y_zero_point], [axis]}", "2.0.0"
    )
    return out


def _read_list(
    items: Any, section: str, source: str, convert: Any, fields: str, version: str
) -> dict[str, list[dict[str, Any]]]:
    if not isinstance(items, list):
        raise EncodingsFileError(
            f"{source}: {section!r} must be a JSON list of entries {fields} in version "
            f"{version}, got {type(items).__name__}"
        )
    out: dict[str, list[dict[str, Any]]] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise EncodingsFileError(f"{section}[{i}]: expected an entry object {fields}, got {short_repr(item)}")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise EncodingsFileError(
                f"{section}[{i}]: 'name' must be a non-empty string (the tensor's name), got {short_repr(name)}"
            )
        label = f"{section}[{name!r}]"
        if name in out:
            raise EncodingsFileError(f"{label}: the name appears twice in {section!r}; keep one entry per tensor")
        out[name] = convert(item, label)
    return out


def _v1_entries(item: dict[str, Any], label: str) -> list[dict[str, Any]]:
    dtype, enc_type = item.get("dtype"), item.get("enc_type")
    if dtype == "FLOAT":
        raise EncodingsFileError(
            f"{label}: dtype='FLOAT' (bw {short_repr(item.get('bw'))}): float encodings are "
            "not supported yet; only integer ('INT') encodings can be loaded — drop the entry "
            "to keep the tensor in full float"
        )
    if dtype != "INT":
        raise EncodingsFileError(
            f"{label}: dtype={short_repr(dtype)} is not a known dtype of version 1.0.0; use "
            "'INT' (or 'FLOAT', which is not supported yet)"
        )
    if enc_type in _BLOCKWISE_TYPES:
        raise EncodingsFileError(
            f"{label}: enc_type={enc_type!r} is {_NOT_YET} ('PER_TENSOR', 'PER_CHANNEL') "
            "integer encodings can be loaded"
        )
    if enc_type not in ("PER_TENSOR", "PER_CHANNEL"):
        raise EncodingsFileError(
            f"{label}: enc_type={short_repr(enc_type)} is not a known encoding type; use 'PER_TENSOR' or 'PER_CHANNEL'"
        )
    blockwise = [f for f in ("block_size", "compressed_bw", "per_block_int_scale") if f in item]
    if blockwise:
        raise EncodingsFileError(
            f"{label}: {blockwise} given with enc_type={enc_type!r}: blockwise fields are "
            f"{_NOT_YET} encodings can be loaded"
        )
    missing = [f for f in _V1_FIELDS if f not in item]
    if missing:
        raise EncodingsFileError(f"{label}: missing field(s) {missing}; every INT entry needs {list(_V1_FIELDS)}")
    shift = item.get("zero_point_shift")
    if shift is not None and (not isinstance(shift, list) or any(v != 0 for v in shift)):
        raise EncodingsFileError(
            f"{label}: zero_point_shift={short_repr(shift)} (int2 custom grids) is not "
            "supported yet; drop the field if every shift is 0"
        )
    bitwidth = bits(item["bw"], label, "bw")
    symmetric = item["is_sym"]
    if not isinstance(symmetric, (bool, str)) or symmetric not in _SYMMETRY:
        raise EncodingsFileError(f"{label}: is_sym={symmetric!r} is not a boolean; use true or false")
    scales, offsets = item["scale"], item["offset"]
    for field, values in (("scale", scales), ("offset", offsets)):
        if not isinstance(values, list) or not values:
            raise EncodingsFileError(
                f"{label}: {field}={short_repr(values)} must be a non-empty list (one value, or one per channel)"
            )
    if len(scales) != len(offsets):
        raise EncodingsFileError(f"{label}: {len(scales)} scales but {len(offsets)} offsets; give one offset per scale")
    if enc_type == "PER_TENSOR" and len(scales) > 1:
        raise EncodingsFileError(
            f"{label}: enc_type='PER_TENSOR' with {len(scales)} scales; use 'PER_CHANNEL' "
            "for one scale per channel, or give one scale"
        )
    return legacy_entries(bitwidth, _SYMMETRY[symmetric], scales, offsets)


def _v2_entries(item: dict[str, Any], label: str) -> list[dict[str, Any]]:
    lpbq = [f for f in ("per_block_int_scale", "per_channel_float_scale", "block_size") if f in item]
    if lpbq:
        raise EncodingsFileError(
            f"{label}: {lpbq}: blockwise (per-block, LPBQ) encodings are {_NOT_YET} encodings can be loaded"
        )
    signed, bitwidth = output_dtype(item.get("output_dtype"), label)
    if "y_scale" not in item:
        raise EncodingsFileError(f"{label}: missing field 'y_scale'; every entry needs name, output_dtype, y_scale")
    raw = item["y_scale"]
    if isinstance(raw, dict):
        raise EncodingsFileError(
            f"{label}: y_scale is an object (a double-quantized scale, version 2.1.0): "
            f"{_NOT_YET} encodings can be loaded"
        )
    per_channel = isinstance(raw, list)
    scales = raw if per_channel else [raw]
    if not scales or any(isinstance(s, list) for s in scales):
        raise EncodingsFileError(
            f"{label}: y_scale={short_repr(raw)}: give a number, or a flat non-empty list (one "
            f"per channel); nested lists (blockwise) are {_NOT_YET} encodings can be loaded"
        )
    for i, scale in enumerate(scales):
        check_scale(scale, f"{label} channel {i}" if per_channel else label)
    axis = item.get("axis")
    if per_channel and (isinstance(axis, bool) or not isinstance(axis, int)):
        raise EncodingsFileError(
            f"{label}: per-channel y_scale ({len(scales)} values) needs 'axis', the channel "
            f"axis as an integer; got {short_repr(axis)}"
        )
    points = zero_points(item.get("y_zero_point"), len(scales), per_channel, label)
    shift = 2 ** (bitwidth - 1) if signed else 0
    low, high = -shift, 2**bitwidth - 1 - shift
    for i, z in enumerate(points):
        if not low <= z <= high:
            where = f"{label} channel {i}" if per_channel else label
            raise EncodingsFileError(
                f"{where}: y_zero_point={z} is outside the range [{low}, {high}] of {item['output_dtype']!r}"
            )
    offsets = [-z - shift for z in points]
    symmetric = all(o == -(2 ** (bitwidth - 1)) for o in offsets) or all(o == 0 for o in offsets)
    return legacy_entries(bitwidth, symmetric, scales, offsets)


# ---------------------------------------------------------------------------------------------- writing
def from_legacy(
    data: dict[str, Any], version: str, axes: dict[tuple[str, str], int | None] | None = None
) -> dict[str, Any]:
    """A file in ``version`` from 0.6.1-layout ``data`` (checked entries; other keys kept).

    ``axes`` gives the channel axis of per-channel entries by (section, name); 2.0.0 needs it (default 0,
    the output-channel axis that AIMET's 1.0.0 assumes).

    Example:
        >>> entry = {"bitwidth": 8, "is_symmetric": "False", "scale": 0.5, "offset": -3, "min": -1.5, "max": 126.0}
        >>> from_legacy({"version": "0.6.1", "activation_encodings": {"x": [entry]}}, "2.0.0")["encodings"]
        [{'name': 'x', 'output_dtype': 'uint8', 'y_scale': 0.5, 'y_zero_point': 3}]
        >>> v1 = from_legacy({"version": "0.6.1", "activation_encodings": {"x": [entry]}}, "1.0.0")
        >>> v1["activation_encodings"][0]  # doctest: +NORMALIZE_WHITESPACE
        {'name': 'x', 'enc_type': 'PER_TENSOR', 'dtype': 'INT', 'bw': 8, 'is_sym': False,
         'scale': [0.5], 'offset': [-3]}
    """
    axes = axes or {}
    out: dict[str, Any] = {"version": version}
    if version == "1.0.0":
        for section in _SECTIONS:
            if section in data:
                out[section] = [
                    _v1_item(name, entries, axes.get((section, name))) for name, entries in data[section].items()
                ]
    else:
        items: dict[str, dict[str, Any]] = {}
        for section in _SECTIONS:
            for name, entries in (data.get(section) or {}).items():
                if name in items:
                    raise EncodingsFileError(
                        f"{section}[{name!r}]: the name is both an activation and a parameter; "
                        "version 2.0.0 holds one entry per tensor name — write 0.6.1 or 1.0.0"
                    )
                items[name] = _v2_item(name, entries, axes.get((section, name)))
        out[POOLED] = list(items.values())
    return out | {k: v for k, v in data.items() if k not in (*_SECTIONS, POOLED, "version")}


def _v1_item(name: str, entries: list[dict[str, Any]], axis: int | None) -> dict[str, Any]:
    first = entries[0]
    per_channel = len(entries) > 1 or axis is not None
    return {
        "name": name,
        "enc_type": "PER_CHANNEL" if per_channel else "PER_TENSOR",
        "dtype": "INT",
        "bw": first["bitwidth"],
        "is_sym": _SYMMETRY.get(first["is_symmetric"], first["is_symmetric"]),
        "scale": [e["scale"] for e in entries],
        "offset": [int(e["offset"]) for e in entries],
    }


def _v2_item(name: str, entries: list[dict[str, Any]], axis: int | None) -> dict[str, Any]:
    bitwidth = entries[0]["bitwidth"]
    offsets = [int(e["offset"]) for e in entries]
    half = 2 ** (bitwidth - 1)
    # Signed symmetric grids go in int{bw} with zero point 0 (as the QDQ export does); all others in uint{bw}.
    signed = _SYMMETRY.get(entries[0]["is_symmetric"]) is True and all(o == -half for o in offsets)
    points = [-o - (half if signed else 0) for o in offsets]
    item: dict[str, Any] = {"name": name, "output_dtype": f"{'' if signed else 'u'}int{bitwidth}"}
    if len(entries) > 1 or axis is not None:
        item["y_scale"] = [e["scale"] for e in entries]
        if any(points):
            item["y_zero_point"] = points
        item["axis"] = 0 if axis is None else axis
    else:
        item["y_scale"] = entries[0]["scale"]
        if points[0]:
            item["y_zero_point"] = points[0]
    return item
