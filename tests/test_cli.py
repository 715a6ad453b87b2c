"""The leantorch command."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from leantorch.cli import build_parser, main


def test_help_lists_every_option(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["quantize", "--help"])
    text = capsys.readouterr().out
    for option in ["--model", "--data", "--param-bw", "--act-bw", "--scheme", "--per-channel", "--out", "--fold-bn"]:
        assert option in text
    assert {"quantize", "analyze", "compress", "demo"} <= set(build_parser()._subparsers._group_actions[0].choices)


def test_quantize_from_npy(tmp_path, capsys) -> None:
    np.save(tmp_path / "data.npy", np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32))
    code = main(["quantize", "--model", "leantorch.models:ResNetSmall", "--data", str(tmp_path / "data.npy"),
                 "--param-bw", "8", "--act-bw", "8", "--fold-bn", "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "top-1 agreement" in out
    assert (tmp_path / "out" / "model.onnx").exists() and (tmp_path / "out" / "model.encodings").exists()


def test_analyze_writes_report_and_plots(tmp_path, capsys) -> None:
    np.save(tmp_path / "data.npy", np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32))
    code = main(["analyze", "--model", "leantorch.models:ResNetSmall", "--data", str(tmp_path / "data.npy"),
                 "--param-bw", "4", "--cle", "--batch-size", "8", "--layers", "stem.0", "fc",
                 "--out", str(tmp_path / "report.html"), "--plots", str(tmp_path / "plots"), "--no-progress"])
    assert code == 0
    assert "weights only" in capsys.readouterr().out
    html = (tmp_path / "report.html").read_text()
    assert "Cross-layer equalization" in html and "stem.0" in html
    assert len(list((tmp_path / "plots").glob("*.png"))) == html.count("<img ")


def test_compress_writes_model_onnx_report_and_curves(tmp_path, capsys) -> None:
    np.save(tmp_path / "data.npy", np.random.default_rng(0).standard_normal((24, 3, 32, 32)).astype(np.float32))
    args = ["compress", "--model", "leantorch.models:ResNetSmall", "--data", str(tmp_path / "data.npy"),
            "--scheme", "spatial_svd", "channel_pruning", "--target", "0.6", "--candidates", "4",
            "--num-samples", "8", "--eval-samples", "16", "--batch-size", "8", "--out", str(tmp_path / "c"),
            "--no-progress"]
    assert main(args) == 0
    assert "MAC ratio" in capsys.readouterr().out
    out = tmp_path / "c"
    model = torch.jit.load(str(out / "compressed.pt"))
    x = torch.randn(2, 3, 32, 32)
    session = ort.InferenceSession(str(out / "compressed.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], model(x).numpy(), atol=1e-4)
    html = (out / "compression_report.html").read_text()
    assert "Per-layer sensitivity" in html and (out / "sensitivity_spatial_svd.png").exists()
    assert (out / "eval_scores_channel_pruning.json").exists()
    assert main(args[:-1] + ["--target", "1.5", "--no-progress"]) == 2  # typed error, no traceback


def test_bad_input_gives_error_not_traceback(tmp_path, capsys) -> None:
    code = main(["quantize", "--model", "leantorch.models:ResNetSmall", "--data", "builtin:images",
                 "--image-size", "32", "--num-samples", "4", "--act-bw", "1", "--out", str(tmp_path)])
    assert code == 2 and "act_bw=1" in capsys.readouterr().err
    assert main(["quantize", "--model", "nope", "--data", "x.npy"]) == 2


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-m", "leantorch.cli", "demo", "--out", str(tmp_path),
                             "--calibration", "16", "--evaluation", "32", "--no-progress"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "W8A8 per-channel" in result.stdout and "ONNX Runtime" in result.stdout
    assert (tmp_path / "efficientnet_lite0_w8a8.onnx").exists()
    report = (tmp_path / "report.html").read_text()
    assert "Per-layer sensitivity" in report and "Cross-layer equalization" in report


def test_quantize_with_cle_bias_correction_and_auto(tmp_path, capsys) -> None:
    np.save(tmp_path / "data.npy", np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32))
    base = ["quantize", "--model", "leantorch.models:ResNetSmall", "--data", str(tmp_path / "data.npy"),
            "--no-progress", "--batch-size", "8"]
    assert main(base + ["--cle", "--bias-correction", "analytical", "--out", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "model.onnx").exists()
    assert main(base + ["--auto", "--allowed-drop", "1.0", "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "bn_fold" in out and "float" in out
    assert main(base + ["--adaround", "--adaround-iterations", "20", "--adaround-lr", "0.01", "--param-bw", "4",
                        "--per-channel", "--out", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "adaround.encodings").exists()
