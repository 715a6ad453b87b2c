"""Every code block of the README runs as written.

Python blocks are self-contained: each runs in a fresh namespace, in a fresh working directory, exactly as
a user would paste it. Shell blocks name `make` targets (which must exist) and `leantorch` commands, which
are parsed by the real argument parser: every flag and choice shown must be accepted. (Running the CLI
commands at their README sizes is the job of the CLI tests and benchmarks; here a typo is what breaks.)
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from leantorch.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
MAKEFILE = README.parent / "Makefile"


def code_blocks(language: str) -> list[tuple[int, str]]:
    """(line number, source) of each fenced block of ``language`` in the README."""
    text = README.read_text()
    blocks = []
    for match in re.finditer(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M):
        blocks.append((text[: match.start()].count("\n") + 1, match.group(1)))
    return blocks


def shell_commands() -> list[list[str]]:
    """Each command of the README's shell blocks as argv (continuation lines joined, comments dropped)."""
    commands = []
    for _, source in code_blocks("bash"):
        for line in source.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                commands.append(argv)
    return commands


PYTHON_BLOCKS = code_blocks("python")


def test_readme_has_the_blocks_this_test_runs() -> None:
    assert len(PYTHON_BLOCKS) >= 5
    assert any(argv[0] == "leantorch" for argv in shell_commands())


@pytest.mark.slow
@pytest.mark.parametrize("line, source", PYTHON_BLOCKS, ids=[f"line{n}" for n, _ in PYTHON_BLOCKS])
def test_python_block_runs_as_written(line: int, source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(source, f"README.md:{line}", "exec"), namespace)  # noqa: S102 - the README is ours


@pytest.mark.parametrize("argv", shell_commands(), ids=lambda argv: " ".join(argv[:3]))
def test_shell_command_is_valid(argv: list[str]) -> None:
    if argv[0] == "make":
        targets = re.findall(r"^([\w-]+):", MAKEFILE.read_text(), flags=re.M)
        assert set(argv[1:]) <= set(targets), f"README names make targets the Makefile lacks: {argv[1:]}"
        return
    assert argv[0] == "leantorch", f"unexpected command in the README: {argv}"
    parser = build_parser()
    if "--help" in argv:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(argv[1:])
        assert exit_info.value.code == 0
        return
    args = parser.parse_args(argv[1:])
    assert args.command == argv[1]
