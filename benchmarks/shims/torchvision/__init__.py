"""A stand-in for ``torchvision`` so that ``import timm`` works where torchvision cannot be imported.

Why it exists: timm's models need one thing from torchvision, ``torchvision.ops.misc.FrozenBatchNorm2d``
(imported at module level by ``timm/layers/create_norm.py``, ``norm_act.py`` and ``utils/model.py``), but the
only torchvision wheels on the benchmark machines are CUDA builds that fail to import against the CPU build of
torch, and timm imports torchvision unconditionally. ``benchmarks/coverage.py`` puts ``benchmarks/shims`` on
``sys.path`` only when ``import timm`` failed because torchvision is missing, so a real torchvision always wins.

What it provides:

- ``torchvision.ops.misc.FrozenBatchNorm2d``: a faithful copy (same buffers, forward and state-dict loading);
- ``torchvision.transforms`` (and its submodules) and ``torchvision.datasets``: importable placeholders, because
  ``timm.data`` imports them at module level (``class MaybeToTensor(transforms.ToTensor)``, a dict keyed by
  ``InterpolationMode.*``) and every timm model module imports ``timm.data``. Any attribute is a placeholder
  class that raises ``ImportError`` when it is called or instantiated: timm's data pipeline does not work;
- anything else (``torchvision.models``, ``torchvision.utils``, ``torchvision.io``, ...): importing it raises
  ``ImportError`` saying this is a shim (timm's optional feature extraction catches exactly that).

Example::

    >>> import sys; sys.path.insert(0, "benchmarks/shims")  # doctest: +SKIP
    >>> from torchvision.ops.misc import FrozenBatchNorm2d  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Sequence
from typing import Any

__all__ = ["SHIM", "__version__"]

SHIM = True  # lets callers tell this stand-in from the real package
__version__ = "0.0.0+leantorch.shim"
_WHY = "is not available: `torchvision` here is leantorch's benchmark shim (benchmarks/shims/torchvision)"
# Imported by timm.data at module level; their attributes are placeholders that fail only when used.
_PLACEHOLDER_PACKAGES = ("torchvision.transforms", "torchvision.datasets")


class _PlaceholderMeta(type):
    """Class-level attribute access (``InterpolationMode.NEAREST``) yields more placeholders."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder(f"{cls.__qualname__}.{name}")

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise ImportError(f"torchvision.{cls.__qualname__} {_WHY}; install a torchvision that matches torch")


@functools.cache
def _placeholder(name: str) -> type:
    # A class (not an instance) so that timm can subclass it: `class MaybeToTensor(transforms.ToTensor)`; one per
    # name, so that `InterpolationMode.NEAREST` is the same key every time it is read.
    return _PlaceholderMeta(name.rpartition(".")[2], (), {"__qualname__": name, "__module__": "torchvision"})


class _PlaceholderModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder(f"{self.__name__.removeprefix('torchvision.')}.{name}")


class _ShimFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the placeholder modules and refuses every other torchvision submodule with a clear message."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("torchvision.") or fullname.startswith("torchvision.ops"):
            return None  # the package itself and its real files (ops, ops.misc)
        if not getattr(sys.modules.get("torchvision"), "SHIM", False):
            return None  # a real torchvision was imported after all: never shadow its modules
        if fullname.startswith(_PLACEHOLDER_PACKAGES):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        raise ImportError(f"{fullname} {_WHY}", name=fullname)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _PlaceholderModule(spec.name)
        module.__path__ = []  # a package: `import torchvision.transforms.functional` works
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


if not any(isinstance(f, _ShimFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _ShimFinder())


def __getattr__(name: str) -> Any:
    # `from torchvision import transforms` looks for an attribute first: answer as importing the submodule does
    # (a placeholder package, or the clear refusal for `models`, `io`, ...).
    if name.startswith("__"):
        raise AttributeError(name)
    return importlib.import_module(f"torchvision.{name}")
