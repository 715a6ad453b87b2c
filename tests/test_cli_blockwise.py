"""``leantorch quantize --param-block-size`` (and ``--decompressed-bw``): blockwise weights from the command line."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from leantorch.cli import main


@pytest.mark.parametrize("extra", [["--gptq"], ["--decompressed-bw", "8"]], ids=["gptq", "lpbq"])
def test_quantize_with_blocks_exports_blocked_qdq(tmp_path, capsys, extra: list[str]) -> None:
    np.save(tmp_path / "data.npy", np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32))
    out = tmp_path / "out"
    args = ["quantize", "--model", "leantorch.models:ResNetSmall", "--data", str(tmp_path / "data.npy")]
    args += ["--num-samples", "8", "--batch-size", "4", "--scheme", "minmax", "--param-bw", "4"]
    args += ["--param-block-size", "16", "--out", str(out), "--no-progress", *extra]
    assert main(args) == 0
    proto = onnx.load(str(out / "model.onnx"))
    blocked = [n for n in proto.graph.node if any(a.name == "block_size" and a.i == 16 for a in n.attribute)]
    assert blocked and max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 21
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.zeros((1, 3, 32, 32), np.float32)})[0].shape[0] == 1


def test_decompressed_bw_without_blocks_is_a_one_line_error(tmp_path, capsys) -> None:
    np.save(tmp_path / "data.npy", np.zeros((4, 3, 32, 32), np.float32))
    args = ["quantize", "--model", "leantorch.models:ResNetSmall", "--data", str(tmp_path / "data.npy")]
    assert main([*args, "--param-bw", "4", "--decompressed-bw", "8", "--out", str(tmp_path / "o")]) == 2
    assert "needs blockwise weights" in capsys.readouterr().err


def test_quantize_with_float_layers_exports_casts_and_float8(tmp_path) -> None:
    np.save(tmp_path / "data.npy", np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32))
    args = ["quantize", "--model", "leantorch.models:ResNetSmall", "--data", str(tmp_path / "data.npy")]
    args += ["--num-samples", "8", "--batch-size", "4", "--scheme", "minmax", "--no-progress"]
    assert main([*args, "--float-format", "fp16", "--out", str(tmp_path / "a")]) == 0
    ops = [n.op_type for n in onnx.load(str(tmp_path / "a" / "model.onnx")).graph.node]
    assert ops.count("Cast") >= 20 and "QuantizeLinear" in ops  # every layer: casts; the model input stays int8
    assert main([*args, "--float-format", "fp8", "--float-layers", "fc", "--out", str(tmp_path / "b")]) == 0
    proto = onnx.load(str(tmp_path / "b" / "model.onnx"))
    fp8 = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT8E4M3FN]
    assert fp8  # the fc layer's zero points are float8
    session = ort.InferenceSession(str(tmp_path / "b" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.zeros((1, 3, 32, 32), np.float32)})[0].shape[0] == 1


def test_float_layers_must_exist(tmp_path, capsys) -> None:
    np.save(tmp_path / "data.npy", np.zeros((4, 3, 32, 32), np.float32))
    args = ["quantize", "--model", "leantorch.models:ResNetSmall", "--data", str(tmp_path / "data.npy")]
    assert main([*args, "--float-format", "bf16", "--float-layers", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err
