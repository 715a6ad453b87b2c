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
