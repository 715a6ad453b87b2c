"""The leantorch command."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from leantorch.cli import build_parser, main
from leantorch.errors import DataError, ExportError
from leantorch.models import ResNetSmall
from leantorch.quant.sim import QuantSim


def test_help_lists_every_option(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["quantize", "--help"])
    text = capsys.readouterr().out
    for option in ["--model", "--data", "--param-bw", "--act-bw", "--scheme", "--per-channel", "--out", "--fold-bn"]:
        assert option in text
    assert {"quantize", "analyze", "compress", "demo"} <= set(build_parser()._subparsers._group_actions[0].choices)


def test_quantize_from_npy(tmp_path, capsys) -> None:
    np.save(tmp_path / "data.npy", np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("kept")
    code = main(
        [
            "quantize",
            "--model",
            "leantorch.models:ResNetSmall",
            "--data",
            str(tmp_path / "data.npy"),
            "--param-bw",
            "8",
            "--act-bw",
            "8",
            "--fold-bn",
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "top-1 agreement" in out and f"{tmp_path / 'out' / 'model.onnx'}" in out
    assert _files(tmp_path / "out") == {"model.onnx", "model.encodings", "model.pth", "notes.txt"}


@pytest.mark.slow  # CLE, calibration, sensitivity and every plot end to end
def test_analyze_writes_report_and_plots(tmp_path, capsys) -> None:
    np.save(tmp_path / "data.npy", np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32))
    code = main(
        [
            "analyze",
            "--model",
            "leantorch.models:ResNetSmall",
            "--data",
            str(tmp_path / "data.npy"),
            "--param-bw",
            "4",
            "--cle",
            "--batch-size",
            "8",
            "--layers",
            "stem.0",
            "fc",
            "--out",
            str(tmp_path / "report.html"),
            "--plots",
            str(tmp_path / "plots"),
            "--no-progress",
        ]
    )
    assert code == 0
    assert "weights only" in capsys.readouterr().out
    html = (tmp_path / "report.html").read_text()
    assert "Cross-layer equalization" in html and "stem.0" in html
    assert len(list((tmp_path / "plots").glob("*.png"))) == html.count("<img ")


def test_compress_writes_model_onnx_report_and_curves(tmp_path, capsys) -> None:
    np.save(tmp_path / "data.npy", np.random.default_rng(0).standard_normal((24, 3, 32, 32)).astype(np.float32))
    args = [
        "compress",
        "--model",
        "leantorch.models:ResNetSmall",
        "--data",
        str(tmp_path / "data.npy"),
        "--scheme",
        "spatial_svd",
        "channel_pruning",
        "--target",
        "0.6",
        "--candidates",
        "4",
        "--num-samples",
        "8",
        "--eval-samples",
        "16",
        "--batch-size",
        "8",
        "--out",
        str(tmp_path / "c"),
        "--no-progress",
    ]
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
    assert "Measured latency (ONNX Runtime)" in html  # the timings printed above, next to the MAC ratio
    assert (out / "eval_scores_channel_pruning.json").exists()
    assert main(args[:-1] + ["--target", "1.5", "--no-progress"]) == 2  # one-line error, no traceback


def test_compress_then_quantize_scores_exports_qdq_and_times_both(tmp_path, capsys) -> None:
    """compress --quantize: the compressed model is BN-folded, quantized (W8A8 per-channel), scored, exported as
    QDQ that ONNX Runtime runs like the simulation, and timed against the original quantized the same way."""
    np.save(tmp_path / "data.npy", np.random.default_rng(0).standard_normal((24, 3, 32, 32)).astype(np.float32))
    args = [
        "compress",
        "--model",
        "leantorch.models:ResNetSmall",
        "--data",
        str(tmp_path / "data.npy"),
        "--scheme",
        "channel_pruning",
        "--target",
        "0.7",
        "--candidates",
        "3",
        "--rank-multiple",
        "1",
        "--num-samples",
        "8",
        "--eval-samples",
        "16",
        "--batch-size",
        "8",
        "--out",
        str(tmp_path / "c"),
        "--quantize",
        "w8a8",
        "--no-progress",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "top-1 agreement w8a8" in printed
    for model in ("original", "compressed", "original w8a8", "compressed_w8a8"):
        assert f"| {model} | 1 |" in printed and f"| {model} | 32 |" in printed  # both batch sizes timed
    out = tmp_path / "c"
    assert {"compressed_w8a8.onnx", "compressed_w8a8.encodings", "compressed_w8a8.pth"} <= _files(out)
    # The QDQ file is the compressed model quantized: close to the compressed float model, not another model.
    compressed = torch.jit.load(str(out / "compressed.pt"))
    session = ort.InferenceSession(str(out / "compressed_w8a8.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        float_out, qdq_out = compressed(x), torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    assert (qdq_out - float_out).abs().max() < 0.25 * float_out.abs().max()


def test_compress_failure_keeps_the_cache_and_the_earlier_outputs(tmp_path, monkeypatch, capsys) -> None:
    np.save(tmp_path / "data.npy", np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32))
    out = tmp_path / "c"

    def seeded_model() -> torch.nn.Module:  # the same weights each run: the cache is keyed on them
        torch.manual_seed(0)
        return ResNetSmall()

    models = types.ModuleType("seeded_models")
    models.resnet = seeded_model
    monkeypatch.setitem(sys.modules, "seeded_models", models)
    args = [
        "compress",
        "--model",
        "seeded_models:resnet",
        "--data",
        str(tmp_path / "data.npy"),
        "--target",
        "0.7",
        "--candidates",
        "4",
        "--num-samples",
        "4",
        "--eval-samples",
        "4",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    earlier = {name: (out / name).read_bytes() for name in _files(out)}

    def interrupted(model, example, path):
        path.write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr("leantorch.compress.latency.export_float_onnx", interrupted)
    assert main(args[:-3] + ["--target", "0.6", "--out", str(out)]) == 130
    assert {name: (out / name).read_bytes() for name in _files(out)} == earlier
    assert (out / "eval_scores_spatial_svd.json").exists()  # the cache, reused by the second run


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "leantorch.cli",
            "demo",
            "--out",
            str(tmp_path),
            "--calibration",
            "16",
            "--evaluation",
            "32",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "W8A8 per-channel" in result.stdout and "ONNX Runtime" in result.stdout
    assert (tmp_path / "efficientnet_lite0_w8a8.onnx").exists()
    report = (tmp_path / "report.html").read_text()
    assert "Per-layer sensitivity" in report and "Cross-layer equalization" in report


@pytest.mark.slow  # runs every technique and AutoQuant end to end: minutes on 2 cores
def test_quantize_with_cle_bias_correction_and_auto(tmp_path, capsys) -> None:
    np.save(tmp_path / "data.npy", np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32))
    base = [
        "quantize",
        "--model",
        "leantorch.models:ResNetSmall",
        "--data",
        str(tmp_path / "data.npy"),
        "--no-progress",
        "--batch-size",
        "8",
    ]
    assert main(base + ["--cle", "--bias-correction", "analytical", "--out", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "model.onnx").exists()
    assert main(base + ["--auto", "--allowed-drop", "1.0", "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "bn_fold" in out and "float" in out
    assert (
        main(
            base
            + [
                "--adaround",
                "--adaround-iterations",
                "20",
                "--adaround-lr",
                "0.01",
                "--param-bw",
                "4",
                "--per-channel",
                "--out",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )
    assert (tmp_path / "c" / "adaround.encodings").exists()


# ------------------------------------------------------------------------------ errors before any long work
MODEL = "leantorch.models:ResNetSmall"


@pytest.fixture
def data_file(tmp_path) -> str:
    path = tmp_path / "data.npy"
    np.save(path, np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32))
    return str(path)


@pytest.fixture
def no_long_work(monkeypatch) -> list[str]:
    """Make every long step (calibration, techniques, evaluation, analysis, compression) record its call and
    fail; a test asserts the list stays empty, so the error it expects came before any long work."""
    import importlib

    calls: list[str] = []

    def forbidden(name: str):
        def fail(*args, **kwargs):
            calls.append(name)
            raise RuntimeError(f"{name} called before the arguments were checked")

        return fail

    targets = [
        (QuantSim, "compute_encodings"),
        ("leantorch.cli.adaround", None),
        ("leantorch.cli.bias_correction", None),
        ("leantorch.evaluation.model_outputs", None),
        ("leantorch.ptq.auto.auto_quant", None),
        ("leantorch.analysis.analyze", None),
        ("leantorch.demo._run", None),
    ]
    for target, attr in targets:
        if attr is None:
            module, _, attr = target.rpartition(".")
            target = importlib.import_module(module)
        monkeypatch.setattr(target, attr, forbidden(attr))
    monkeypatch.setattr(importlib.import_module("leantorch.compress"), "compress", forbidden("compress"))
    return calls


def _files(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _one_error_line(capsys, *words: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    for word in words:
        assert word in err, err
    return err


# Small and quick: one batch of four samples, the cheapest range estimator.
QUANTIZE = ["quantize", "--model", MODEL, "--num-samples", "4", "--batch-size", "4", "--scheme", "minmax"]
ANALYZE = ["analyze", "--model", MODEL, "--num-samples", "4", "--batch-size", "4", "--scheme", "minmax"]
COMPRESS = ["compress", "--model", MODEL, "--num-samples", "4", "--eval-samples", "4", "--batch-size", "4"]


@pytest.mark.parametrize(
    "command, option, value",
    [
        (QUANTIZE, "--num-samples", "0"),
        (QUANTIZE, "--batch-size", "0"),
        (QUANTIZE, "--image-size", "0"),
        (QUANTIZE, "--batch-size", "2.5"),
        (QUANTIZE, "--adaround-iterations", "-1"),
        (QUANTIZE, "--adaround-lr", "0"),
        (QUANTIZE, "--adaround-lr", "nan"),
        (QUANTIZE, "--allowed-drop", "-0.1"),
        (QUANTIZE, "--allowed-drop", "inf"),
        (QUANTIZE, "--name", ""),
        (QUANTIZE, "--name", "sub/model"),
        (QUANTIZE, "--name", ".."),
        (QUANTIZE, "--act-bw", "1"),
        (QUANTIZE, "--param-bw", "64"),
        (QUANTIZE, "--out", ""),
        (ANALYZE, "--out", "report.txt"),
        (ANALYZE, "--plots", ""),
        (COMPRESS, "--target", "0"),
        (COMPRESS, "--target", "1"),
        (COMPRESS, "--target", "nan"),
        (COMPRESS, "--candidates", "0"),
        (COMPRESS, "--rank-multiple", "0"),
        (COMPRESS, "--eval-samples", "0"),
        (["demo"], "--calibration", "0"),
        (["demo"], "--evaluation", "-3"),
        (["demo"], "--batch-size", "0"),
    ],
)
def test_bad_argument_is_one_line_exit_2_before_any_work(
    tmp_path, data_file, no_long_work, capsys, command, option, value
) -> None:
    before = _files(tmp_path)
    data = [] if command == ["demo"] else ["--data", data_file]
    out = [] if option == "--out" else ["--out", str(tmp_path / ("r.html" if command is ANALYZE else "out"))]
    assert main([*command, *data, *out, option, value]) == 2
    _one_error_line(capsys, f"argument {option}")
    assert _files(tmp_path) == before and no_long_work == []


def _bad_npy(tmp_path, name: str, array: np.ndarray) -> str:
    np.save(tmp_path / name, array)
    return str(tmp_path / name)


def test_bad_data_is_named_before_any_work(tmp_path, no_long_work, capsys) -> None:
    rng = np.random.default_rng(0)
    good = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
    nan = good.copy()
    nan[2, 1, 2, 3] = np.nan
    wrong = _bad_npy(tmp_path, "wrong.npy", rng.standard_normal((8, 5, 32, 32)).astype(np.float32))
    (tmp_path / "corrupt.npy").write_bytes(b"not an array")
    images = tmp_path / "images"
    images.mkdir()
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    out = str(tmp_path / "out")
    cases = [
        (QUANTIZE, str(tmp_path / "missing.npy"), ["--data", "missing.npy", "does not exist"]),
        (QUANTIZE, str(tmp_path / "corrupt.npy"), ["--data", "corrupt.npy"]),
        (QUANTIZE, wrong, ["--data", "(5, 32, 32)", "(3, H, W)"]),
        (QUANTIZE, _bad_npy(tmp_path, "nan.npy", nan), ["--data", "sample 2", "NaN"]),
        (COMPRESS, str(tmp_path / "nan.npy"), ["--data", "sample 2", "NaN"]),  # not "the target cannot be reached"
        (ANALYZE, str(images), ["--data", "broken.png"]),
        (COMPRESS, _bad_npy(tmp_path, "few.npy", good[:4]), ["--data has 4 samples"]),
        (QUANTIZE, _bad_npy(tmp_path, "empty.npy", good[:0]), ["--data", "N ≥ 1"]),
    ]
    before = _files(tmp_path)
    for command, data, words in cases:
        assert main([*command, "--data", data, "--out", out + ("/r.html" if command is ANALYZE else "")]) == 2
        _one_error_line(capsys, *words)
    assert _files(tmp_path) == before and no_long_work == []


def test_bad_output_location_or_layer_is_named_before_any_work(tmp_path, data_file, no_long_work, capsys) -> None:
    (tmp_path / "file").write_text("not a directory")
    (tmp_path / "dir.html").mkdir()
    cases = [
        ([*QUANTIZE, "--out", str(tmp_path / "file")], ["--out", "existing file"]),
        ([*COMPRESS, "--out", str(tmp_path / "file" / "sub")], ["--out", "is a file"]),
        ([*ANALYZE, "--out", str(tmp_path / "dir.html")], ["--out", "is a directory"]),
        ([*ANALYZE, "--out", str(tmp_path / "r.html"), "--plots", str(tmp_path / "file")], ["--plots"]),
        ([*ANALYZE, "--out", str(tmp_path / "r.html"), "--layers", "stem.0", "nope"], ["--layers", "nope", "fc"]),
        ([*COMPRESS, "--out", str(tmp_path / "c"), "--skip", "nope"], ["--skip", "nope", "fc"]),
        ([*QUANTIZE, "--out", str(tmp_path / "q"), "--config", str(tmp_path / "missing.json")], ["missing.json"]),
        (["demo", "--out", str(tmp_path / "file")], ["--out"]),
    ]
    before = _files(tmp_path)
    for argv, words in cases:
        assert main(argv[:1] + ["--data", data_file] * (argv[0] != "demo") + argv[1:]) == 2
        _one_error_line(capsys, *words)
    assert _files(tmp_path) == before and no_long_work == []


@pytest.mark.parametrize(
    "spec, words",
    [
        ("math:pi", ["--model math:pi", "not a function or class"]),
        ("leantorch.data:sample_images", ["--model leantorch.data:sample_images", "without arguments", "count"]),
        ("nope_package:factory", ["--model nope_package:factory", "cannot load"]),
    ],
)
def test_model_spec_that_builds_no_model_is_named(tmp_path, data_file, no_long_work, capsys, spec, words) -> None:
    assert main(["quantize", "--model", spec, "--data", data_file, "--out", str(tmp_path / "out")]) == 2
    _one_error_line(capsys, *words)
    assert not (tmp_path / "out").exists() and no_long_work == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_output_directory_is_reported(tmp_path, data_file, no_long_work, capsys) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert main([*QUANTIZE, "--data", data_file, "--out", str(locked / "out")]) == 2
    _one_error_line(capsys, "--out", "cannot write")
    assert no_long_work == []


def test_model_with_nan_weights_is_refused(tmp_path, data_file, monkeypatch, no_long_work, capsys) -> None:
    def nan_model() -> torch.nn.Module:
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 4))
        model[1].weight.data[0, 0] = float("inf")
        return model

    models = types.ModuleType("nan_models")
    models.nan_model = nan_model
    monkeypatch.setitem(sys.modules, "nan_models", models)
    assert main([*COMPRESS, "--model", "nan_models:nan_model", "--data", data_file, "--out", str(tmp_path / "c")]) == 2
    _one_error_line(capsys, "nan_models:nan_model", "1.weight has 1 Inf value")
    assert not (tmp_path / "c").exists() and no_long_work == []


def test_debug_shows_the_traceback(tmp_path, capsys) -> None:
    missing = str(tmp_path / "missing.npy")
    for argv in (["--debug", *QUANTIZE, "--data", missing], [*QUANTIZE, "--data", missing, "--debug"]):
        with pytest.raises(DataError, match="does not exist"):
            main(argv)
    assert main([*QUANTIZE, "--data", missing]) == 2  # the flag after the subcommand did not stick


# ------------------------------------------------------------------------------ failures part-way
def _fail_export_with(exc: BaseException):
    """A QuantSim.export that writes part of a file, then fails."""

    def export(self, path, prefix, *args, **kwargs):
        (Path(path) / f"{prefix}.onnx").write_bytes(b"partial")
        raise exc

    return export


@pytest.mark.parametrize(
    "exc, code, message",
    [
        (ExportError("cannot export"), 2, "error: cannot export\n"),
        (KeyboardInterrupt(), 130, "interrupted\n"),
        (OSError(28, "No space left on device"), 1, "No space left on device"),
    ],
)
def test_failure_part_way_leaves_no_partial_files(tmp_path, data_file, monkeypatch, capsys, exc, code, message) -> None:
    monkeypatch.setattr(QuantSim, "export", _fail_export_with(exc))
    existing, new = tmp_path / "existing", tmp_path / "new" / "dir"
    existing.mkdir()
    (existing / "model.onnx").write_text("from an earlier run")
    (existing / "notes.txt").write_text("mine")
    before = _files(tmp_path)
    for out in (existing, new):
        assert main([*QUANTIZE, "--data", data_file, "--no-progress", "--out", str(out)]) == code
        assert message in capsys.readouterr().err
    assert _files(tmp_path) == before  # nothing new, nothing removed, no staging directory left
    assert (existing / "model.onnx").read_text() == "from an earlier run"


def test_a_bug_shows_its_traceback_and_exits_1(tmp_path, data_file, monkeypatch, capsys) -> None:
    monkeypatch.setattr(QuantSim, "export", _fail_export_with(ZeroDivisionError("bug")))
    assert main([*QUANTIZE, "--data", data_file, "--no-progress", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ZeroDivisionError: bug" in err
    assert err.rstrip().splitlines()[-1].startswith("error: unexpected ZeroDivisionError")
    assert not (tmp_path / "out").exists()


def test_analyze_failure_leaves_neither_report_nor_plots(tmp_path, data_file, monkeypatch, capsys) -> None:
    from leantorch.analysis import AnalysisReport

    def interrupted(self, path):
        Path(path).write_text("<html>half")
        raise KeyboardInterrupt

    monkeypatch.setattr(AnalysisReport, "to_html", interrupted)
    (tmp_path / "r.html").write_text("an earlier report")
    argv = [
        *ANALYZE,
        "--data",
        data_file,
        "--no-sensitivity",
        "--no-progress",
        "--out",
        str(tmp_path / "r.html"),
        "--plots",
        str(tmp_path / "plots"),
    ]
    before = _files(tmp_path)
    assert main(argv) == 130
    assert capsys.readouterr().err == "interrupted\n" and _files(tmp_path) == before
    assert (tmp_path / "r.html").read_text() == "an earlier report"


def test_demo_stages_its_outputs(tmp_path, monkeypatch, capsys) -> None:
    def half_done(out, *args):
        (out / "efficientnet_lite0_w8a8.onnx").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr("leantorch.demo._run", half_done)
    assert main(["demo", "--out", str(tmp_path / "out")]) == 130
    assert _files(tmp_path) == set()


# ------------------------------------------------------------------------------ options reach every technique
def test_adaround_gets_the_quantsim_options_so_per_channel_config_rounds_per_channel(
    tmp_path, monkeypatch, capsys
) -> None:
    """--config per_channel without --per-channel: AdaRound must round per channel like the QuantSim (it used
    to get per_channel=False and write per-tensor encodings)."""
    import json

    import leantorch.cli as cli

    seen: dict = {}
    real = cli.adaround

    def recording(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(cli, "adaround", recording)
    np.save(tmp_path / "d.npy", np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32))
    argv = [
        "quantize",
        "--model",
        MODEL,
        "--data",
        str(tmp_path / "d.npy"),
        "--image-size",
        "32",
        "--num-samples",
        "4",
        "--no-progress",
        "--config",
        "per_channel",
        "--adaround",
        "--adaround-iterations",
        "1",
        "--param-bw",
        "4",
        "--act-bw",
        "6",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 0, capsys.readouterr().err
    assert seen["per_channel"] is None and seen["config"] == "per_channel"
    assert (seen["param_bw"], seen["act_bw"], seen["scheme"]) == (4, 6, "tf_enhanced")
    assert (seen["iterations"], seen["lr"]) == (1, 2e-2)  # the quick default lr; --thorough: the paper's 1e-3
    encodings = json.loads((tmp_path / "o" / "adaround.encodings").read_text())
    params = encodings.get("param_encodings", encodings)
    assert params and all(len(v) > 1 for v in params.values()), "weights rounded per tensor"


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--cle"], "--cle"),
        (["--fold-bn"], "--fold-bn"),
        (["--bias-correction", "empirical"], "--bias-correction"),
        (["--adaround"], "--adaround"),
        (["--cle", "--adaround"], "--cle --adaround"),
    ],
)
def test_auto_with_a_technique_flag_is_a_usage_error_before_any_work(
    tmp_path, data_file, no_long_work, capsys, flags, named
) -> None:
    """--auto picks the techniques itself: a technique flag beside it used to be silently ignored."""
    before = _files(tmp_path)
    assert main([*QUANTIZE, "--data", data_file, "--out", str(tmp_path / "o"), "--auto", *flags]) == 2
    _one_error_line(capsys, "--auto chooses the techniques itself", f"drop {named}")
    assert _files(tmp_path) == before and no_long_work == []


def test_auto_passes_the_adaround_options_to_auto_quant(tmp_path, data_file, monkeypatch, capsys) -> None:
    """--adaround-iterations/--adaround-lr used to be ignored by --auto (AdaRound then ran 10,000 iterations)."""
    import leantorch.ptq.auto as auto

    seen: dict = {}

    def recording(*args, **kwargs):
        seen.update(kwargs)
        raise KeyboardInterrupt  # only the arguments matter

    monkeypatch.setattr(auto, "auto_quant", recording)
    argv = [
        *QUANTIZE,
        "--data",
        data_file,
        "--out",
        str(tmp_path / "o"),
        "--auto",
        "--adaround-iterations",
        "500",
        "--adaround-lr",
        "0.01",
        "--config",
        "per_channel",
        "--no-progress",
    ]
    assert main(argv) == 130
    # AdaRound learns from the first min(128, --num-samples) samples: 4 samples in batches of 4 is one batch
    assert seen["adaround_kwargs"] == {"iterations": 500, "lr": 0.01, "num_batches": 1}
    assert seen["per_channel"] is None and seen["config"] == "per_channel"


def test_unknown_layer_lists_at_most_30_names(capsys) -> None:
    from leantorch.cli import _check_names
    from leantorch.errors import UnknownLayerError

    valid = [f"layers.{i}.conv" for i in range(300)]
    with pytest.raises(UnknownLayerError) as info:
        _check_names("--skip", [f"nope{i}" for i in range(100)], valid)
    message = str(info.value)
    assert "layers.29.conv" in message and "layers.30.conv" not in message and "(300 in all)" in message
    assert "nope29" in message and "nope30" not in message and "(100 in all)" in message


def test_adaround_defaults_are_quick_and_thorough_gives_the_papers_schedule() -> None:
    from leantorch.cli import _fill_defaults
    from leantorch.cli_args import ADAROUND_DEFAULTS, ADAROUND_THOROUGH, build_parser

    common = ["quantize", "--model", "m:f", "--data", "d.npy", "--adaround"]
    for extra, expected in [
        ([], (500, 2e-2)),
        (["--thorough"], (10_000, 1e-3)),
        (["--thorough", "--adaround-lr", "0.05"], (10_000, 0.05)),
    ]:
        args = build_parser().parse_args(common + extra)
        _fill_defaults(args, ADAROUND_DEFAULTS, ADAROUND_THOROUGH)
        assert (args.adaround_iterations, args.adaround_lr) == expected


@pytest.mark.parametrize("samples,batch,expected", [(256, 8, 16), (256, 32, 4), (100, 8, 13), (4, 4, 1), (256, 48, 3)])
def test_adaround_learns_from_the_first_128_samples_whatever_the_batch_size(samples, batch, expected) -> None:
    from leantorch.cli import _adaround_options

    args = build_parser().parse_args(
        [*QUANTIZE[:3], "--data", "x.npy", "--num-samples", str(samples), "--batch-size", str(batch), "--adaround"]
    )
    args.adaround_iterations, args.adaround_lr = 1000, 0.01
    assert _adaround_options(args)["num_batches"] == expected


def test_channels_last_only_for_image_batches_of_conv_models() -> None:
    from torch import nn

    from leantorch.data import channels_last

    conv, images = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.randn(2, 3, 8, 8)
    model, data = channels_last(conv, images)
    assert data.is_contiguous(memory_format=torch.channels_last) and torch.equal(data, images)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(model(data), conv(images))
    mlp, rows = nn.Linear(8, 2), torch.randn(2, 8)
    same_model, same_rows = channels_last(mlp, rows)
    assert same_model is mlp and same_rows is rows


@pytest.mark.parametrize(
    "function, flag, other", [("gptq", "--gptq", "--adaround"), ("seq_mse", "--seq-mse", "--gptq")]
)
def test_layerwise_rounding_flags_run_their_algorithm_and_freeze_the_weights(
    tmp_path, data_file, monkeypatch, function: str, flag: str, other: str
) -> None:
    import leantorch.cli as cli

    called: list[dict] = []
    real = getattr(cli, function)

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        called.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(cli, function, recording)
    out = tmp_path / "o"
    options = ["--data", data_file, "--out", str(out)]
    assert main([*QUANTIZE, *options, flag, "--param-bw", "4", "--per-channel", "--no-progress"]) == 0
    assert len(called) == 1 and called[0]["num_batches"] == 1 and called[0]["param_bw"] == 4
    assert (out / f"{function}.encodings").exists() and (out / "model.onnx").exists()
    assert main([*QUANTIZE, *options, flag, other]) == 2  # one rounding technique at a time
    assert main([*QUANTIZE, *options, flag, "--auto"]) == 2


def test_gptq_asymmetric_and_clip_ratio_flags_reach_gptq_and_need_gptq(
    tmp_path, data_file, monkeypatch, capsys
) -> None:
    import leantorch.cli as cli

    called: list[dict] = []
    real = cli.gptq

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        called.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(cli, "gptq", recording)
    options = ["--data", data_file, "--out", str(tmp_path / "o"), "--no-progress"]
    assert main([*QUANTIZE, *options, "--gptq", "--gptq-asymmetric"]) == 0
    assert main([*QUANTIZE, *options, "--gptq"]) == 0
    assert [c["asymmetric"] for c in called] == [True, False]
    capsys.readouterr()
    assert main([*QUANTIZE, *options, "--gptq-asymmetric"]) == 2
    assert "add --gptq" in capsys.readouterr().err and len(called) == 2
    assert main([*QUANTIZE, *options, "--gptq", "--gptq-clip-ratios", "1,0.8"]) == 0
    assert called[-1]["clip_ratios"] == (1.0, 0.8) and called[-2]["clip_ratios"] == ()
    capsys.readouterr()
    assert main([*QUANTIZE, *options, "--gptq-clip-ratios", "1,0.8"]) == 2
    assert "--gptq-clip-ratios changes how --gptq" in capsys.readouterr().err
    assert main([*QUANTIZE, *options, "--gptq", "--gptq-clip-ratios", "1,0"]) == 2
    assert "(0, 1]" in capsys.readouterr().err and len(called) == 3


def test_auto_stages_come_from_the_registry_and_reach_auto_quant(tmp_path, data_file, monkeypatch, capsys) -> None:
    import leantorch.ptq.auto as auto
    from leantorch.ptq.auto_stages import stage_names

    seen: dict = {}

    def recording(*args, **kwargs):
        seen.update(kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(auto, "auto_quant", recording)
    out = str(tmp_path / "o")
    argv = [*QUANTIZE, "--data", data_file, "--out", out, "--auto", "--auto-stages", "cle", "adaround"]
    assert main([*argv, "--no-progress"]) == 130
    assert seen["stages"] == ["cle", "adaround"]
    assert main([*QUANTIZE, "--data", data_file, "--out", out, "--auto", "--auto-stages", "nope"]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in stage_names())
    assert main([*QUANTIZE, "--data", data_file, "--out", out, "--auto-stages", "cle"]) == 2
    assert "add --auto" in capsys.readouterr().err


def test_export_format_choices_come_from_the_registry(tmp_path, data_file, capsys) -> None:
    import onnx

    from leantorch.quant.exporters import exporter_names

    out = tmp_path / "o"
    argv = [*QUANTIZE, "--data", data_file, "--out", str(out), "--no-progress"]
    assert main([*argv, "--export-format", "onnx_float"]) == 0, capsys.readouterr().err
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert "QuantizeLinear" not in ops and (out / "model.encodings").exists()
    assert main([*argv, "--export-format", "tflite"]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in exporter_names())


def test_reconstruct_flag_loads_the_learned_activation_encodings_frozen(tmp_path, monkeypatch, capsys) -> None:
    """--reconstruct: block reconstruction gets the QuantSim options, and its file (weights and learned activation
    step sizes) is loaded frozen, so calibration leaves those encodings as learned."""
    import json

    import leantorch.cli as cli

    seen: dict = {}
    real = cli.reconstruct

    def recording(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, iterations=2, **kwargs)

    monkeypatch.setattr(cli, "reconstruct", recording)
    np.save(tmp_path / "d.npy", np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32))
    argv = [*QUANTIZE[:3], "--data", str(tmp_path / "d.npy"), "--image-size", "32", "--num-samples", "4"]
    argv += ["--no-progress", "--reconstruct", "--param-bw", "4", "--per-channel", "--out", str(tmp_path / "o")]
    assert main(argv) == 0, capsys.readouterr().err
    assert (seen["param_bw"], seen["per_channel"]) == (4, True)
    learned = json.loads((tmp_path / "o" / "reconstruct.encodings").read_text())
    assert learned["activation_encodings"] and learned["param_encodings"]
