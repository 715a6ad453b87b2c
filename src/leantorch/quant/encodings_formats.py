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
are gone (they follow from scale and offset). Blockwise weights (one scale per block of ``block_size``
input channels of each output channel, C output channels, n blocks each; :mod:`.encodings_blocks`)::

    item = {"name": "fc.weight", "enc_type": "PER_BLOCK", "dtype": "INT", "bw": 4, "is_sym": true,
            "scale": [C·n values, channel-major], "offset": [C·n values], "block_size": 32}
    item = {"name": "fc.weight", "enc_type": "LPBQ", "dtype": "INT", "bw": 8, "compressed_bw": 4,
            "block_size": 32, "is_sym": true, "scale": [C per-channel float scales],
            "offset": [-128] * C, "per_block_int_scale": [C·n integers in [1, 2**(bw - compressed_bw)]]}

LPBQ's ``bw`` is the decompressed bitwidth, ``compressed_bw`` the stored one; a block's scale is its integer
times its channel's float scale. The block axis is not written (the weight's input-channel axis is taken
on loading). ``enc_type`` ``VECTOR`` is refused: not supported yet. ``dtype`` ``FLOAT`` items (float16, bfloat16,
fp8) are :mod:`.encodings_floats`'s.

Version 2.0.0 (fields of ONNX QuantizeLinear)::

    {"version": "2.0.0", "encodings": [item, ...]}          # one list: activations and parameters alike
    item = {"name": "input", "output_dtype": "uint8", "y_scale": 0.01, "y_zero_point": 41}
    item = {"name": "conv.weight", "output_dtype": "int8", "y_scale": [0.1, 0.2], "axis": 0}

``q = saturate(round(x / y_scale) + y_zero_point)`` in the range of ``output_dtype`` (``int{bw}`` or
``uint{bw}``); ``y_zero_point`` defaults to 0. Hence ``offset = -y_zero_point`` for ``uint{bw}`` and
``offset = -y_zero_point - 2**(bw-1)`` for ``int{bw}``. The format has no symmetry flag: leantorch writes a
signed symmetric encoding as ``int{bw}`` (zero point 0) and every other one as ``uint{bw}``, and on loading a
2.0.0 entry is symmetric when its quantizer is and its grid is a symmetric one (offset ``-2**(bw-1)`` or
0), as AIMET takes the setting from the sim. Blockwise weights::

    item = {"name": "fc.weight", "output_dtype": "int4", "y_scale": [[n scales] * C], "axis": 1,
            "block_size": 32}                          # y_zero_point nested alike, only when not all 0
    item = {"name": "fc.weight", "output_dtype": "int4", "per_channel_float_scale": [[f0], [f1], ...],
            "per_block_int_scale": [[n integers] * C], "axis": 1, "block_size": 32}      # LPBQ

``axis`` is the block (input-channel) axis; LPBQ decompresses ``int{bw}`` to ``2·bw`` bits (the format has
no field for it, so an LPBQ encoding with another decompressed bitwidth is written in 1.0.0 only).
Float ``output_dtype`` items (``float16``, ``bfloat16``, ``float8e4m3fn``, ``float8e5m2``) are
:mod:`.encodings_floats`'s. Double-quantized scales (2.1.0) and fractional zero points (2-bit custom grids)
are refused: not supported yet. The read 2.0.0 list becomes the section ``"encodings"`` (name → 0.6.1
entries), looked up among activations and parameters alike. Blockwise entries become one 0.6.1 entry per
block with the block keys of :mod:`.encodings_blocks`.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

from ..errors import EncodingsFileError
from ..options import short_repr
from . import encodings_floats as floats
from .encodings_blocks import (
    entry_blocks,
    positive_int,
    read_v1_lpbq,
    read_v2_lpbq,
    v1_block_item,
    v2_block_item,
)
from .encodings_fields import bits, check_scale, nested, output_dtype, zero_points

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
_V1_TYPES = ("PER_TENSOR", "PER_CHANNEL", "PER_BLOCK", "LPBQ")
_FLOAT32_MAX = 3.4028234663852886e38
_SYMMETRY = {True: True, False: False, "True": True, "False": False, "true": True, "false": False}


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
        return floats.v1_float_entries(item, label)
    if dtype != "INT":
        raise EncodingsFileError(
            f"{label}: dtype={short_repr(dtype)} is not a known dtype of version 1.0.0; use 'INT' or 'FLOAT'"
        )
    if enc_type == "VECTOR":
        raise EncodingsFileError(
            f"{label}: enc_type='VECTOR' (vector quantization) is not supported yet; only 'PER_TENSOR', "
            "'PER_CHANNEL', 'PER_BLOCK' and 'LPBQ' integer encodings can be loaded"
        )
    if enc_type not in _V1_TYPES:
        raise EncodingsFileError(
            f"{label}: enc_type={short_repr(enc_type)} is not a known encoding type; use one of {list(_V1_TYPES)}"
        )
    lpbq_only = ("compressed_bw", "per_block_int_scale")
    stray = [f for f in ("block_size", *lpbq_only) if f in item and enc_type in ("PER_TENSOR", "PER_CHANNEL")]
    stray += [f for f in lpbq_only if f in item and enc_type == "PER_BLOCK"]
    if stray:
        raise EncodingsFileError(
            f"{label}: {stray} given with enc_type={enc_type!r}: block_size belongs to 'PER_BLOCK' and 'LPBQ' "
            "entries, compressed_bw and per_block_int_scale to 'LPBQ' ones; set enc_type or drop the fields"
        )
    if enc_type == "LPBQ":
        return _lpbq_entries(*read_v1_lpbq(item, label))
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
    # PER_BLOCK: one entry per block, channel-major; the weight's shape gives the channels when loading.
    keys = {"block_size": positive_int(item.get("block_size"), label, "block_size")} if enc_type == "PER_BLOCK" else {}
    return [e | keys for e in legacy_entries(bitwidth, _SYMMETRY[symmetric], scales, offsets)]


def _lpbq_entries(bitwidth: int, scales: list[float], keys: dict[str, int]) -> list[dict[str, Any]]:
    # LPBQ grids are signed symmetric: every block's offset is -2**(bw-1)
    return [e | keys for e in legacy_entries(bitwidth, True, scales, [-(2 ** (bitwidth - 1))] * len(scales))]


def _v2_entries(item: dict[str, Any], label: str) -> list[dict[str, Any]]:
    if floats.is_float_dtype(item.get("output_dtype")):
        return floats.v2_float_entries(item, label)
    if "per_block_int_scale" in item or "per_channel_float_scale" in item:
        return _lpbq_entries(*read_v2_lpbq(item, label))
    signed, bitwidth = output_dtype(item.get("output_dtype"), label)
    if "y_scale" not in item:
        raise EncodingsFileError(f"{label}: missing field 'y_scale'; every entry needs name, output_dtype, y_scale")
    raw, raw_points, keys = item["y_scale"], item.get("y_zero_point"), {}
    if isinstance(raw, dict):
        raise EncodingsFileError(
            f"{label}: y_scale is an object (a double-quantized scale, version 2.1.0): not supported yet; "
            "only per-tensor, per-channel, blockwise and LPBQ (version 2.0.0) encodings can be loaded"
        )
    if "block_size" in item or (isinstance(raw, list) and any(isinstance(s, list) for s in raw)):
        # blockwise: y_scale (and y_zero_point) nested (C, n_blocks); axis is the weight's block axis
        block_size = positive_int(item.get("block_size"), label, "block_size")
        block_axis = positive_int(item.get("axis"), label, "axis (the block axis)", least=0)
        channels, count, raw = nested(raw, label, "y_scale")
        if raw_points is not None:
            raw_points = nested(raw_points, label, "y_zero_point", (channels, count))[2]
        keys = {"block_size": block_size, "block_axis": block_axis, "num_blocks": count}
    per_channel = isinstance(raw, list)
    scales = raw if per_channel else [raw]
    if not scales or any(isinstance(s, list) for s in scales):
        raise EncodingsFileError(
            f"{label}: y_scale={short_repr(raw)}: give a number, a flat non-empty list (one per channel), or "
            "nested lists (one list of block scales per channel) with block_size"
        )
    where = [f"{label} channel {i}" if per_channel else label for i in range(len(scales))]
    if keys:
        where = [
            f"{label} channel {i // keys['num_blocks']} block {i % keys['num_blocks']}" for i in range(len(scales))
        ]
    for scale, at in zip(scales, where):
        check_scale(scale, at)
    axis = item.get("axis")
    if per_channel and (isinstance(axis, bool) or not isinstance(axis, int)):
        raise EncodingsFileError(
            f"{label}: per-channel y_scale ({len(scales)} values) needs 'axis', the channel "
            f"axis as an integer; got {short_repr(axis)}"
        )
    points = zero_points(raw_points, len(scales), per_channel, label)
    shift = 2 ** (bitwidth - 1) if signed else 0
    low, high = -shift, 2**bitwidth - 1 - shift
    for z, at in zip(points, where):
        if not low <= z <= high:
            raise EncodingsFileError(
                f"{at}: y_zero_point={z} is outside the range [{low}, {high}] of {item['output_dtype']!r}"
            )
    offsets = [-z - shift for z in points]
    symmetric = all(o == -(2 ** (bitwidth - 1)) for o in offsets) or all(o == 0 for o in offsets)
    return [e | keys for e in legacy_entries(bitwidth, symmetric, scales, offsets)]


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
    if floats.is_float_entries(entries):
        return floats.v1_float_item(name, entries, axis)
    per_channel = len(entries) > 1 or axis is not None
    item = {
        "name": name,
        "enc_type": "PER_CHANNEL" if per_channel else "PER_TENSOR",
        "dtype": "INT",
        "bw": first["bitwidth"],
        "is_sym": _SYMMETRY.get(first["is_symmetric"], first["is_symmetric"]),
        "scale": [e["scale"] for e in entries],
        "offset": [int(e["offset"]) for e in entries],
    }
    blocks = entry_blocks(entries, name)
    return item if blocks is None else v1_block_item(item, blocks)


def _v2_item(name: str, entries: list[dict[str, Any]], axis: int | None) -> dict[str, Any]:
    if floats.is_float_entries(entries):
        return floats.v2_float_item(name, entries, axis)
    bitwidth = entries[0]["bitwidth"]
    offsets = [int(e["offset"]) for e in entries]
    half = 2 ** (bitwidth - 1)
    # Signed symmetric grids go in int{bw} with zero point 0 (as the QDQ export does); all others in uint{bw}.
    signed = _SYMMETRY.get(entries[0]["is_symmetric"]) is True and all(o == -half for o in offsets)
    points = [-o - (half if signed else 0) for o in offsets]
    item: dict[str, Any] = {"name": name, "output_dtype": f"{'' if signed else 'u'}int{bitwidth}"}
    blocks = entry_blocks(entries, name)
    if len(entries) > 1 or axis is not None or blocks is not None:
        item["y_scale"] = [e["scale"] for e in entries]
        if any(points):
            item["y_zero_point"] = points
        item["axis"] = 0 if axis is None else axis
    else:
        item["y_scale"] = entries[0]["scale"]
        if points[0]:
            item["y_zero_point"] = points[0]
    return item if blocks is None else v2_block_item(item, bitwidth, blocks, axis)
