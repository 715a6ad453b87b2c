"""`leantorch compress` settings: the fast defaults, --thorough, explicit values, the parallel options."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from leantorch.cli import main
from leantorch.evaluation import OutputScore


class _Stop(Exception):
    """Raised by the stand-in for lt.compress once it has recorded its arguments."""


@pytest.fixture
def recorded(tmp_path, monkeypatch) -> tuple[list, list[str]]:
    np.save(tmp_path / "data.npy", np.random.default_rng(0).standard_normal((80, 3, 32, 32)).astype(np.float32))
    calls: list = []

    def record(model, example, eval_fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append((eval_fn, kwargs))
        raise _Stop

    monkeypatch.setattr(importlib.import_module("leantorch.compress"), "compress", record)
    base = [
        "compress",
        "--model",
        "leantorch.models:ResNetSmall",
        "--data",
        str(tmp_path / "data.npy"),
        "--num-samples",
        "8",
        "--out",
        str(tmp_path / "c"),
        "--no-progress",
    ]
    return calls, base


@pytest.mark.parametrize(
    "extra, candidates, eval_samples, workers",
    [
        ([], 5, 32, None),
        (["--thorough"], 10, 64, None),
        (["--thorough", "--candidates", "3"], 3, 64, None),
        (["--eval-samples", "16", "--workers", "2"], 5, 16, 2),
    ],
)
def test_compress_defaults_thorough_and_explicit_values(recorded, extra, candidates, eval_samples, workers) -> None:
    calls, base = recorded
    assert main(base + extra) == 1  # the stand-in stops the command (reported as an unexpected error)
    eval_fn, kwargs = calls[0]
    assert kwargs["candidates"] == candidates and kwargs["workers"] == workers and kwargs["ray_address"] is None
    # An OutputScore, so that the eval-score table runs only the part of the model after each layer.
    assert isinstance(eval_fn, OutputScore) and sum(len(b) for b in eval_fn.probe) == eval_samples


def test_compress_rejects_a_bad_worker_count_before_any_work(recorded) -> None:
    calls, base = recorded
    assert main(base + ["--workers", "0"]) == 2
    assert not calls


@pytest.mark.parametrize("value", ["0", "-1", "nan", "soon"])
def test_compress_rejects_a_bad_recovery_budget_before_any_work(recorded, value) -> None:
    calls, base = recorded
    assert main(base + ["--recover", value]) == 2
    assert not calls


def test_compress_help_documents_recover(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["compress", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--recover MINUTES" in text and "distillation from the original" in text and "--recover-samples" in text


@pytest.mark.slow
def test_compress_recover_distils_on_samples_apart_from_the_scoring_ones_and_writes_that_model(
    tmp_path, monkeypatch, capsys
) -> None:
    """--recover runs lt.compress.distill after compressing: on the calibration samples and the extra
    --recover-samples (never the --eval-samples that score it), for the given minutes, and the written model is
    the recovered one."""
    import torch

    import leantorch.cli_recover as cli_recover

    data = np.random.default_rng(1).standard_normal((40, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "data.npy", data)
    calls: list = []
    real = cli_recover.distill

    def spy(student, teacher, train, **kwargs):  # type: ignore[no-untyped-def]
        calls.append((train, kwargs, real(student, teacher, train, **kwargs)))
        return calls[-1][2]

    monkeypatch.setattr(cli_recover, "distill", spy)
    args = ["compress", "--model", "leantorch.models:ResNetSmall", "--data", str(tmp_path / "data.npy"),
            "--scheme", "channel_pruning", "--target", "0.7", "--candidates", "3", "--num-samples", "8",
            "--eval-samples", "8", "--batch-size", "8", "--recover", "0.01", "--recover-samples", "16",
            "--recover-lr", "1e-3", "--out", str(tmp_path / "c"), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "recovery:" in out and "top-1 agreement after recovery" in out
    train, kwargs, result = calls[0]
    expected = np.concatenate([data[:8], data[16:32]])  # calibration + extra samples; data[8:16] scores
    np.testing.assert_array_equal(train.contiguous().numpy(), expected)
    assert kwargs["max_minutes"] == 0.01 and kwargs["lr"] == 1e-3 and kwargs["mode"] == "end_to_end"
    written = torch.jit.load(str(tmp_path / "c" / "compressed.pt"))
    x = torch.from_numpy(data[8:12])
    with torch.no_grad():
        torch.testing.assert_close(written(x), result.model(x), atol=1e-5, rtol=1e-5)


def test_compress_help_documents_refit(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["compress", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--refit" in text and "least squares" in text


@pytest.mark.slow
def test_compress_refit_fits_on_samples_apart_from_the_scoring_ones_and_writes_that_model(
    tmp_path, monkeypatch, capsys
) -> None:
    """--refit runs lt.compress.refit_layers after compressing, on the calibration samples and the extra
    --recover-samples (never the --eval-samples that score it), and the written model is the re-fitted one."""
    import torch

    import leantorch.cli_recover as cli_recover

    data = np.random.default_rng(2).standard_normal((40, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "data.npy", data)
    calls: list = []
    real = cli_recover.refit_layers

    def spy(model, original, train, **kwargs):  # type: ignore[no-untyped-def]
        calls.append((train, real(model, original, train, **kwargs)))
        return calls[-1][1]

    monkeypatch.setattr(cli_recover, "refit_layers", spy)
    args = ["compress", "--model", "leantorch.models:ResNetSmall", "--data", str(tmp_path / "data.npy"),
            "--scheme", "channel_pruning", "--target", "0.7", "--candidates", "3", "--num-samples", "8",
            "--eval-samples", "8", "--batch-size", "8", "--refit", "--recover-samples", "16",
            "--out", str(tmp_path / "c"), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "re-fit:" in out and "top-1 agreement after re-fit" in out
    train, result = calls[0]
    np.testing.assert_array_equal(train.contiguous().numpy(), np.concatenate([data[:8], data[16:32]]))
    assert result.refitted, result.skipped
    written = torch.jit.load(str(tmp_path / "c" / "compressed.pt"))
    x = torch.from_numpy(data[8:12])
    with torch.no_grad():
        torch.testing.assert_close(written(x), result.model(x), atol=1e-5, rtol=1e-5)
