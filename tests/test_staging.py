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
    assert _tree(tmp_path) == {"out/model.onnx": "new", "out/notes.txt": "mine", "out/plots/old.png": "old plot",
                               "out/plots/a.png": "plot", "new/deep/report.html": "<html>"}


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


def test_outputs_get_the_usual_permissions(tmp_path) -> None:
    umask = os.umask(0o022)
    try:
        with staged_outputs() as staging:
            staging.file(tmp_path / "report.html").write_text("<html>")
            staging.directory(tmp_path / "out")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == 0o644  # not mkstemp's private 0600
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
