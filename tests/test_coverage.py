"""The fast torch-only subset of ``benchmarks/coverage.py`` (issue: every model a user brings): each model traces
as given, every Conv/Linear/RNN/attention weight gets an active quantizer, and the export runs in ONNX Runtime
within one output step of the simulation."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "coverage.py"
_SPEC = importlib.util.spec_from_file_location("coverage_benchmark", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
coverage = importlib.util.module_from_spec(_SPEC)
sys.modules["coverage_benchmark"] = coverage  # dataclasses look their module up by name
_SPEC.loader.exec_module(coverage)

FAST_TORCH = [s for s in coverage.torch_specs() if s.fast]


def test_the_fast_subset_covers_rnns_attention_and_conv1d() -> None:
    names = {s.name for s in FAST_TORCH}
    assert len(names) >= 6 and {"lstm-2layer", "multihead-attention", "conv1d-net"} <= names


@pytest.mark.parametrize("spec", FAST_TORCH, ids=lambda s: s.name)
def test_torch_model_traces_quantizes_every_weight_and_matches_onnx_runtime(spec) -> None:
    row: dict = {"model": spec.name}
    coverage._measure(spec, row)
    assert row["errors"] == [], row["errors"]
    assert row["traced"] == "yes"
    assert row["weights_quantized"] == 100.0, row.get("float_layers")
    assert row["export"] == "ok"
    assert row["ort_steps"] is not None and row["ort_steps"] <= 1.0
    assert row["ort_same_inputs"]["max_steps"] <= 1.0 and row["ort_same_inputs"]["quantizers"] > 0
    assert row["sqnr_db"] > 15.0  # W8A8 keeps most of the signal on these small random-init models
