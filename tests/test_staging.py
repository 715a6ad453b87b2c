"""Staged outputs: everything or nothing appears at the destination; files already there are kept."""

from __future__ import annotations

import os
import stat

import pytest

from leantorch.errors import OutputPathError
from leantorch.staging import staged_outputs


def _tree(root) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in root.rglob("*") if p.is_file()}


def test_commit_moves_files_and_keeps_unrelated_ones(tmp_path) -> None:
    (tmp_path / "out" / "plots").mkdir(parents=True)
    (tmp_path / "out" / "model.onnx").write_text("old")
    (tmp_path / "out" / "notes.txt").write_text("mine")
    (tmp_path / "out" / "plots" / "old.png").write_text("old plot")
    with staged_outputs() as staging:
        out = staging.directory(tmp_path / "out")
        report = staging.file(tmp_path / "new" / "deep" / "report.html")
        (out / "model.onnx").write_text("new")
        (out / "plots").mkdir()
        (out / "plots" / "a.png").write_text("plot")
        report.write_text("<html>")
        assert _tree(tmp_path / "out")["model.onnx"] == "old"  # nothing visible before the end
    assert _tree(tmp_path) == {
        "out/model.onnx": "new",
        "out/notes.txt": "mine",
        "out/plots/old.png": "old plot",
        "out/plots/a.png": "plot",
        "new/deep/report.html": "<html>",
    }


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failure_discards_everything_staged(tmp_path, exc) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.onnx").write_text("old")
    with pytest.raises(type(exc)), staged_outputs() as staging:
        (staging.directory(tmp_path / "out") / "model.onnx").write_text("partial")
        (staging.directory(tmp_path / "a" / "b") / "x").write_text("partial")
        staging.file(tmp_path / "report.html").write_text("partial")
        raise exc
    assert _tree(tmp_path) == {"out/model.onnx": "old"}
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["model.onnx", "out"]  # no staging directory left


def test_bad_destinations_are_refused_at_once(tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    with staged_outputs() as staging:
        with pytest.raises(OutputPathError, match="--out .*file is an existing file"):
            staging.directory(tmp_path / "file")
        with pytest.raises(OutputPathError, match="--plots .*is a file, so no directory"):
            staging.directory(tmp_path / "file" / "sub", "--plots")
        with pytest.raises(OutputPathError, match="is a directory"):
            staging.file(tmp_path / "dir")
        with pytest.raises(OutputPathError, match="is a file"):
            staging.file(tmp_path / "file" / "report.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file"]


def test_outputs_get_the_usual_permissions(tmp_path, monkeypatch) -> None:
    from leantorch import staging as staging_module

    def no_umask(*_):  # the umask is read once at import, never set again (a race in threaded programs)
        raise AssertionError("os.umask called while staging")

    monkeypatch.setattr(staging_module, "_UMASK", 0o022)
    monkeypatch.setattr(os, "umask", no_umask)
    with staged_outputs() as staging:
        staging.file(tmp_path / "report.html").write_text("<html>")
        staging.directory(tmp_path / "out")
    assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == 0o644  # not mkstemp's private 0600
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755


def _snapshot(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_conflict_at_commit_moves_nothing(tmp_path) -> None:
    # A file staged where a directory now is: refused before any rename, not an IsADirectoryError halfway.
    (tmp_path / "out" / "m.txt").mkdir(parents=True)
    (tmp_path / "out" / "keep.txt").write_text("mine")
    before = _snapshot(tmp_path)
    with pytest.raises(OutputPathError, match="m.txt is an existing directory where the file m.txt"):
        with staged_outputs() as staging:
            out = staging.directory(tmp_path / "out")
            for i in range(22):
                (out / f"a{i:02}.txt").write_text("new")
            (out / "m.txt").write_text("new")
    assert _snapshot(tmp_path) == before  # no new output, no staging leftovers


def test_directory_where_a_file_is_refused_before_any_move(tmp_path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "plots").write_text("a file")
    before = _snapshot(tmp_path)
    with pytest.raises(OutputPathError, match="plots is an existing file where the directory plots"):
        with staged_outputs() as staging:
            report = staging.file(tmp_path / "report.html")
            report.write_text("<html>")
            out = staging.directory(tmp_path / "out")
            (out / "plots").mkdir()
            (out / "plots" / "a.png").write_text("plot")
    assert _snapshot(tmp_path) == before


def test_parent_turned_file_or_unwritable_is_refused_before_any_move(tmp_path, monkeypatch) -> None:
    with pytest.raises(OutputPathError, match="is a file, so .*report.html cannot be created"):
        with staged_outputs() as staging:
            staging.file(tmp_path / "first.txt").write_text("x")
            staging.file(tmp_path / "new" / "report.html").write_text("x")
            (tmp_path / "new").write_text("appeared meanwhile")
    assert _snapshot(tmp_path) == ["new"]
    (tmp_path / "new").unlink()
    (tmp_path / "locked").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p).endswith("locked") else real_access(p, mode))
    with pytest.raises(OutputPathError, match="no permission to write in .*locked"):
        with staged_outputs() as staging:
            staging.file(tmp_path / "first.txt").write_text("x")
            staging.file(tmp_path / "locked" / "b.txt").write_text("x")
    assert _snapshot(tmp_path) == ["locked"]


def test_failed_rename_is_an_output_path_error(tmp_path, monkeypatch) -> None:
    def failing(*_):
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputPathError, match="cannot write --out .*a.txt: No space left on device"):
        with staged_outputs() as staging:
            staging.file(tmp_path / "a.txt").write_text("x")
            monkeypatch.setattr(os, "replace", failing)
    monkeypatch.undo()
    assert _snapshot(tmp_path) == []


@pytest.mark.parametrize("name", ["model", "a b", ".hidden", "", " ", ".", "..", "a/b", "/abs", "x\0y"])
def test_cli_file_name_uses_the_one_plain_file_name_rule(name) -> None:
    import argparse

    from leantorch.cli_types import file_name as _file_name
    from leantorch.paths import check_file_name

    try:
        want = check_file_name(name)
    except OutputPathError:
        with pytest.raises(argparse.ArgumentTypeError, match="plain file name without a directory part"):
            _file_name(name)
    else:
        assert _file_name(name) == want == name


def test_staging_uses_the_paths_ancestor_rule(tmp_path) -> None:
    from leantorch import staging as staging_module
    from leantorch.paths import existing_ancestor

    assert not hasattr(staging_module, "_existing_ancestor")
    assert existing_ancestor(tmp_path / "a" / "b") == tmp_path and existing_ancestor(tmp_path) == tmp_path
