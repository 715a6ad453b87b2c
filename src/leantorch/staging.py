"""Staged outputs: write into hidden temporary paths, move into place only when everything succeeded.

A run that fails or is interrupted (Ctrl-C) then leaves no partial files behind, and files already at
the destination are kept (a successful run replaces the ones it writes again, nothing else).

The temporary path is created at once, so an output location that cannot be written is reported before
any long computation. It lies on the destination's file system (inside an existing output directory, or
in the nearest existing ancestor of a new one), so moving it into place is a rename, not a copy.

:meth:`StagedOutputs.commit` first plans every rename and checks every conflict (a directory where a file
goes or the reverse, a directory that cannot be written) and raises
:class:`~leantorch.errors.OutputPathError` before moving anything; only then does it rename. A failure
during the renames themselves (disk removed, permissions changed meanwhile) is still reported as
``OutputPathError``, but can leave part of the outputs moved.

A process killed without a chance to clean up (SIGKILL, the kernel's out-of-memory killer, a power cut)
leaves its hidden ``.leantorch-staging-*`` directory or file behind, next to or inside the destination.
Such leftovers are never reused or removed automatically (a long run may legitimately hold its staging
directory for days, and another process may be using one right now); delete them by hand when no
leantorch run writes there.

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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import OutputPathError
from .paths import existing_ancestor, writing

__all__ = ["StagedOutputs", "staged_outputs"]

_PREFIX = ".leantorch-staging-"
# The process umask, read once at import: reading it means setting it, which would race with other threads.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@dataclass
class StagedOutputs:
    """Temporary paths handed out by :meth:`directory` / :meth:`file`, committed or discarded together."""

    _staged: list[tuple[Path, Path, str]] = field(default_factory=list)  # (temporary path, destination, option)

    def directory(self, destination: str | Path, option: str = "--out") -> Path:
        """A new empty directory whose entries :meth:`commit` moves into ``destination``.

        Raises:
            OutputPathError: ``destination`` is a file, or no directory can be created where it would go.
        """
        dest = Path(destination)
        if dest.exists() and not dest.is_dir():
            raise OutputPathError(f"{option} {dest} is an existing file, not a directory: choose another path")
        # Inside an existing directory, or next to where the new one will be: same file system either way.
        where = dest if dest.is_dir() else _directory_ancestor(dest, option)
        try:
            temporary = Path(tempfile.mkdtemp(prefix=_PREFIX, dir=where))
        except OSError as exc:
            raise OutputPathError(f"{option} {dest}: cannot write in {where} ({exc.strerror})") from exc
        temporary.chmod(_usual_mode(0o777))
        self._staged.append((temporary, dest, option))
        return temporary

    def file(self, destination: str | Path, option: str = "--out") -> Path:
        """A temporary file path (created empty) that :meth:`commit` renames to ``destination``.

        Raises:
            OutputPathError: ``destination`` is a directory, or its directory cannot be written.
        """
        dest = Path(destination)
        if dest.is_dir():
            raise OutputPathError(f"{option} {dest} is a directory: give a file path")
        where = _directory_ancestor(dest, option)
        try:
            handle, name = tempfile.mkstemp(prefix=f"{_PREFIX}{dest.name}.", dir=where)
        except OSError as exc:
            raise OutputPathError(f"{option} {dest}: cannot write in {where} ({exc.strerror})") from exc
        os.close(handle)
        os.chmod(name, _usual_mode(0o666))
        self._staged.append((Path(name), dest, option))
        return Path(name)

    def commit(self) -> None:
        """Move every staged output to its destination (renames only; existing unrelated files stay).

        Every rename is planned and checked first: a conflict raises :class:`OutputPathError` before
        anything is moved.

        Raises:
            OutputPathError: a file would replace a directory or the reverse, a directory on the way is a
                file or cannot be written, or a rename fails (``OSError``).
        """
        moves: list[tuple[Path, Path, str]] = []  # (source, target, option), in order
        emptied: list[Path] = []  # staged directories merged into existing ones: removed once empty
        for temporary, dest, option in self._staged:
            _plan(temporary, dest, option, moves, emptied)
        for source, target, option in moves:
            _check_writable(source.parent, target, option, source)
            _check_writable(
                target.parent if target.parent.is_dir() else existing_ancestor(target.parent), target, option, source
            )
        for source, target, option in moves:
            with writing(f"{option} {target}"):
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)
        for directory in emptied:  # deepest first
            with contextlib.suppress(OSError):
                directory.rmdir()
        self._staged.clear()

    def discard(self) -> None:
        """Delete every staged output; destinations are not touched."""
        for temporary, _, _ in self._staged:
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


def _directory_ancestor(path: Path, option: str) -> Path:
    """The nearest existing ancestor of ``path`` (not ``path`` itself), which must be a directory."""
    ancestor = existing_ancestor(path.absolute().parent)
    if not ancestor.is_dir():
        raise OutputPathError(f"{option} {path}: {ancestor} is a file, so no directory can be made there")
    return ancestor


def _usual_mode(mode: int) -> int:
    """``mode`` under the process umask: what a plain open()/mkdir() gives, not mkstemp's private 0600."""
    return mode & ~_UMASK


def _plan(source: Path, dest: Path, option: str, moves: list[tuple[Path, Path, str]], emptied: list[Path]) -> None:
    """Add the renames that put ``source`` at ``dest`` to ``moves``, raising on any conflict (nothing moved).

    A directory onto an existing directory is merged entry by entry; anything else is one rename.
    """
    if source.is_dir() and dest.is_dir():  # (a link to a directory counts as one, as for the staging)
        for entry in sorted(source.iterdir()):
            _plan(entry, dest / entry.name, option, moves, emptied)
        emptied.append(source)
        return
    if dest.is_dir():
        raise OutputPathError(
            f"{option}: {dest} is an existing directory where the file {dest.name} is "
            "written; nothing was written — remove or rename it, or choose another path"
        )
    if source.is_dir() and dest.exists():
        raise OutputPathError(
            f"{option}: {dest} is an existing file where the directory {dest.name} is "
            "written; nothing was written — remove or rename it, or choose another path"
        )
    if not dest.exists() and not dest.is_symlink():
        ancestor = existing_ancestor(dest.parent)
        if not ancestor.is_dir():
            raise OutputPathError(
                f"{option}: {ancestor} is a file, so {dest} cannot be created; nothing was "
                "written — remove or rename it, or choose another path"
            )
    moves.append((source, dest, option))


def _check_writable(directory: Path, target: Path, option: str, source: Path) -> None:
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputPathError(
            f"{option}: no permission to write in {directory} (to move {source.name} to {target}); nothing was written"
        )
