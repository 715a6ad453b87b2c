"""Field checks of the AIMET 1.0.0 and 2.0.0 encodings formats (:mod:`.encodings_formats`): output dtypes,
bit counts, scales and zero points, each refused with an :class:`~leantorch.errors.EncodingsFileError` that names
the entry, the field and what is accepted.

Example:
    >>> output_dtype("uint8", "x")
    (False, 8)
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from ..errors import EncodingsFileError
from ..options import short_repr
from .blocks import lpbq_scale
from .encoding import FLOAT_BITWIDTH, MAX_BITWIDTH, MIN_BITWIDTH, MIN_SCALE

__all__ = ["output_dtype", "bits", "check_scale", "zero_points", "nested", "lpbq_effective"]

_FLOAT32_MAX = 3.4028234663852886e38


def output_dtype(dtype: Any, label: str) -> tuple[bool, int]:
    """(signed, bits) of ``int{bits}`` / ``uint{bits}``."""
    if isinstance(dtype, str) and dtype.startswith("float"):
        raise EncodingsFileError(
            f"{label}: output_dtype={dtype!r} is a float type, read by encodings_floats.v2_float_entries "
            "('float16', 'bfloat16', 'float8e4m3fn', 'float8e5m2'); here an integer type is expected"
        )
    match = re.fullmatch(r"(u?)int(\d+)", dtype) if isinstance(dtype, str) else None
    if match is None:
        raise EncodingsFileError(
            f"{label}: output_dtype={short_repr(dtype)} is not an integer type; use "
            "'int<bits>' or 'uint<bits>' (e.g. 'int8', 'uint8', 'uint16')"
        )
    return not match[1], bits(int(match[2]), label, "output_dtype", dtype)


def bits(value: Any, label: str, field: str, shown: Any = None) -> int:
    """``value`` if it is a simulated bitwidth (2..16); ``shown`` is the field's value as written."""
    shown = value if shown is None else shown
    if isinstance(value, bool) or not isinstance(value, int):
        raise EncodingsFileError(
            f"{label}: {field}={shown!r} is not supported: use an integer from {MIN_BITWIDTH} to {MAX_BITWIDTH}"
        )
    if value == FLOAT_BITWIDTH:
        raise EncodingsFileError(
            f"{label}: {field}={shown!r}: 32-bit encodings (e.g. of biases) have no simulated "
            "integer grid; drop the entry to keep the tensor in float"
        )
    if not MIN_BITWIDTH <= value <= MAX_BITWIDTH:
        raise EncodingsFileError(
            f"{label}: {field}={shown!r}: {value}-bit encodings are not supported; use "
            f"{MIN_BITWIDTH} to {MAX_BITWIDTH} bits"
        )
    return value


def check_scale(value: Any, label: str, field: str = "y_scale") -> None:
    """Refuse a scale that is not a finite number in ``[MIN_SCALE, float32 max]``.

    Example:
        >>> check_scale(0.5, "x")
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (math.isfinite(value) and MIN_SCALE <= value <= _FLOAT32_MAX):
        raise EncodingsFileError(
            f"{label}: {field}={value!r} is not a valid scale: a finite number of at least "
            f"{MIN_SCALE} that fits float32; recompute the encodings or correct the entry"
        )


def zero_points(raw: Any, count: int, per_channel: bool, label: str) -> list[int]:
    """Integer zero points of ``y_zero_point`` (``count`` of them; 0 when absent).

    Example:
        >>> zero_points(None, 2, True, "w"), zero_points(3, 1, False, "x")
        ([0, 0], [3])
    """
    if raw is None:
        return [0] * count
    values = raw if isinstance(raw, list) else [raw]
    if isinstance(raw, list) != per_channel or len(values) != count:
        raise EncodingsFileError(
            f"{label}: y_zero_point={short_repr(raw)} does not match y_scale: give one zero "
            f"point per scale ({'a list of ' + str(count) if per_channel else 'a number'}), "
            "or leave it out for zero"
        )
    out = []
    for z in values:
        ok = isinstance(z, (int, float)) and not isinstance(z, bool) and math.isfinite(z)
        if not ok or z != round(z):
            raise EncodingsFileError(
                f"{label}: y_zero_point={z!r} is not an integer (fractional zero points of "
                "2-bit custom grids are not supported yet)"
            )
        out.append(int(z))
    return out


def nested(value: Any, label: str, field: str, shape: tuple[int, int] | None = None) -> tuple[int, int, list[Any]]:
    """``(rows, columns, flat values)`` of a field nested one list per channel (blockwise 2.0.0 entries: one
    value per block), every row as long as the first (and the whole of ``shape`` when given).

    Example:
        >>> nested([[1, 2], [3, 4]], "fc.weight", "per_block_int_scale")
        (2, 2, [1, 2, 3, 4])
    """
    ok = isinstance(value, list) and bool(value) and all(isinstance(r, list) and r for r in value)
    rows: list[list[Any]] = value if ok else []
    ok = ok and all(len(r) == len(rows[0]) and not any(isinstance(v, list) for v in r) for r in rows)
    if ok and shape is not None:
        ok = (len(rows), len(rows[0])) == shape
    if not ok:
        want = f"{shape[0]} lists of {shape[1]}" if shape else "one non-empty list per channel, all of one length"
        raise EncodingsFileError(f"{label}: {field}={short_repr(value)} must be nested lists: {want} (one per block)")
    return len(rows), len(rows[0]), [v for r in rows for v in r]


def lpbq_effective(
    float_scales: Any, int_scales: Any, num_blocks: int, bitwidth: int, decompressed_bw: int, label: str
) -> list[float]:
    """The flat effective block scales of LPBQ's parts as a file gives them (``C`` floats, ``C · n_blocks``
    integers channel-major), every number checked.

    Example:
        >>> lpbq_effective([0.1], [5, 16], 2, 4, 8, "fc.weight")
        [0.5, 1.600000023841858]
    """
    levels = 2 ** (decompressed_bw - bitwidth)
    for c, f in enumerate(float_scales):
        check_scale(f, f"{label} channel {c}", "per_channel_float_scale")
    channels = len(float_scales)
    if len(int_scales) != channels * num_blocks:
        raise EncodingsFileError(
            f"{label}: {len(int_scales)} per_block_int_scale values for {channels} channels of {num_blocks} "
            f"blocks; give {channels * num_blocks}, channel-major"
        )
    for i, v in enumerate(int_scales):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != round(v) or not 1 <= v <= levels:
            raise EncodingsFileError(
                f"{label} channel {i // num_blocks} block {i % num_blocks}: per_block_int_scale={short_repr(v)} "
                f"must be an integer in [1, {levels}] (2**(decompressed_bw - bitwidth))"
            )
    ints = torch.tensor([int(v) for v in int_scales], dtype=torch.int64).reshape(channels, num_blocks)
    for c in range(channels):
        if int(ints[c].max()) != levels:
            raise EncodingsFileError(
                f"{label} channel {c}: the largest per_block_int_scale is {int(ints[c].max())}, not {levels}: "
                "leantorch keeps LPBQ scales as AIMET computes them (the float scale is the channel's largest "
                "block scale over 2**(decompressed_bw - bitwidth)); rescale the channel's float scale and integers"
            )
    effective: list[float] = lpbq_scale(torch.tensor(float_scales, dtype=torch.float64), ints).reshape(-1).tolist()
    return effective
