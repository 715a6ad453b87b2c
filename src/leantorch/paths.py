"""Output locations, checked before any work, and files written so that a failure leaves nothing behind.

Every API function that writes files (``QuantSim.export``, ``AnalysisReport.to_html``/``save_plots``,
``lt.adaround``, ``lt.compress``'s eval-score cache) checks its destination first with these functions, so a
location that cannot be written is reported at once (:class:`~leantorch.errors.OutputPathError`) rather
than after minutes of work, and never as a raw ``FileExistsError`` or ``IsADirectoryError``. The files
themselves are written through :func:`leantorch.staging.staged_outputs` (hidden temporary names on the same
file system, renamed into place only when all of them were written).

Example:
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> check_directory(root / "new" / "dir") == root / "new" / "dir"
    True
    >>> check_file_name("a/b")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    leantorch.errors.OutputPathError: filename_prefix='a/b': give a plain file name ...
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import InvalidOptionError, OutputPathError

__all__ = ["check_file_name", "check_directory", "check_file", "writing", "existing_ancestor"]


def check_file_name(value: Any, what: str = "filename_prefix") -> str:
    """``value`` if it is a plain, non-empty file name (no directory part), else a typed error.

    Raises:
        InvalidOptionError: not a string (``None`` would otherwise become a file called ``None.onnx``).
        OutputPathError: empty, ``.``/``..``, or with a path separator or a NUL character.
    """
    if not isinstance(value, str):
        raise InvalidOptionError(f"{what}={value!r}: pass a file name, a string such as 'model'")
    separators = [s for s in (os.sep, os.altsep, "/") if s]
    if not value.strip() or value in (".", "..") or "\0" in value or any(s in value for s in separators):
        raise OutputPathError(
            f"{what}={value!r}: give a plain file name such as 'model' (not empty, no directory "
            "part: put directories in the path argument)"
        )
    return value


def check_directory(path: Any, what: str = "path") -> Path:
    """``path`` as a Path if it is, or can be created as, a writable directory; else OutputPathError.

    Nothing is created: the nearest existing ancestor must be a directory this process may write in.
    """
    out = _as_path(path, what)
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"{what} {out} is an existing file, not a directory: choose another path")
    ancestor = existing_ancestor(out)
    if not ancestor.is_dir():
        raise OutputPathError(f"{what} {out}: {ancestor} is a file, so no directory can be made there")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} {out}: no permission to write in {ancestor}")
    return out


def check_file(path: Any, what: str = "path", example: str = "report.html") -> Path:
    """``path`` as a Path if a file can be written there (its directory may be created); else OutputPathError.

    ``example`` is the file name suggested when ``path`` is a directory.
    """
    out = _as_path(path, what)
    if out.is_dir():
        raise OutputPathError(f"{what} {out} is a directory: give a file path, e.g. {out / example}")
    if not out.name:
        raise OutputPathError(f"{what} {str(path)!r}: give a file path")
    parent = out.parent
    if parent.exists() and not parent.is_dir():
        raise OutputPathError(f"{what} {out}: {parent} is a file, so {out.name} cannot be created in it")
    check_directory(parent, what=f"{what} {out}: its directory")
    return out


@contextlib.contextmanager
def writing(where: Any) -> Iterator[None]:
    """Turn an ``OSError`` raised while writing (disk full, permissions changed, path vanished) into
    :class:`OutputPathError` naming ``where``; other errors pass through.

    Example:
        >>> with writing("/out/model.onnx"):
        ...     raise OSError(28, "No space left on device")
        Traceback (most recent call last):
        ...
        leantorch.errors.OutputPathError: cannot write /out/model.onnx: No space left on device
    """
    try:
        yield
    except OutputPathError:
        raise
    except OSError as exc:
        raise OutputPathError(f"cannot write {where}: {exc.strerror or exc}") from exc


def _as_path(path: Any, what: str) -> Path:
    if not isinstance(path, (str, os.PathLike)) or (isinstance(path, str) and not path.strip()):
        raise InvalidOptionError(f"{what}={path!r}: pass a path (a string or a pathlib.Path)")
    return Path(path)


def existing_ancestor(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing ancestor (a file or a directory).

    Example:
        >>> existing_ancestor(Path("/") / "no" / "such" / "dir") == Path("/")
        True
    """
    for candidate in (path.absolute(), *path.absolute().parents):
        if candidate.exists():
            return candidate
    return Path(path.absolute().anchor)  # pragma: no cover - the root exists
