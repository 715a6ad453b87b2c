"""One registry implementation for every extension point that is chosen by name: auto_quant stages, export
formats, compression schemes. (Op types have their own registry in :mod:`leantorch.ops`, keyed by module
class; range estimators theirs in :mod:`leantorch.quant.schemes`, with aliases.)

Example:
    >>> formats = Registry("format", "export format")
    >>> _ = formats.add("csv", print)
    >>> formats.names()
    ('csv',)
    >>> formats.get("tsv")
    Traceback (most recent call last):
    ...
    leantorch.errors.InvalidOptionError: format='tsv': use one of csv
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from .errors import ConfigError, InvalidOptionError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Items by name, in registration order (built-ins first).

    Args:
        option: how an unknown name is shown (``"format"`` → ``format='x'``; with a space, ``"auto_quant stage"``
            → ``auto_quant stage 'x'``).
        kind: what an item is, for the "already registered" message.
    """

    def __init__(self, option: str, kind: str) -> None:
        self.option, self.kind = option, kind
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        """Register ``item`` as ``name``; returns it. :class:`ConfigError` if the name is empty or taken."""
        if not name or name in self._items:
            raise ConfigError(f"{self.kind} {name!r} is empty or already registered: pick another name")
        self._items[name] = item
        return item

    def remove(self, name: str) -> None:
        """Unregister ``name`` (tests add toy items and take them away again)."""
        del self._items[name]

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._items)

    def get(self, name: Any) -> T:
        """The item called ``name``; :class:`InvalidOptionError` listing the names otherwise."""
        if not isinstance(name, str) or name not in self._items:
            shown = f"{self.option} {name!r}" if " " in self.option else f"{self.option}={name!r}"
            raise InvalidOptionError(f"{shown}: use one of {', '.join(self._items)}")
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items
