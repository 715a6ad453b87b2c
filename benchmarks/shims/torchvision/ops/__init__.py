"""``torchvision.ops`` of the benchmark shim: only ``misc.FrozenBatchNorm2d`` (see ``torchvision/__init__.py``)."""

from __future__ import annotations

from typing import Any

from . import misc
from .misc import FrozenBatchNorm2d

__all__ = ["FrozenBatchNorm2d", "misc"]


def __getattr__(name: str) -> Any:
    raise ImportError(f"torchvision.ops.{name} is not available: this `torchvision` is leantorch's benchmark shim")
