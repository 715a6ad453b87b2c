"""The leantorch command."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from leantorch.cli import build_parser, main


def test_help_lists_every_option(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["quantize", "--help"])
    text = capsys.readouterr().out
    for option in ["--model", "--data", "--param-bw", "--act-bw", "--scheme", "--per-channel", "--out", "--fold-bn"]:
        assert option in text
    assert {"quantize", "demo"} <= set(build_parser()._subparsers._group_actions[0].choices)


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


def test_quantize_with_cle_bias_correction_and_auto(tmp_path, capsys) -> None:
    np.save(tmp_path / "data.npy", np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32))
    base = ["quantize", "--model", "leantorch.models:ResNetSmall", "--data", str(tmp_path / "data.npy"),
            "--no-progress", "--batch-size", "8"]
    assert main(base + ["--cle", "--bias-correction", "analytical", "--out", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "model.onnx").exists()
    assert main(base + ["--auto", "--allowed-drop", "1.0", "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "bn_fold" in out and "float" in out
    assert main(base + ["--adaround", "--adaround-iterations", "20", "--param-bw", "4", "--per-channel",
                        "--out", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "adaround.encodings").exists()
