"""Checks of option values (flags, counts, rates), shared by every entry point so that a bad value is refused
before any work, with one kind of error (:class:`~leantorch.errors.InvalidOptionError`) and one message style:
``name=value: what is accepted``.

Python's own coercions are what these checks exist to stop: ``per_channel="no"`` is truthy, ``range(0)``
runs zero iterations without a word, and ``lr=nan`` only fails deep inside an optimizer.

Example:
    >>> check_count("iterations", 0)
    Traceback (most recent call last):
    ...
    leantorch.errors.InvalidOptionError: iterations=0: pass a whole number ≥ 1
    >>> check_positive("lr", 1e-3)
    0.001
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import numpy as np

from .errors import InvalidOptionError

__all__ = [
    "with_overrides",
    "unknown_layers_message",
    "check_flag",
    "check_count",
    "check_positive",
    "check_fraction",
    "check_choice",
    "as_names",
    "short_repr",
    "name_list",
]

_Config = TypeVar("_Config")


def with_overrides(cls: type[_Config], options: _Config | None, overrides: Mapping[str, Any], what: str) -> _Config:
    """The frozen config an algorithm runs with: ``options`` (or ``cls()``) with the keyword ``overrides``
    applied. The keyword API of each algorithm is this thin layer over its config class, so a config is
    checked in one place (its ``__post_init__``) however it was given.

    Raises:
        InvalidOptionError: ``options`` is not a ``cls``, or an override is not one of its fields (lists them).

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class Demo:
        ...     steps: int = 10
        >>> with_overrides(Demo, None, {"steps": 3}, "demo")
        Demo(steps=3)
        >>> with_overrides(Demo, Demo(5), {"step": 3}, "demo")
        Traceback (most recent call last):
        ...
        leantorch.errors.InvalidOptionError: demo: unknown option(s) step: use steps
    """
    if options is not None and not isinstance(options, cls):
        raise InvalidOptionError(
            f"{what}: options={short_repr(options)} is a {type(options).__name__}: pass a {cls.__name__} "
            "(or keyword options)"
        )
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]  # cls is a dataclass
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise InvalidOptionError(f"{what}: unknown option(s) {', '.join(unknown)}: use {', '.join(names)}")
    base = options if options is not None else cls()
    return dataclasses.replace(base, **overrides)  # type: ignore[type-var]  # base is a dataclass instance


def check_flag(name: str, value: Any, allow_none: bool = False) -> bool | None:
    """``value`` if it is a bool (or None when ``allow_none``), else :class:`InvalidOptionError`."""
    if isinstance(value, (bool, np.bool_)):  # numpy's bool (e.g. from a comparison of arrays) is a flag too
        return bool(value)
    if allow_none and value is None:
        return None
    allowed = "True, False or None" if allow_none else "True or False"
    raise InvalidOptionError(f"{name}={value!r}: pass {allowed} (a {type(value).__name__} is not a flag)")


def check_count(name: str, value: Any, minimum: int = 1, hint: str = "") -> int:
    """``value`` if it is a whole number ≥ ``minimum`` (``True`` is not a count), else InvalidOptionError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InvalidOptionError(f"{name}={value!r}: pass a whole number ≥ {minimum}{hint}")
    return int(value)


def check_positive(name: str, value: Any, allow_zero: bool = False, hint: str = "") -> float:
    """``value`` if it is a finite real number > 0 (≥ 0 with ``allow_zero``), else InvalidOptionError."""
    ok = _is_real(value) and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise InvalidOptionError(f"{name}={value!r}: pass a finite number {'≥' if allow_zero else '>'} 0{hint}")
    return float(value)


def check_fraction(name: str, value: Any, hint: str = "") -> float:
    """``value`` if it is a real number in ``[0, 1]``, else InvalidOptionError."""
    if not (_is_real(value) and 0.0 <= value <= 1.0):
        raise InvalidOptionError(f"{name}={value!r}: pass a fraction in [0, 1]{hint}")
    return float(value)


def check_ratios(name: str, value: Any) -> tuple[float, ...]:
    """``value`` as a tuple if it is a sequence of real numbers in ``(0, 1]`` (empty allowed), else
    InvalidOptionError.

    Example:
        >>> check_ratios("clip_ratios", [1.0, 0.9])
        (1.0, 0.9)
        >>> check_ratios("clip_ratios", (1.0, 0.0))
        Traceback (most recent call last):
        ...
        leantorch.errors.InvalidOptionError: clip_ratios=(1.0, 0.0): pass ratios in (0, 1], e.g. (1.0, 0.9, 0.8)
    """
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise InvalidOptionError(f"{name}={value!r}: pass a sequence of ratios in (0, 1], e.g. (1.0, 0.9, 0.8)")
    ratios = tuple(value)
    if not all(_is_real(r) and 0.0 < r <= 1.0 for r in ratios):
        raise InvalidOptionError(f"{name}={value!r}: pass ratios in (0, 1], e.g. (1.0, 0.9, 0.8)")
    return tuple(float(r) for r in ratios)


def check_choice(name: str, value: Any, choices: tuple) -> Any:
    """``value`` if it is one of ``choices``, else InvalidOptionError listing them.

    Example:
        >>> check_choice("optimizer", "rmsprop", ("adam", "sgd"))
        Traceback (most recent call last):
        ...
        leantorch.errors.InvalidOptionError: optimizer='rmsprop': use one of 'adam', 'sgd'
    """
    if value not in choices:
        raise InvalidOptionError(f"{name}={value!r}: use one of {', '.join(map(repr, choices))}")
    return value


def as_names(name: str, value: str | Iterable[str]) -> list[str]:
    """Layer names from one name or an iterable of names: a string is one name, not a sequence of letters.

    Example:
        >>> as_names("layers", "stem.0"), as_names("layers", ("a", "b"))
        (['stem.0'], ['a', 'b'])
    """
    if isinstance(value, str):
        return [value]
    try:
        names = list(value)
    except TypeError:
        raise InvalidOptionError(f"{name}={value!r}: pass a layer name or a list of layer names") from None
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise InvalidOptionError(f"{name}={value!r}: layer names are strings, got {bad[:3]!r}")
    return names


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` on one line, cut to ``limit`` characters, for error messages that quote a bad value.

    Example:
        >>> short_repr(list(range(100)))[-10:]
        ' 20, 21...'
        >>> short_repr("ok")
        "'ok'"
    """
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def name_list(names: list[str], limit: int = 30) -> str:
    """Names for an error message: all of them, or the first ``limit`` and how many more.

    Example:
        >>> name_list([f"layer{i}" for i in range(40)], limit=2)
        'layer0, layer1, … (38 more)'
    """
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, … ({len(names) - limit} more)"


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def unknown_layers_message(missing: list[str], valid: list[str]) -> str:
    """Name the unknown layers, suggest close names, and show some valid ones.

    Example:
        >>> unknown_layers_message(["conv"], ["conv1", "fc"])  # doctest: +ELLIPSIS
        "no such layer(s) ['conv'] ('conv': did you mean 'conv1'?); valid names include ['conv1', 'fc'] — ..."
    """
    hints = {n: difflib.get_close_matches(n, valid, n=1) for n in missing[:5]}
    suggestions = "; ".join(f"{n!r}: did you mean {h[0]!r}?" for n, h in hints.items() if h)
    return (
        f"no such layer(s) {missing[:5]}{' …' if len(missing) > 5 else ''}"
        f"{' (' + suggestions + ')' if suggestions else ''}; valid names include {valid[:8]} — see "
        f"sim.layers() for all {len(valid)}"
    )
