"""ONNX Runtime latency comparison (leantorch.compress.latency): real sessions on exported files."""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch
from torch import nn

import leantorch as lt
from leantorch.compress.latency import compare_latency, export_float_onnx, interleaved_medians
from leantorch.errors import InvalidOptionError


def test_interleaved_medians_alternates_the_functions_after_one_warm_up_each() -> None:
    calls: list[str] = []
    medians = interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3)
    assert calls == ["a", "b"] * 4  # the warm-up round, then 3 timed rounds, always in turn
    assert set(medians) == {"a", "b"} and all(t >= 0 for t in medians.values())


def test_rows_have_the_baseline_at_ratio_one_and_per_sample_times() -> None:
    models = {"original": nn.Linear(16, 16), "smaller": nn.Linear(16, 4)}
    rows = compare_latency(models, torch.zeros(1, 16), batch_sizes=(1, 4), repeats=3, threads=1)
    assert [(r["model"], r["batch"]) for r in rows] == [
        ("original", 1),
        ("smaller", 1),
        ("original", 4),
        ("smaller", 4),
    ]
    for row in rows:
        assert row["ms"] > 0 and row["ms per sample"] == pytest.approx(row["ms"] / row["batch"])
        if row["model"] == "original":
            assert row["latency ratio"] == 1.0


def test_eight_times_fewer_macs_run_measurably_faster() -> None:
    """A real measurement: the 1024→128 layer does an eighth of the 1024→1024 one's work (and reads an eighth of
    its weights); even on a busy machine, alternating the runs keeps the ratio well under one."""
    gen = torch.Generator().manual_seed(0)
    wide = nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1024))
    narrow = nn.Sequential(nn.Linear(1024, 128), nn.ReLU(), nn.Linear(128, 1024))
    for p in [*wide.parameters(), *narrow.parameters()]:
        p.data = torch.randn(p.shape, generator=gen)
    rows = compare_latency(
        {"wide": wide, "narrow": narrow}, torch.zeros(1, 1024), batch_sizes=(64,), repeats=15, threads=1
    )
    assert rows[1]["latency ratio"] < 0.6


def test_an_exported_qdq_file_is_timed_as_it_is(tmp_path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).eval()
    x = torch.randn(4, 3, 16, 16)
    sim = lt.QuantSim(model, x[:1])
    sim.compute_encodings([x], progress=False)
    files = sim.export(tmp_path, "int8")
    float_file = export_float_onnx(model, x[:1], tmp_path / "float.onnx")
    session = ort.InferenceSession(str(float_file), providers=["CPUExecutionProvider"])
    torch.testing.assert_close(
        torch.from_numpy(session.run(None, {"input": x.numpy()})[0]), model(x).detach(), rtol=1e-4, atol=1e-5
    )  # the exported float file is the model, any batch size
    rows = compare_latency({"fp32": model, "int8 QDQ": files["onnx"]}, x, batch_sizes=(1, 2), repeats=2)
    assert [r["model"] for r in rows] == ["fp32", "int8 QDQ"] * 2
    assert model.training is False


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(models={}), "at least one model"),
        (dict(batch_sizes=(0,)), "batch_sizes"),
        (dict(repeats=0), "repeats"),
        (dict(threads=0), "threads"),
        (dict(models={"a": nn.Linear(2, 2), "b": "missing.onnx"}), "not an ONNX file"),
    ],
)
def test_bad_arguments_are_refused_with_the_fix(kwargs, match) -> None:
    arguments = dict(models={"a": nn.Linear(2, 2)}, example_input=torch.zeros(1, 2)) | kwargs
    with pytest.raises(InvalidOptionError, match=match):
        compare_latency(**arguments)
