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

from ..errors import EncodingsFileError
from ..options import short_repr
from .encoding import FLOAT_BITWIDTH, MAX_BITWIDTH, MIN_BITWIDTH, MIN_SCALE

__all__ = ["output_dtype", "bits", "check_scale", "zero_points"]

_FLOAT32_MAX = 3.4028234663852886e38


def output_dtype(dtype: Any, label: str) -> tuple[bool, int]:
    """(signed, bits) of ``int{bits}`` / ``uint{bits}``."""
    if isinstance(dtype, str) and dtype.startswith("float"):
        raise EncodingsFileError(
            f"{label}: output_dtype={dtype!r}: float encodings are not supported yet; only "
            "integer ('int8', 'uint8', ...) encodings can be loaded — drop the entry to keep "
            "the tensor in float"
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


def check_scale(value: Any, label: str) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (math.isfinite(value) and MIN_SCALE <= value <= _FLOAT32_MAX):
        raise EncodingsFileError(
            f"{label}: y_scale={value!r} is not a valid scale: a finite number of at least "
            f"{MIN_SCALE} that fits float32; recompute the encodings or correct the entry"
        )


def zero_points(raw: Any, count: int, per_channel: bool, label: str) -> list[int]:
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
