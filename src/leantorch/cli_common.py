"""What the ``leantorch`` subcommands share: building the model from ``--model``, loading and checking ``--data``
against it, checking layer names, and filling quick/thorough defaults.

Example:
    >>> type(load_model("leantorch.models:ResNetSmall")).__name__
    'ResNetSmall'
"""

from __future__ import annotations

import argparse
import importlib
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .data import channels_last, check_model_accepts, load_data
from .errors import DataError, InvalidOptionError, NonFiniteModelError, UnknownLayerError
from .graph_checks import check_finite

__all__ = ["load_model", "model_and_data", "check_names", "fill_defaults", "MAX_NAMES"]

#: At most this many names of each kind in a message (a model may have hundreds of layers).
MAX_NAMES = 30


# ---------------------------------------------------------------------------------------------- model + data
def load_model(spec: str) -> nn.Module:
    """Build a model from ``package.module:factory`` (the factory is called without arguments).

    Raises:
        InvalidOptionError: the spec is malformed or names nothing importable.
        NonFiniteModelError: a parameter or buffer of the model holds NaN or Inf.

    Example:
        >>> type(load_model("leantorch.models:ResNetSmall")).__name__
        'ResNetSmall'
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InvalidOptionError(f"--model must look like package.module:factory, got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise InvalidOptionError(f"--model {spec}: cannot load it ({exc})") from exc
    check_factory(factory, spec)
    model = factory()
    if not isinstance(model, nn.Module):
        raise InvalidOptionError(f"--model {spec} returned {type(model).__name__}, not a torch.nn.Module")
    try:  # NaN/Inf weights make every later number meaningless: name them now, before any long work
        check_finite(model, ())
    except NonFiniteModelError as exc:
        raise NonFiniteModelError(f"--model {spec}: {exc}") from exc
    return model.eval()


def check_factory(factory: object, spec: str) -> None:
    """The factory must be callable without arguments; a TypeError from inside it is the model's own."""
    if not callable(factory):
        raise InvalidOptionError(
            f"--model {spec} is a {type(factory).__name__}, not a function or class: name "
            "a factory that returns an nn.Module"
        )
    try:
        inspect.signature(factory).bind()
    except TypeError as exc:
        raise InvalidOptionError(
            f"--model {spec} cannot be called without arguments ({exc}): name a factory "
            "whose arguments all have defaults, or write one that supplies them"
        ) from exc
    except ValueError:  # no signature to inspect (some builtins): let the call itself decide
        pass


def model_and_data(args: argparse.Namespace, count: int, error: type[DataError]) -> tuple[nn.Module, torch.Tensor]:
    """The model and up to ``count`` samples of ``--data``, checked: finite, and the model runs on them."""
    model = load_model(args.model)
    data = load_data(args.data, count, args.image_size, error)
    check_model_accepts(model, data, f"--data {args.data}", error)
    return channels_last(model, data)


def check_names(option: str, names: Sequence[str], valid: Sequence[str]) -> None:
    """Every name must be in ``valid``; the message lists at most :data:`MAX_NAMES` of each (a model may
    have hundreds of layers)."""
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise UnknownLayerError(f"{option}: no layer named {some(unknown)}; choose from {some(valid)}")


def some(names: Sequence[str]) -> str:
    """The first :data:`MAX_NAMES` names, then how many there are in all."""
    shown = ", ".join(names[:MAX_NAMES])
    return shown + (f", … ({len(names)} in all)" if len(names) > MAX_NAMES else "")


def fill_defaults(args: argparse.Namespace, defaults: dict[str, Any], thorough: dict[str, Any]) -> None:
    """Options left unset take the quick default, or the slow one with --thorough; given values win over both."""
    for key, value in (thorough if args.thorough else defaults).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
