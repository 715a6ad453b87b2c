"""Argument types of the ``leantorch`` command: each turns the text of one option into its value or raises
``argparse.ArgumentTypeError`` with a message that names what is accepted.

Example:
    >>> positive_int("3"), bitwidth("8")
    (3, 8)
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from .errors import OutputPathError
from .paths import check_file_name
from .quant.encoding import FLOAT_BITWIDTH, MAX_BITWIDTH, MIN_BITWIDTH

__all__ = [
    "positive_int",
    "bitwidth",
    "positive_float",
    "non_negative_float",
    "open_unit_interval",
    "ratio_list",
    "file_name",
    "path_text",
    "html_path",
]


# ---------------------------------------------------------------------------------------------- argument types
# argparse calls these on the option's text; an ArgumentTypeError becomes "argument --x: <message>".
def _number(text: str, kind: Callable[[str], float], what: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def positive_int(text: str) -> int:
    """An integer ≥ 1 (sample counts, sizes, iterations)."""
    value = int(_number(text, int, "an integer"))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def bitwidth(text: str) -> int:
    """2–16, or 32 for "keep in floating point" (as ``check_bitwidth``)."""
    value = int(_number(text, int, "an integer"))
    if not (MIN_BITWIDTH <= value <= MAX_BITWIDTH or value == FLOAT_BITWIDTH):
        raise argparse.ArgumentTypeError(
            f"{value} is not supported: use {MIN_BITWIDTH} to {MAX_BITWIDTH}, "
            f"or {FLOAT_BITWIDTH} to keep floating point"
        )
    return value


def positive_float(text: str) -> float:
    value = _number(text, float, "a number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float, "a number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number ≥ 0, got {text}")
    return value


def ratio_list(text: str) -> tuple[float, ...]:
    """Comma-separated numbers in ``(0, 1]``, e.g. ``1,0.9,0.8``.

    Example:
        >>> ratio_list("1,0.85")
        (1.0, 0.85)
    """
    values = tuple(_number(part.strip(), float, "comma-separated numbers") for part in text.split(","))
    if not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"each ratio must be in (0, 1] (e.g. 1,0.9,0.8), got {text}")
    return values


def open_unit_interval(text: str) -> float:
    value = _number(text, float, "a number")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1 (e.g. 0.5 keeps half the MACs), got {text}")
    return value


def file_name(text: str) -> str:
    """A plain file name (the rule of :func:`leantorch.paths.check_file_name`): the directory is given by --out."""
    try:
        return check_file_name(text, "--name")
    except OutputPathError:
        raise argparse.ArgumentTypeError(
            f"must be a plain file name without a directory part (that is --out), got {text!r}"
        ) from None


def path_text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def html_path(text: str) -> str:
    if not path_text(text).lower().endswith((".html", ".htm")):
        raise argparse.ArgumentTypeError(f"must be an .html file path, got {text!r}")
    return text
