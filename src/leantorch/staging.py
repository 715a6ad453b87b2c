"""Staged outputs: write into hidden temporary paths, move into place only when everything succeeded.

A run that fails or is interrupted (Ctrl-C) then leaves no partial files behind, and files already at
the destination are kept (a successful run replaces the ones it writes again, nothing else).

The temporary path is created at once, so an output location that cannot be written is reported before
any long computation. It lies on the destination's file system (inside an existing output directory, or
in the nearest existing ancestor of a new one), so moving it into place is a rename, not a copy.

Example:
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> with staged_outputs() as staging:
    ...     out = staging.directory(root / "out")
    ...     _ = (out / "model.onnx").write_text("onnx")
    >>> sorted(p.name for p in (root / "out").iterdir())
    ['model.onnx']
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .errors import OutputPathError

_PREFIX = ".leantorch-staging-"


@dataclass
class StagedOutputs:
    """Temporary paths handed out by :meth:`directory` / :meth:`file`, committed or discarded together."""

    _staged: list[tuple[Path, Path]] = field(default_factory=list)  # (temporary path, destination)

    def directory(self, destination: str | Path, option: str = "--out") -> Path:
        """A new empty directory whose entries :meth:`commit` moves into ``destination``.

        Raises:
            OutputPathError: ``destination`` is a file, or no directory can be created where it would go.
        """
        dest = Path(destination)
        if dest.exists() and not dest.is_dir():
            raise OutputPathError(f"{option} {dest} is an existing file, not a directory: choose another path")
        # Inside an existing directory, or next to where the new one will be: same file system either way.
        where = dest if dest.is_dir() else _existing_ancestor(dest, option)
        try:
            temporary = Path(tempfile.mkdtemp(prefix=_PREFIX, dir=where))
        except OSError as exc:
            raise OutputPathError(f"{option} {dest}: cannot write in {where} ({exc.strerror})") from exc
        temporary.chmod(_usual_mode(0o777))
        self._staged.append((temporary, dest))
        return temporary

    def file(self, destination: str | Path, option: str = "--out") -> Path:
        """A temporary file path (created empty) that :meth:`commit` renames to ``destination``.

        Raises:
            OutputPathError: ``destination`` is a directory, or its directory cannot be written.
        """
        dest = Path(destination)
        if dest.is_dir():
            raise OutputPathError(f"{option} {dest} is a directory: give a file path")
        where = _existing_ancestor(dest, option)
        try:
            handle, name = tempfile.mkstemp(prefix=f"{_PREFIX}{dest.name}.", dir=where)
        except OSError as exc:
            raise OutputPathError(f"{option} {dest}: cannot write in {where} ({exc.strerror})") from exc
        os.close(handle)
        os.chmod(name, _usual_mode(0o666))
        self._staged.append((Path(name), dest))
        return Path(name)

    def commit(self) -> None:
        """Move every staged output to its destination (renames only; existing unrelated files stay)."""
        for temporary, dest in self._staged:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if temporary.is_dir() and dest.is_dir():
                _merge(temporary, dest)
                temporary.rmdir()
            else:
                os.replace(temporary, dest)
        self._staged.clear()

    def discard(self) -> None:
        """Delete every staged output; destinations are not touched."""
        for temporary, _ in self._staged:
            if temporary.is_dir():
                shutil.rmtree(temporary, ignore_errors=True)
            else:
                temporary.unlink(missing_ok=True)
        self._staged.clear()


@contextlib.contextmanager
def staged_outputs() -> Iterator[StagedOutputs]:
    """Stage outputs for the ``with`` body: committed if it returns, discarded if it raises (Ctrl-C too)."""
    staging = StagedOutputs()
    try:
        yield staging
    except BaseException:
        staging.discard()
        raise
    try:
        staging.commit()
    finally:
        staging.discard()  # whatever a failed commit left behind


def _existing_ancestor(path: Path, option: str) -> Path:
    """The nearest existing ancestor of ``path``, which must be a directory (the rest gets created)."""
    for ancestor in path.absolute().parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise OutputPathError(f"{option} {path}: {ancestor} is a file, so no directory can be made there")
            return ancestor
    raise OutputPathError(f"{option} {path}: no existing parent directory")  # pragma: no cover - "/" exists


def _usual_mode(mode: int) -> int:
    """``mode`` under the process umask: what a plain open()/mkdir() gives, not mkstemp's private 0600."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def _merge(source: Path, dest: Path) -> None:
    """Move the entries of ``source`` into the existing directory ``dest``, replacing same-named files."""
    for entry in source.iterdir():
        target = dest / entry.name
        if entry.is_dir() and target.is_dir():
            _merge(entry, target)
            entry.rmdir()
        else:
            os.replace(entry, target)
