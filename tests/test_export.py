"""Export: the QDQ ONNX model runs in ONNX Runtime and matches sim.model; the encodings file names it."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import leantorch as lt

from .conftest import run_onnx


def export_and_run(
    sim: lt.QuantSim, tmp_path, x: torch.Tensor, name: str = "model", fused: bool = False, **export_options
):
    """Export and run in ONNX Runtime.

    ``fused=False`` runs the QDQ graph as the ONNX spec defines it (graph optimizations off). With
    ``fused=True`` ONNX Runtime rewrites QDQ into its integer kernels, whose u8s8 path on CPUs without
    VNNI saturates 16-bit intermediate sums (documented by ONNX Runtime), so it can differ by a few steps.
    """
    files = sim.export(tmp_path, name, **export_options)
    options = ort.SessionOptions()
    if not fused:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(files["onnx"]), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = sim.model(x).numpy()
    return files, got, want


def output_step(sim: lt.QuantSim, layer: str) -> float:
    return float(sim.layers()[layer].output_quantizers[0].scale)


@pytest.mark.parametrize("bw,per_channel", [(8, False), (8, True), (4, False), (4, True), (16, False)])
def test_resnet_onnx_matches_sim_within_one_output_step(tmp_path, resnet, bw: int, per_channel: bool) -> None:
    data = [torch.randn(8, 3, 32, 32) for _ in range(3)]
    sim = lt.QuantSim(resnet, data[0][:1], param_bw=bw, act_bw=bw, per_channel=per_channel)
    sim.compute_encodings(data, progress=False)
    x = torch.randn(16, 3, 32, 32)
    files, got, want = export_and_run(sim, tmp_path, x)
    assert np.abs(got - want).max() <= output_step(sim, "fc") * 1.001
    _, fused, _ = export_and_run(sim, tmp_path, x, fused=True)
    assert np.mean(np.abs(fused - want) <= output_step(sim, "fc") * 1.001) >= 0.95
    model = onnx.load(str(files["onnx"]))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == ops.count("DequantizeLinear") > 10
    assert ("Clip" in ops) == (bw == 4)  # sub-container widths clamp explicitly
    quant_types = {init.data_type for init in model.graph.initializer if init.name.endswith("_zero_point")}
    if bw == 16:
        assert quant_types == {onnx.TensorProto.INT16, onnx.TensorProto.UINT16}
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 21
    else:
        assert quant_types == {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    per_axis = [
        n for n in model.graph.node if n.op_type == "QuantizeLinear" and any(a.name == "axis" for a in n.attribute)
    ]
    assert bool(per_axis) == per_channel


def test_asymmetric_4_bit_per_channel_weights_export_with_zero_points_onnx_runtime_follows(tmp_path, resnet) -> None:
    """W4A8 with a zero point per weight channel (the grid asymmetric GPTQ rounds to on EfficientNet-Lite0)."""
    data = [torch.randn(8, 3, 32, 32) for _ in range(3)]
    config = {"per_channel": True, "param_symmetric": False}
    sim = lt.QuantSim(resnet, data[0][:1], param_bw=4, act_bw=8, config=config)
    sim.compute_encodings(data, progress=False)
    assert any(bool((q.offset != -8).any()) for q in sim.param_quantizers().values() if q.is_active)  # asymmetric
    x = torch.randn(16, 3, 32, 32)
    files, got, want = export_and_run(sim, tmp_path, x)
    assert np.abs(got - want).max() <= output_step(sim, "fc") * 1.001
    weight_points = [
        numpy_helper.to_array(init)
        for init in onnx.load(str(files["onnx"])).graph.initializer
        if init.name.endswith("_zero_point") and init.dims and init.dims[0] > 1
    ]
    assert weight_points and any(bool((p != p.flat[0]).any()) for p in weight_points)  # a zero point per channel


def test_encodings_file_names_onnx_tensors_and_params(tmp_path, resnet) -> None:
    data = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    sim = lt.QuantSim(resnet, data[0][:1], per_channel=True)
    sim.compute_encodings(data, progress=False)
    files = sim.export(tmp_path, "net")
    enc = json.loads(files["encodings"].read_text())
    model = onnx.load(str(files["onnx"]))
    tensors = {name for n in model.graph.node for name in list(n.input) + list(n.output)}
    initializers = {i.name for i in model.graph.initializer}
    assert enc["version"] == "0.6.1"
    assert set(enc["activation_encodings"]) <= tensors and "input" in enc["activation_encodings"]
    assert set(enc["param_encodings"]) <= initializers and "layers.0.conv1.weight" in enc["param_encodings"]
    # Each name maps back to the quantizer(s) it came from, so a new sim of the model can load the file.
    names = enc["quantizer_names"]
    assert {s: set(m) for s, m in names.items()} == {
        s: set(enc[s]) for s in ("activation_encodings", "param_encodings")
    }
    assert names["param_encodings"]["layers.0.conv1.weight"] == ["layers.0.conv1.param_quantizers.weight"]
    assert names["activation_encodings"]["input"] == ["input_quantizers.0"]
    assert sorted(n for m in names.values() for v in m.values() for n in v) == sorted(
        n for n, q in sim.quantizers().items() if q.is_active
    )
    conv1 = enc["param_encodings"]["layers.0.conv1.weight"]
    assert len(conv1) == 8 and conv1[0]["bitwidth"] == 8 and conv1[0]["is_symmetric"] == "True"
    # Weights in the ONNX file sit on the grid of their encodings.
    w = onnx.numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "layers.0.conv1.weight"))
    scales = np.array([e["scale"] for e in conv1]).reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(w / scales, np.round(w / scales), atol=1e-3)
    state = torch.load(files["pth"], weights_only=True)
    assert "layers.0.conv1.weight" in state and not any("quantizer" in k for k in state)


def test_transformer_exports_and_matches(tmp_path, transformer) -> None:
    data = [torch.randn(8, 6, 16) for _ in range(3)]
    sim = lt.QuantSim(transformer, data[0][:1])
    sim.compute_encodings(data, progress=False)
    x = torch.randn(8, 6, 16)
    _, got, want = export_and_run(sim, tmp_path, x)
    assert np.abs(got - want).max() <= output_step(sim, "head") * 1.001
    _, fused, _ = export_and_run(sim, tmp_path, x, fused=True)
    if _has_vnni():
        assert lt.metrics.sqnr_db(torch.from_numpy(want), torch.from_numpy(fused)) > 20
    else:
        # ONNX Runtime's u8s8 kernels saturate 16-bit pair sums on x86 CPUs without VNNI (measured here at
        # 14-16 dB against the simulation, which is 34 dB from FP32): the fused graph can only be required
        # to compute the quantized model rather than noise. unsigned_weights=True avoids it (test below).
        with torch.no_grad():
            reference = transformer(x)
        assert lt.metrics.sqnr_db(reference, torch.from_numpy(fused)) > 10


def _has_vnni() -> bool:
    """True on CPUs with VNNI (or non-x86), where ONNX Runtime's int8 kernels do not saturate."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def test_unsigned_weights_keep_the_grid_and_let_fused_kernels_follow(tmp_path, transformer) -> None:
    data = [torch.randn(8, 6, 16) for _ in range(3)]
    sim = lt.QuantSim(transformer, data[0][:1])
    sim.compute_encodings(data, progress=False)
    x = torch.randn(8, 6, 16)
    _, signed, want = export_and_run(sim, tmp_path, x, name="signed")
    files, unsigned, _ = export_and_run(sim, tmp_path, x, name="unsigned", unsigned_weights=True)
    np.testing.assert_array_equal(unsigned, signed)  # the same grid, only stored differently
    model = onnx.load(str(files["onnx"]))
    weight_zero_points = [
        onnx.numpy_helper.to_array(i)
        for i in model.graph.initializer
        if i.name.endswith("_zero_point") and "weight" in i.name
    ]
    assert weight_zero_points and all(z.dtype == np.uint8 and (z == 128).all() for z in weight_zero_points)
    _, fused, _ = export_and_run(sim, tmp_path, x, name="unsigned", fused=True, unsigned_weights=True)
    # u8u8 kernels do not saturate: the fused graph follows the simulation closely (int8: ~15 dB here).
    assert lt.metrics.sqnr_db(torch.from_numpy(want), torch.from_numpy(fused)) > 25


@pytest.mark.slow
def test_efficientnet_onnx_follows_sim(tmp_path, efficientnet) -> None:
    """EfficientNet-Lite0 through ONNX Runtime.

    Every quantizer computes what QuantizeLinear computes, but torch's and ONNX Runtime's float
    convolutions sum in different orders: about 1 in 100,000 activations of the first layer lands on the
    other side of a rounding boundary (one step). BN-folded depthwise weights amplify such a step (up to
    ~20 steps at the next layer), and over 16 blocks the differences spread. Measured on 16 crops: 93.5%
    of logits within one output step, 99.5% within two, at most 4, top-1 identical.
    """
    from leantorch.data import sample_images

    folded, _ = lt.fold_batch_norms(efficientnet, torch.randn(1, 3, 224, 224))
    calib = sample_images(32, seed=0)
    sim = lt.QuantSim(folded, calib[:1], per_channel=True)
    sim.compute_encodings([calib], progress=False)
    x = sample_images(16, seed=1)
    _, got, want = export_and_run(sim, tmp_path, x)
    steps = np.abs(got - want) / output_step(sim, "_fc")
    assert np.mean(steps <= 1.001) >= 0.90, f"{np.mean(steps <= 1.001):.4f} within one step"
    assert np.mean(steps <= 2.001) >= 0.98, f"{np.mean(steps <= 2.001):.4f} within two steps"
    assert steps.max() <= 6.001
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 15 / 16


def _small_calibrated_sim(act_bw: int = 8) -> tuple[lt.QuantSim, torch.Tensor]:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 3)
    ).eval()
    x = torch.randn(2, 3, 6, 6)
    sim = lt.QuantSim(model, x[:1], act_bw=act_bw, per_channel=True)
    sim.compute_encodings([x], progress=False)
    return sim, x


def test_opset_outside_the_supported_range_is_named_before_anything_is_written(tmp_path) -> None:
    sim, x = _small_calibrated_sim()
    for opset in (5, 12, 22, 99, "17", 17.0):
        with pytest.raises(lt.InvalidOptionError, match=rf"opset={opset!r}: leantorch exports ONNX opsets 13 to 21"):
            sim.export(tmp_path, "model", opset=opset)
    wide, _ = _small_calibrated_sim(act_bw=16)
    with pytest.raises(lt.InvalidOptionError, match="opset=17: .*more than 8 bits.*pass opset=21 or None"):
        wide.export(tmp_path, "model", opset=17)
    assert not list(tmp_path.iterdir())
    for opset in (13, 21):  # both ends of the range export and run
        files, got, want = export_and_run(sim, tmp_path / str(opset), x, opset=opset)
        assert {o.version for o in onnx.load(str(files["onnx"])).opset_import if o.domain in ("", "ai.onnx")} == {opset}
        np.testing.assert_allclose(got, want, atol=2 * output_step(sim, "3"))


def test_bad_output_locations_are_refused_before_any_file_is_written(tmp_path) -> None:
    sim, _ = _small_calibrated_sim()
    a_file = tmp_path / "taken"
    a_file.write_text("keep me")
    cases = [
        ((a_file, "model"), lt.OutputPathError, "taken is an existing file, not a directory"),
        ((a_file / "sub", "model"), lt.OutputPathError, "taken is a file, so no directory can be made there"),
        ((tmp_path / "out", ""), lt.OutputPathError, "filename_prefix='': give a plain file name"),
        ((tmp_path / "out", "a/b"), lt.OutputPathError, "filename_prefix='a/b': give a plain file name"),
        ((tmp_path / "out", ".."), lt.OutputPathError, "filename_prefix='..'"),
        ((tmp_path / "out", None), lt.InvalidOptionError, "filename_prefix=None: pass a file name"),
    ]
    for (path, prefix), error, message in cases:
        with pytest.raises(error, match=message):
            sim.export(path, prefix)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"] and a_file.read_text() == "keep me"


def test_a_failed_export_leaves_no_partial_files(tmp_path, monkeypatch) -> None:
    sim, _ = _small_calibrated_sim()
    files = sim.export(tmp_path, "model")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["model.encodings", "model.onnx", "model.pth"] and files["onnx"].exists()

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", fail)  # the last of the three files fails
    with pytest.raises(lt.OutputPathError, match=r"cannot write the export files model.\* in .*: No space left"):
        sim.export(tmp_path, "model")
    with pytest.raises(lt.OutputPathError, match="No space left"):
        sim.export(tmp_path / "new", "other")
    # The earlier export is intact, nothing half-written or temporary is left.
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


class _LinearCalledThrice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.fc(torch.relu(self.fc(x)))))  # three calls: three int32 biases


@pytest.mark.parametrize("per_channel", [False, True])
def test_a_layer_called_several_times_exports_and_matches_onnx_runtime(tmp_path, per_channel: bool) -> None:
    # Once refused by ONNX's checker: each call emitted the weight's Q/DQ and int32 bias under the same names.
    torch.manual_seed(0)
    model = _LinearCalledThrice().eval()
    x = torch.randn(16, 8)
    sim = lt.QuantSim(model, x[:1], per_channel=per_channel)
    sim.compute_encodings([x], progress=False)
    files, got, want = export_and_run(sim, tmp_path, x)
    # The same Q/DQ arithmetic on both sides: equal up to float rounding, far below one quantization step.
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))
    reloaded = lt.QuantSim(model, x[:1], per_channel=per_channel)
    reloaded.load_encodings(files["encodings"])  # the exported file names every quantizer once


@pytest.mark.parametrize("bw", [8, 4])
def test_onnx_float_export_is_the_sim_without_activation_quantization(tmp_path, resnet, bw: int) -> None:
    """format="onnx_float": no quantization op is left, every name of the encodings file is a tensor or an
    initializer of the graph, and ONNX Runtime computes sim.model with activation quantizers off (weights on
    their grids, int32 biases dequantized back to float)."""
    data = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    sim = lt.QuantSim(resnet, data[0][:1], param_bw=bw, act_bw=bw, per_channel=True)
    sim.compute_encodings(data, progress=False)
    files = sim.export(tmp_path, "float", format="onnx_float")
    model = onnx.load(str(files["onnx"]))
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"QuantizeLinear", "DequantizeLinear", "Clip"}
    assert all(init.data_type == onnx.TensorProto.FLOAT for init in model.graph.initializer)
    names = {t for n in model.graph.node for t in [*n.input, *n.output]} | {i.name for i in model.graph.initializer}
    encodings = json.loads(files["encodings"].read_text())
    keys = [*encodings["activation_encodings"], *encodings["param_encodings"]]
    assert keys and all(k in names for k in keys)
    x = torch.randn(4, 3, 32, 32)
    got = run_onnx(files["onnx"], x)
    sim.set_activation_quantization(False)
    with torch.no_grad():
        want = sim.model(x).numpy()
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))
    # the same sim exported as QDQ still quantizes activations (the float format is not the default)
    sim.set_activation_quantization(True)
    qdq = onnx.load(str(sim.export(tmp_path, "qdq")["onnx"]))
    assert "QuantizeLinear" in {n.op_type for n in qdq.graph.node}


def test_export_formats_are_a_registry(tmp_path) -> None:
    from leantorch.quant.exporters import Exporter, exporter_names, register_exporter, unregister_exporter

    sim, _ = _small_calibrated_sim()
    with pytest.raises(lt.InvalidOptionError, match="format='tflite': use one of onnx_qdq, onnx_float"):
        sim.export(tmp_path, "m", format="tflite")
    assert list(tmp_path.iterdir()) == []

    def encodings_only(sim, path, prefix, example_input, opset, unsigned, version):
        out = tmp_path / f"{prefix}.encodings"
        sim.save_encodings(out)
        return {"encodings": out}

    register_exporter(Exporter("encodings_only", encodings_only, "just the encodings"))
    try:
        assert exporter_names()[-1] == "encodings_only"
        assert sim.export(tmp_path, "m", format="encodings_only") == {"encodings": tmp_path / "m.encodings"}
    finally:
        unregister_exporter("encodings_only")


class _LinearOnTwoScales(nn.Module):
    """One Linear applied to inputs of very different magnitudes: one range for both calls would waste most of
    the grid on the small one."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + self.fc(100.0 * x)


def test_each_call_of_a_reused_layer_has_its_own_activation_quantizers(tmp_path) -> None:
    torch.manual_seed(0)
    model = _LinearOnTwoScales().eval()
    x = torch.randn(64, 8)
    sim = lt.QuantSim(model, x[:1], per_channel=True)
    sim.compute_encodings([x], progress=False)
    first, second = sim.layers()["fc"], sim.layers()["fc_call1"]
    assert second.repeat_of == "fc" and first.repeat_of is None
    # one weight quantizer (shared), two output quantizers with their own ranges
    assert second.param_quantizers["weight"] is first.param_quantizers["weight"]
    assert list(sim.param_quantizers()) == ["fc.weight", "fc.bias"]
    small, large = (float(w.output_quantizers[0].scale) for w in (first, second))
    assert large > 50 * small
    with torch.no_grad():
        y, want = sim.model(x), model(x)
        # the small call's error stays on its own fine grid: far below the coarse grid of the large call
        assert float((sim.model.fc(x) - model.fc(x)).abs().max()) <= 2 * small
    assert float((y - want).abs().max()) <= 2 * large
    files, got, expected = export_and_run(sim, tmp_path, x)
    assert np.abs(got - expected).max() <= 1e-4 * max(1.0, float(np.abs(expected).max()))
    reloaded = lt.QuantSim(model, x[:1], per_channel=True)
    reloaded.load_encodings(files["encodings"], strict=True)
    for name in ("fc", "fc_call1"):
        assert float(reloaded.layers()[name].output_quantizers[0].scale) == float(
            sim.layers()[name].output_quantizers[0].scale
        )


class _CacheConcat(nn.Module):
    """A key/value cache's first step: torch.cat of an empty 1-D placeholder with the new keys."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        past = torch.zeros(0, device=x.device)
        return torch.cat([past, self.proj(x)], dim=-2) * 2.0


def test_a_concat_with_an_empty_placeholder_exports(tmp_path) -> None:
    # ONNX Concat refuses the empty 1-D input that torch.cat skips ("All tensors must have the same rank").
    torch.manual_seed(0)
    model = _CacheConcat().eval()
    x = torch.randn(2, 5, 8)
    sim = lt.QuantSim(model, x[:1])
    sim.compute_encodings([x], progress=False)
    files = sim.export(tmp_path, "model")
    got = run_onnx(files["onnx"], x)
    with torch.no_grad():
        want = sim.model(x).numpy()
    assert got.shape == (2, 5, 8) and np.abs(got - want).max() <= 1e-5
