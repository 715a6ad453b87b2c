"""Type checks of QuantSimConfig values: a JSON config is user input, and a wrong type (``"False"``, a misspelt op
type, a bitwidth of 7.5) must fail with the key named instead of silently meaning something else."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from ..errors import ConfigError, InvalidOptionError
from ..ops import OP_TYPE_NAMES
from ..options import short_repr
from .encoding import FLOAT_BITWIDTH, MAX_BITWIDTH, MIN_BITWIDTH
from .float_formats import check_float_format

__all__ = ["BOOL_KEYS", "check_bool", "check_rule_bitwidth", "check_block_count", "check_op_type", "check_rule"]

BOOL_KEYS = (
    "output_quantized",
    "input_quantized",
    "params_quantized",
    "quantize_bias",
    "param_symmetric",
    "activation_symmetric",
    "unsigned_symmetric",
    "per_channel",
    "model_input_quantized",
)


def check_bool(key: str, value: Any, allow_none: bool = False) -> None:
    """A JSON boolean, not a string or number that Python would take as one ("False" is truthy)."""
    if isinstance(value, bool) or (allow_none and value is None):
        return
    allowed = "true, false or null" if allow_none else "true or false"
    raise ConfigError(
        f"config key '{key}' is {short_repr(value)} (a {type(value).__name__}); it must be {allowed} "
        "(a JSON boolean, not a string or a number)"
    )


def check_rule_bitwidth(key: str, value: Any) -> None:
    """An op rule's ``act_bw`` or ``param_bw``: null or a bitwidth QuantSim supports."""
    if value is None:
        return
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok or not (MIN_BITWIDTH <= value <= MAX_BITWIDTH or value == FLOAT_BITWIDTH):
        raise ConfigError(
            f"config key '{key}' is {short_repr(value)}; it must be null or a bitwidth: an integer from "
            f"{MIN_BITWIDTH} to {MAX_BITWIDTH}, or {FLOAT_BITWIDTH} to keep the tensor float"
        )


def check_block_count(key: str, value: Any, zero: bool = False) -> None:
    """A block size: null or a positive integer (0 too where it means "per channel")."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= (0 if zero else 1)):
        return
    raise ConfigError(
        f"config key '{key}' is {short_repr(value)}; it must be null or a positive integer (input channels per "
        f"weight block, e.g. 32){' or 0 (per channel)' if zero else ''}"
    )


def check_op_type(op: Any, where: str) -> None:
    """Op type names come from :func:`leantorch.graph.op_type`; a misspelt one would silently match nothing."""
    if op not in OP_TYPE_NAMES:
        raise ConfigError(
            f"{where}: unknown op type {short_repr(op)}; known op types: {', '.join(sorted(OP_TYPE_NAMES))}"
        )


def check_rule(where: str, rule: Any) -> None:
    """An OpRule's fields (``where``: ``op_types.Conv`` or ``layers.fc``): flags true/false/null, bitwidths, block
    size, float format (normalised in place).

    Example:
        >>> from leantorch.quant.config import OpRule
        >>> check_rule("layers.fc", OpRule(param_bw=7.5))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        leantorch.errors.ConfigError: config key 'layers.fc.param_bw' is 7.5; it must be null or a bitwidth: ...
    """
    for f in fields(rule):
        if f.name not in ("act_bw", "param_bw", "param_block_size", "decompressed_bw", "float_format"):
            check_bool(f"{where}.{f.name}", getattr(rule, f.name), allow_none=True)
    check_rule_bitwidth(f"{where}.act_bw", rule.act_bw)
    check_rule_bitwidth(f"{where}.param_bw", rule.param_bw)
    check_block_count(f"{where}.param_block_size", rule.param_block_size, zero=True)
    if rule.decompressed_bw != 0:  # 0: no LPBQ for these weights
        check_rule_bitwidth(f"{where}.decompressed_bw", rule.decompressed_bw)
    if rule.float_format is not None:
        try:
            rule.float_format = check_float_format(rule.float_format)
        except InvalidOptionError as exc:
            raise ConfigError(f"{where}.float_format: {exc}") from exc
