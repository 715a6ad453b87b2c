"""Blockwise (``PER_BLOCK``) and LPBQ entries of AIMET encodings files: the block keys of leantorch's 0.6.1
layout, the 1.0.0/2.0.0 fields they stand for, and fitting a blockwise entry to a weight quantizer.

In the 0.6.1 layout that :mod:`.encodings_file` works with, a blockwise tensor has one entry per block,
channel-major (``C · n_blocks`` entries for ``C`` output channels), each an ordinary 0.6.1 entry (its
``scale`` the block's effective scale; LPBQ: ``per_block_int_scale · per_channel_float_scale``) plus the
block keys :data:`BLOCK_KEYS`::

    "block_size": 32       # input channels per block
    "block_axis": 1        # the weight's input-channel axis (absent where the file does not say: 1.0.0)
    "num_blocks": 2        # blocks per output channel (absent where the file does not say: 1.0.0 PER_BLOCK)
    "decompressed_bw": 8   # LPBQ only: the block scales are integers in [1, 2**(8 - bitwidth)] times a float

Version 0.6.1 files cannot express blocks: writing a blockwise encoding in 0.6.1 is refused. Versions
1.0.0 and 2.0.0 (fields in :mod:`.encodings_formats`) carry them; loading fits an entry to its weight
(:mod:`.encodings_matching`): the channel and block counts must match the weight's shape, a blockwise quantizer
takes only entries of its own block size, block axis and LPBQ setting, and a per-channel or per-tensor weight
quantizer adopts a blockwise entry as it adopts a per-channel one.

LPBQ scales are kept as AIMET computes them: each channel's float scale is its largest block scale over
``2**(decompressed_bw - bitwidth)``, so its largest integer is ``2**(decompressed_bw - bitwidth)`` and the
effective scales give back the same integers and floats (:func:`~leantorch.quant.blocks.lpbq_compress`).

Example:
    >>> entry = {"bitwidth": 4, "is_symmetric": "True", "scale": 0.5, "offset": -8, "min": -4.0, "max": 3.5}
    >>> enc, blocks = parse_entries([entry | {"block_size": 16, "num_blocks": 2}] * 2, "fc.weight")
    >>> tuple(enc.scale.shape), blocks.block_size, blocks.num_blocks
    ((2,), 16, 2)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from ..errors import EncodingsFileError
from ..options import short_repr
from .blocks import block_axis_for, lpbq_compress, lpbq_scale
from .encoding import MAX_BITWIDTH, Encoding, parse_encoding
from .encodings_fields import bits, lpbq_effective, nested, output_dtype
from .encodings_floats import is_float_entries, parse_float_entries

__all__ = [
    "BLOCK_KEYS",
    "Blocks",
    "block_keys",
    "entry_blocks",
    "parse_entries",
    "check_lpbq",
    "positive_int",
    "lpbq_parts",
    "read_v1_lpbq",
    "read_v2_lpbq",
    "v1_block_item",
    "v2_block_item",
]

#: The keys a blockwise 0.6.1-layout entry carries on top of the 0.6.1 fields (see the module docstring).
BLOCK_KEYS = ("block_size", "block_axis", "num_blocks", "decompressed_bw")


@dataclass(frozen=True)
class Blocks:
    """The block keys of one tensor's entries (None: not given by the file)."""

    block_size: int
    block_axis: int | None = None
    num_blocks: int | None = None
    decompressed_bw: int | None = None

    def describe(self) -> str:
        """The setting in words, for messages.

        Example:
            >>> Blocks(32, 1, decompressed_bw=8).describe()
            'blocks of 32 input channels along axis 1, LPBQ decompressed_bw=8'
        """
        along = "" if self.block_axis is None else f" along axis {self.block_axis}"
        lpbq = "" if self.decompressed_bw is None else f", LPBQ decompressed_bw={self.decompressed_bw}"
        return f"blocks of {self.block_size} input channels{along}{lpbq}"


def block_keys(enc: Encoding) -> dict[str, int]:
    """The block keys of ``enc``'s 0.6.1-layout entries (empty for a per-tensor or per-channel encoding).

    Example:
        >>> block_keys(Encoding(4, True, torch.ones(3, 2), torch.full((3, 2), -8), 0, 16, 1))
        {'block_size': 16, 'block_axis': 1, 'num_blocks': 2}
    """
    if enc.block_size is None:
        return {}
    keys = {"block_size": enc.block_size} | ({} if enc.block_axis is None else {"block_axis": enc.block_axis})
    keys["num_blocks"] = int(enc.scale.shape[-1])
    return keys | ({} if enc.decompressed_bw is None else {"decompressed_bw": enc.decompressed_bw})


def positive_int(value: Any, label: str, field: str, least: int = 1) -> int:
    """``value`` if it is an integer of at least ``least``, else :class:`EncodingsFileError`.

    Example:
        >>> positive_int(32, "fc.weight", "block_size")
        32
    """
    if value is None:
        raise EncodingsFileError(f"{label}: missing field {field!r}, an integer of at least {least}")
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise EncodingsFileError(f"{label}: {field}={short_repr(value)} must be an integer of at least {least}")
    return value


def entry_blocks(entries: Any, label: str) -> Blocks | None:
    """The block keys shared by every entry of a 0.6.1-layout list (None when it has none).

    Example:
        >>> entry_blocks([{"block_size": 8, "num_blocks": 1}], "w")
        Blocks(block_size=8, block_axis=None, num_blocks=1, decompressed_bw=None)
    """
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        return None  # parse_encoding names what is wrong with the list
    found = [tuple(e.get(k) for k in BLOCK_KEYS) for e in entries]
    if all(v is None for v in found[0]) and all(f == found[0] for f in found):
        return None
    for i, f in enumerate(found):
        if f != found[0]:
            raise EncodingsFileError(
                f"{label} block {i}: block keys {dict(zip(BLOCK_KEYS, f))} differ from block 0's "
                f"{dict(zip(BLOCK_KEYS, found[0]))}; all blocks of one tensor share them"
            )
    size, axis, count, dbw = found[0]
    blocks = Blocks(
        positive_int(size, label, "block_size"),
        None if axis is None else positive_int(axis, label, "block_axis", least=0),
        None if count is None else positive_int(count, label, "num_blocks"),
        None if dbw is None else positive_int(dbw, label, "decompressed_bw"),
    )
    if blocks.num_blocks is not None and len(entries) % blocks.num_blocks:
        raise EncodingsFileError(
            f"{label}: {len(entries)} block entries do not split into channels of num_blocks={blocks.num_blocks}"
        )
    return blocks


def parse_entries(entries: Any, label: str) -> tuple[Encoding, Blocks | None]:
    """The encoding of one 0.6.1-layout entry list (every number checked by
    :func:`~leantorch.quant.encoding.parse_encoding`) and its block keys.

    A blockwise list gives one flat scale per block (the caller reshapes it to the weight's channels,
    the matching); LPBQ scales are checked against LPBQ's grid once the channels are known.

    Example:
        >>> entry = {"bitwidth": 8, "is_symmetric": "True", "scale": 0.5, "offset": -128, "min": -64.0, "max": 63.5}
        >>> parse_entries([entry], "x")[1] is None
        True
    """
    if is_float_entries(entries):  # float formats: no blocks (:mod:`.encodings_floats`)
        return parse_float_entries(entries, label), None
    enc = parse_encoding(entries, label)
    blocks = entry_blocks(entries, label)
    if blocks is None:
        return enc, None
    enc = replace(enc, scale=enc.scale.reshape(-1), offset=enc.offset.reshape(-1))
    if blocks.decompressed_bw is not None:
        _check_lpbq_setting(enc, blocks.decompressed_bw, label)
        if blocks.num_blocks is not None:
            check_lpbq(enc.scale.reshape(-1, blocks.num_blocks), enc.bitwidth, blocks.decompressed_bw, label)
    return enc, blocks


def _check_lpbq_setting(enc: Encoding, decompressed_bw: int, label: str) -> None:
    if not enc.bitwidth < decompressed_bw <= MAX_BITWIDTH:
        raise EncodingsFileError(
            f"{label}: decompressed_bw={decompressed_bw} with bitwidth {enc.bitwidth}: LPBQ decompresses to more "
            f"bits than it stores, at most {MAX_BITWIDTH} (e.g. 4-bit weights, decompressed_bw=8)"
        )
    if not enc.symmetric or bool((enc.offset != -(2 ** (enc.bitwidth - 1))).any()):
        raise EncodingsFileError(
            f"{label}: an LPBQ encoding needs the signed symmetric grid (is_symmetric true, every offset "
            f"{-(2 ** (enc.bitwidth - 1))}); recompute it with param_symmetric=True"
        )


def check_lpbq(scale: torch.Tensor, bitwidth: int, decompressed_bw: int, label: str) -> None:
    """Refuse block scales ``(C, n_blocks)`` that are not LPBQ's: an integer in ``[1, 2**(decompressed_bw -
    bitwidth)]`` times the channel's float scale, its largest block at the largest integer.

    Example:
        >>> check_lpbq(torch.tensor([[0.1, 1.6]]), 4, 8, "w")  # 1 and 16 times 0.1
        >>> check_lpbq(torch.tensor([[0.15, 1.6]]), 4, 8, "w")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        leantorch.errors.EncodingsFileError: w channel 0: block scales [0.15..., 1.6...] are not on LPBQ's grid...
    """
    float_scale, ints = lpbq_compress(scale, bitwidth, decompressed_bw)
    back = lpbq_scale(float_scale, ints)
    for c in range(scale.shape[0]):
        if not torch.equal(back[c], scale[c].to(torch.float32)):
            raise EncodingsFileError(
                f"{label} channel {c}: block scales {short_repr(scale[c].tolist())} are not on LPBQ's grid (an "
                f"integer in [1, {2 ** (decompressed_bw - bitwidth)}] times one float per channel, the largest "
                "block at the largest integer); recompute the encodings or write them as PER_BLOCK"
            )


def lpbq_parts(
    scales: list[float], num_blocks: int, bitwidth: int, decompressed_bw: int
) -> tuple[list[float], list[list[int]]]:
    """``(per_channel_float_scale (C,), per_block_int_scale (C, n_blocks))`` as lists, of flat block scales.

    Example:
        >>> lpbq_parts([0.5, 1.6], 2, 4, 8)
        ([0.10000000149011612], [[5, 16]])
    """
    block_scale = torch.tensor(scales, dtype=torch.float32).reshape(-1, num_blocks)
    float_scale, ints = lpbq_compress(block_scale, bitwidth, decompressed_bw)
    return float_scale.double().tolist(), ints.tolist()


# ---------------------------------------------------------------------------------------------- LPBQ items
def read_v1_lpbq(item: dict[str, Any], label: str) -> tuple[int, list[float], dict[str, int]]:
    """(bitwidth, flat effective block scales, block keys) of a 1.0.0 LPBQ item: ``bw`` is the decompressed
    bitwidth, ``compressed_bw`` the stored one, ``scale`` and ``offset`` one per channel (the float scale;
    ``-2**(bw-1)``), ``per_block_int_scale`` flat, channel-major.

    Example:
        >>> item = {"bw": 8, "compressed_bw": 4, "block_size": 16, "is_sym": True, "scale": [0.1], "offset": [-128],
        ...         "per_block_int_scale": [5, 16]}
        >>> read_v1_lpbq(item, "fc.weight")
        (4, [0.5, 1.600000023841858], {'block_size': 16, 'num_blocks': 2, 'decompressed_bw': 8})
    """
    missing = [
        f
        for f in ("bw", "is_sym", "scale", "offset", "compressed_bw", "block_size", "per_block_int_scale")
        if f not in item
    ]
    if missing:
        raise EncodingsFileError(
            f"{label}: missing field(s) {missing}; an LPBQ entry needs bw (decompressed), compressed_bw, "
            "block_size, is_sym, scale and offset (one per channel) and per_block_int_scale"
        )
    decompressed = bits(item["bw"], label, "bw")
    bitwidth = bits(item["compressed_bw"], label, "compressed_bw")
    block_size = positive_int(item["block_size"], label, "block_size")
    if bitwidth >= decompressed:
        raise EncodingsFileError(
            f"{label}: compressed_bw={bitwidth} must be below bw={decompressed} (LPBQ stores compressed_bw-bit "
            "weights and decompresses them to bw bits)"
        )
    if item["is_sym"] not in (True, "True", "true"):
        raise EncodingsFileError(f"{label}: is_sym={item['is_sym']!r}: LPBQ encodings are symmetric; use true")
    floats, offsets, ints = item["scale"], item["offset"], item["per_block_int_scale"]
    for field, values in (("scale", floats), ("offset", offsets), ("per_block_int_scale", ints)):
        if not isinstance(values, list) or not values:
            raise EncodingsFileError(f"{label}: {field}={short_repr(values)} must be a non-empty list")
    if len(offsets) != len(floats) or any(o != -(2 ** (decompressed - 1)) for o in offsets):
        raise EncodingsFileError(
            f"{label}: offset={short_repr(offsets)}: give one offset per channel scale ({len(floats)}), each "
            f"{-(2 ** (decompressed - 1))} (the signed symmetric grid of bw={decompressed})"
        )
    if len(ints) % len(floats):
        raise EncodingsFileError(
            f"{label}: {len(ints)} per_block_int_scale values do not split into the {len(floats)} channels of "
            "scale; give n_blocks integers per channel, channel-major"
        )
    count = len(ints) // len(floats)
    scales = lpbq_effective(floats, ints, count, bitwidth, decompressed, label)
    keys = {"block_size": block_size, "num_blocks": count, "decompressed_bw": decompressed}
    return bitwidth, scales, keys


def read_v2_lpbq(item: dict[str, Any], label: str) -> tuple[int, list[float], dict[str, int]]:
    """(bitwidth, flat effective block scales, block keys) of a 2.0.0 LPBQ item: ``int{bw}`` weights
    decompressed to ``2·bw`` bits (AIMET's rule for 2.0.0), one float scale per channel (``[[f], ...]``),
    ``per_block_int_scale`` nested ``(C, n_blocks)``, ``axis`` the block axis.

    Example:
        >>> item = {"output_dtype": "int4", "per_channel_float_scale": [[0.1]], "per_block_int_scale": [[5, 16]],
        ...         "axis": 1, "block_size": 16}
        >>> read_v2_lpbq(item, "fc.weight")[2]
        {'block_size': 16, 'block_axis': 1, 'num_blocks': 2, 'decompressed_bw': 8}
    """
    missing = [f for f in ("per_block_int_scale", "per_channel_float_scale", "block_size", "axis") if f not in item]
    if missing:
        raise EncodingsFileError(
            f"{label}: missing field(s) {missing}; an LPBQ entry needs output_dtype, per_channel_float_scale, "
            "per_block_int_scale, axis (the block axis) and block_size"
        )
    signed, bitwidth = output_dtype(item.get("output_dtype"), label)
    if not signed:
        raise EncodingsFileError(
            f"{label}: output_dtype={item['output_dtype']!r}: LPBQ weights are signed symmetric; use 'int{bitwidth}'"
        )
    decompressed = bits(2 * bitwidth, label, "decompressed bitwidth (2 × the output_dtype's)")
    block_size = positive_int(item["block_size"], label, "block_size")
    block_axis = positive_int(item["axis"], label, "axis (the block axis)", least=0)
    channels, count, ints = nested(item["per_block_int_scale"], label, "per_block_int_scale")
    floats = item["per_channel_float_scale"]
    if isinstance(floats, list):  # [[f0], [f1], ...] as AIMET writes it, or [f0, f1, ...]
        floats = [f[0] if isinstance(f, list) and len(f) == 1 else f for f in floats]
    if not isinstance(floats, list) or len(floats) != channels:
        raise EncodingsFileError(
            f"{label}: per_channel_float_scale={short_repr(item['per_channel_float_scale'])} must hold one scale "
            f"per channel of per_block_int_scale ({channels}), as [[f0], [f1], ...]"
        )
    points = item.get("y_zero_point")
    if points is not None and any(z != 0 for z in nested(points, label, "y_zero_point", (channels, count))[2]):
        raise EncodingsFileError(f"{label}: y_zero_point={short_repr(points)}: LPBQ grids are symmetric; drop it")
    scales = lpbq_effective(floats, ints, count, bitwidth, decompressed, label)
    keys = {"block_size": block_size, "block_axis": block_axis, "num_blocks": count, "decompressed_bw": decompressed}
    return bitwidth, scales, keys


# ---------------------------------------------------------------------------------------------- writing
def _rows(values: list[Any], blocks: Blocks, name: str) -> list[list[Any]]:
    count = blocks.num_blocks
    if count is None:  # entries made by Encoding.to_aimet + block_keys always carry it
        raise EncodingsFileError(f"{name}: blockwise entries without num_blocks cannot be written nested")
    return [values[i : i + count] for i in range(0, len(values), count)]


def v1_block_item(item: dict[str, Any], blocks: Blocks) -> dict[str, Any]:
    """The 1.0.0 ``PER_BLOCK`` or ``LPBQ`` item of a blockwise tensor from its flat ``PER_CHANNEL``-like item.

    Example:
        >>> item = {"name": "w", "enc_type": "PER_CHANNEL", "dtype": "INT", "bw": 4, "is_sym": True,
        ...         "scale": [0.5, 1.600000023841858], "offset": [-8, -8]}
        >>> lpbq = v1_block_item(item, Blocks(16, 1, 2, 8))
        >>> lpbq["enc_type"], lpbq["bw"], lpbq["compressed_bw"], lpbq["per_block_int_scale"]
        ('LPBQ', 8, 4, [5, 16])
    """
    if blocks.decompressed_bw is None:
        return item | {"enc_type": "PER_BLOCK", "block_size": blocks.block_size}
    bitwidth, decompressed = item["bw"], blocks.decompressed_bw
    floats, ints = lpbq_parts(item["scale"], len(_rows(item["scale"], blocks, item["name"])[0]), bitwidth, decompressed)
    return item | {
        "enc_type": "LPBQ",
        "bw": decompressed,
        "is_sym": True,
        "scale": floats,
        "offset": [-(2 ** (decompressed - 1))] * len(floats),
        "compressed_bw": bitwidth,
        "block_size": blocks.block_size,
        "per_block_int_scale": [v for row in ints for v in row],
    }


def v2_block_item(item: dict[str, Any], bitwidth: int, blocks: Blocks, channel_axis: int | None) -> dict[str, Any]:
    """The 2.0.0 blockwise or LPBQ item of a blockwise tensor from its flat per-channel item
    (``y_scale``/``y_zero_point`` one per block); ``axis`` becomes the block axis.

    LPBQ is written only where the decompressed bitwidth is twice the stored one, as 2.0.0 readers assume.

    Example:
        >>> item = {"name": "w", "output_dtype": "int4", "y_scale": [0.5, 1.600000023841858], "axis": 0}
        >>> v2_block_item(item, 4, Blocks(16, 1, 2), 0)
        {'name': 'w', 'output_dtype': 'int4', 'y_scale': [[0.5, 1.600000023841858]], 'axis': 1, 'block_size': 16}
    """
    name = item["name"]
    block_axis = blocks.block_axis if blocks.block_axis is not None else block_axis_for(channel_axis or 0)
    place = {"axis": block_axis, "block_size": blocks.block_size}
    scales = _rows(item["y_scale"], blocks, name)
    if blocks.decompressed_bw is None:
        points = {"y_zero_point": _rows(item["y_zero_point"], blocks, name)} if "y_zero_point" in item else {}
        return {"name": name, "output_dtype": item["output_dtype"], "y_scale": scales} | points | place
    if blocks.decompressed_bw != 2 * bitwidth:
        raise EncodingsFileError(
            f"{name}: LPBQ with bitwidth {bitwidth} and decompressed_bw={blocks.decompressed_bw}: version 2.0.0 has no "
            f"decompressed bitwidth field (readers take twice the stored one, {2 * bitwidth}); write "
            f"encodings_version='1.0.0', which carries it, or quantize with decompressed_bw={2 * bitwidth}"
        )
    floats, ints = lpbq_parts(item["y_scale"], len(scales[0]), bitwidth, blocks.decompressed_bw)
    lpbq = {"per_channel_float_scale": [[f] for f in floats], "per_block_int_scale": ints}
    return {"name": name, "output_dtype": f"int{bitwidth}"} | lpbq | place
