"""QuantSim: config-driven placement, calibration, errors that change nothing, encodings files."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import leantorch as lt

from .conftest import assert_unchanged, state_snapshot


def calib(n: int = 3, shape=(8, 3, 32, 32)) -> list[torch.Tensor]:
    return [torch.randn(*shape) for _ in range(n)]


def active(sim: lt.QuantSim) -> set[str]:
    return {n for n, q in sim.quantizers().items() if q.is_active}


def test_supergroups_quantize_only_the_last_output(resnet) -> None:
    sim = lt.QuantSim(resnet, torch.randn(1, 3, 32, 32))
    on = active(sim)
    # stem: Conv -> BN -> ReLU is one group: only the ReLU output is quantized.
    assert "stem.2.output_quantizers.0" in on
    assert "stem.0.output_quantizers.0" not in on and "stem.1.output_quantizers.0" not in on
    # Add -> ReLU: only the ReLU; the add is inside the group.
    assert "layers.0.add.output_quantizers.0" not in on and "layers.0.relu_1.output_quantizers.0" in on
    # conv2 -> bn2 feeds the add: bn2's output is quantized (last of the Conv+BN group).
    assert "layers.0.bn2.output_quantizers.0" in on
    assert "input_quantizers.0" in on and "stem.0.param_quantizers.weight" in on
    assert "stem.0.param_quantizers.bias" not in on and "stem.1.param_quantizers.weight" not in on
    assert "flatten.output_quantizers.0" not in on  # pass-through op


def test_config_json_roundtrip_and_overrides(tmp_path, resnet) -> None:
    cfg = lt.QuantSimConfig.preset("per_channel")
    cfg.op_types["AvgPool"] = lt.OpRule(output_quantized=False)
    cfg.to_json(tmp_path / "cfg.json")
    loaded = lt.QuantSimConfig.from_json(tmp_path / "cfg.json")
    assert loaded.per_channel and loaded.rule("AvgPool").output_quantized is False
    sim = lt.QuantSim(resnet, torch.randn(1, 3, 32, 32), config=str(tmp_path / "cfg.json"))
    assert sim.quantizers()["stem.0.param_quantizers.weight"].axis == 0
    assert "adaptive_avg_pool2d.output_quantizers.0" not in active(sim)
    with pytest.raises(lt.ConfigError, match="unknown config keys"):
        lt.QuantSimConfig.from_dict({"per_chanel": True})
    with pytest.raises(lt.ConfigError, match="preset"):
        lt.QuantSim(resnet, torch.randn(1, 3, 32, 32), config="nope")


@pytest.mark.parametrize(
    "cfg,message",
    [
        ({"param_symmetric": "False"}, "'param_symmetric' is 'False' \\(a str\\); it must be true or false"),
        ({"op_types": {"Linear": {"per_channel": "x"}}}, "'op_types.Linear.per_channel' is 'x'"),
        ({"op_types": []}, "'op_types' is \\[\\] \\(a list\\)"),
        ({"op_types": {"Linaer": {"per_channel": True}}}, "unknown op type 'Linaer'"),
        ({"supergroups": 5}, "'supergroups' is 5; it must be a list of non-empty lists"),
        ({"supergroups": [[]]}, "'supergroups' is \\[\\[\\]\\]"),
        ({"supergroups": [["Conv", 3]]}, "unknown op type 3"),
        ({"name": 5}, "'name' is 5"),
    ],
)
def test_wrongly_typed_config_values_name_key_value_and_type(cfg, message) -> None:
    model, x = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval(), torch.randn(2, 3)
    before = state_snapshot(model)
    with pytest.raises(lt.ConfigError, match=message):
        lt.QuantSim(model, x, config=cfg)
    assert_unchanged(model, before)
    dataclass_cfg = lt.QuantSimConfig()
    dataclass_cfg.per_channel = "yes"  # a dataclass built in code is checked too
    with pytest.raises(lt.ConfigError, match="'per_channel' is 'yes'"):
        lt.QuantSim(model, x, config=dataclass_cfg)


@pytest.mark.parametrize("text", ["5", "null", "[[1]]", '"default"'])
def test_config_file_must_hold_a_json_object(tmp_path, text: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(lt.ConfigError, match=r"c.json holds .* at its top level; a config file is a JSON object"):
        lt.QuantSim(nn.Linear(3, 2), torch.randn(1, 3), config=str(path))


def test_per_channel_and_range_learning_must_be_flags() -> None:
    model, x = nn.Linear(3, 2).eval(), torch.randn(1, 3)
    before = state_snapshot(model)
    for kwargs, message in [
        ({"per_channel": "yes"}, "per_channel='yes': pass True, False or None"),
        ({"per_channel": 1}, "per_channel=1"),
        ({"range_learning": "no"}, "range_learning='no': pass True or False"),
    ]:
        with pytest.raises(lt.InvalidOptionError, match=message):
            lt.QuantSim(model, x, **kwargs)
    assert_unchanged(model, before)


def test_calibration_with_iterable_and_callable_gives_same_encodings(resnet) -> None:
    data = calib()
    a = lt.QuantSim(resnet, data[0][:1], scheme="minmax")
    a.compute_encodings(data, progress=False)
    b = lt.QuantSim(resnet, data[0][:1], scheme="minmax")
    b.compute_encodings(lambda model: [model(x) for x in data])
    for name, q in a.quantizers().items():
        if q.is_active:
            assert torch.equal(q.scale, b.quantizers()[name].scale), name
    # Batches with labels work: the label is dropped.
    c = lt.QuantSim(resnet, data[0][:1], scheme="minmax")
    c.compute_encodings([(x, torch.zeros(8)) for x in data], progress=False)


def test_quantized_model_is_close_to_float_and_trains(resnet) -> None:
    data = calib()
    sim = lt.QuantSim(resnet, data[0][:1], param_bw=8, act_bw=8)
    sim.compute_encodings(data, progress=False)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        ref, out = resnet(x), sim.model(x)
    assert lt.metrics.sqnr_db(ref, out) > 20
    sim.model.train()
    loss = sim.model(x).pow(2).mean()
    loss.backward()
    grads = [p.grad for p in sim.model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)


def test_enable_disable_globally_and_per_layer(resnet) -> None:
    data = calib()
    sim = lt.QuantSim(resnet, data[0][:1])
    sim.compute_encodings(data, progress=False)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        sim.set_param_quantization(False)
        sim.set_activation_quantization(False)
        torch.testing.assert_close(sim.model(x), resnet(x), rtol=1e-5, atol=1e-5)
        sim.set_param_quantization(True, layers=["fc"])
        assert active(sim) == {"fc.param_quantizers.weight"}
        sim.set_param_quantization(True)
        sim.set_activation_quantization(True)
        assert "stem.1.output_quantizers.0" not in active(sim)  # re-enabling keeps the config's choices
    with pytest.raises(lt.UnknownLayerError, match=r"no such layer\(s\) \['nope'\].*valid names include .*sim.layers"):
        sim.set_param_quantization(False, layers=["nope"])
    with pytest.raises(KeyError, match=r"'layers.0.conv_1': did you mean 'layers.0.conv1'\?"):  # still a KeyError
        sim.set_activation_quantization(False, layers=["layers.0.conv_1"])
    # One name as a plain string means that layer (it was once taken letter by letter).
    sim.set_param_quantization(False)
    sim.set_param_quantization(True, layers="fc")
    assert {n for n in active(sim) if ".param_quantizers." in n} == {"fc.param_quantizers.weight"}
    with pytest.raises(lt.InvalidOptionError, match="layers=5: pass a layer name or a list of layer names"):
        sim.set_param_quantization(True, layers=5)


def test_calibration_that_is_not_batches_is_named(resnet) -> None:
    data = calib(1)
    sim = lt.QuantSim(resnet, data[0][:1])
    for bad, message in [
        (None, "calibration must be an iterable of batches .* or a callable\\(model\\), got None"),
        (5, "got int 5"),
        ({"x": data[0]}, "got a dict"),
        (
            [None],
            "calibration batch 0 is None; a batch must be a tensor, or a tuple/list whose "
            "first 1 item\\(s\\) are the model's input tensor\\(s\\)",
        ),
        ([{"x": data[0]}], r"calibration batch 0 is a dict with keys \['x'\].*\(batch\['x'\],\)"),
        ([(3, "label")], "calibration batch 0 is a tuple holding 0 tensor\\(s\\) \\(int 3, str 'label'\\)"),
    ]:
        with pytest.raises(lt.CalibrationDataError, match=message):
            sim.compute_encodings(bad, progress=False)
    assert all(q.encoding is None for q in sim.quantizers().values())  # nothing was set
    for n in (0, -1, 1.5):
        with pytest.raises(lt.InvalidOptionError, match=f"num_batches={n}"):
            sim.compute_encodings(data, num_batches=n, progress=False)
    sim.compute_encodings([(data[0], torch.zeros(8))], progress=False)  # labels after the inputs are ignored


def test_errors_change_nothing(resnet) -> None:
    before = state_snapshot(resnet)
    data = calib()
    sim = lt.QuantSim(resnet, data[0][:1])
    with pytest.raises(lt.EncodingsMissingError, match="compute_encodings"):
        sim.model(data[0])
    with pytest.raises(lt.EncodingsMissingError, match="compute_encodings"):
        sim.export("unused", "model")
    with pytest.raises(lt.CalibrationDataError, match="empty"):
        sim.compute_encodings([], progress=False)
    sim.compute_encodings(data, progress=False)
    scales = {n: q.scale.clone() for n, q in sim.quantizers().items() if q.scale is not None}
    bad = calib()
    bad[2][1, 0, 3, 3] = float("nan")
    with pytest.raises(lt.CalibrationDataError, match="batch 2, input 0"):
        sim.compute_encodings(bad, progress=False)
    wrong_channels = [data[0], torch.randn(4, 5, 32, 32)]
    with pytest.raises(lt.CalibrationDataError, match=r"batch 1 \(input shapes \[\(4, 5, 32, 32\)\]"):
        sim.compute_encodings(wrong_channels, progress=False)
    for n, q in sim.quantizers().items():
        if n in scales:
            assert torch.equal(q.scale, scales[n]), f"{n} changed by a failed calibration"
    assert_unchanged(resnet, before)


@pytest.mark.parametrize("bw", [0, 1, 33])
def test_bad_bitwidth(resnet, bw: int) -> None:
    with pytest.raises(lt.UnsupportedBitwidthError, match="act_bw"):
        lt.QuantSim(resnet, torch.randn(1, 3, 32, 32), act_bw=bw)


def test_nothing_to_quantize_warns() -> None:
    class Shuffle(nn.Module):
        def forward(self, x):
            return x.flip(1)

    with pytest.warns(UserWarning, match="nothing to quantize"):
        lt.QuantSim(Shuffle(), torch.randn(1, 3))


def test_unknown_leaf_is_quantized_at_output_and_named() -> None:
    class Custom(nn.Module):
        def forward(self, x):
            return x * 2 + 1

    model = nn.Sequential(nn.Linear(4, 4), Custom(), nn.Linear(4, 2))
    with pytest.warns(UserWarning, match="unknown type .*: 1$"):
        sim = lt.QuantSim(model, torch.randn(1, 4), leaf_modules=[Custom])
    assert sim.layers()["1"].op_type == "Unknown" and "1.output_quantizers.0" in active(sim)
    assert lt.graph.unknown_leaf_modules(sim.model) == ["1"]


def test_encodings_save_load_roundtrip_and_frozen_params(tmp_path, resnet) -> None:
    data = calib()
    sim = lt.QuantSim(resnet, data[0][:1], per_channel=True)
    sim.compute_encodings(data, progress=False)
    sim.save_encodings(tmp_path / "enc.json")
    other = lt.QuantSim(resnet, data[0][:1], per_channel=True)
    other.load_encodings(tmp_path / "enc.json")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(other.model(x), sim.model(x))
    # Frozen parameter encodings survive recalibration.
    frozen = lt.QuantSim(resnet, data[0][:1], per_channel=True, param_bw=4)
    frozen.set_and_freeze_param_encodings(tmp_path / "enc.json")
    frozen.compute_encodings(data, progress=False)
    q = frozen.quantizers()["stem.0.param_quantizers.weight"]
    assert q.frozen and q.bitwidth == 8
    assert torch.equal(q.scale, sim.quantizers()["stem.0.param_quantizers.weight"].scale)


def test_bad_encodings_files_are_rejected_before_anything_changes(tmp_path, resnet) -> None:
    data = calib()
    sim = lt.QuantSim(resnet, data[0][:1], per_channel=True)
    sim.compute_encodings(data, progress=False)
    sim.save_encodings(tmp_path / "enc.json")
    content = json.loads((tmp_path / "enc.json").read_text())
    content["param_encodings"]["no.such.weight"] = content["param_encodings"]["fc.weight"]
    (tmp_path / "bad.json").write_text(json.dumps(content))
    target = lt.QuantSim(resnet, data[0][:1], per_channel=True)
    with pytest.raises(lt.EncodingsFileError, match="no.such.weight"):
        target.set_and_freeze_param_encodings(tmp_path / "bad.json")
    assert all(q.encoding is None for q in target.quantizers().values())
    content = json.loads((tmp_path / "enc.json").read_text())
    content["param_encodings"]["fc.weight"] = content["param_encodings"]["fc.weight"][:3]
    (tmp_path / "short.json").write_text(json.dumps(content))
    with pytest.raises(lt.EncodingsFileError, match="channels"):
        target.set_and_freeze_param_encodings(tmp_path / "short.json")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda(resnet) -> None:
    model = resnet.cuda()
    data = [x.cuda() for x in calib()]
    sim = lt.QuantSim(model, data[0][:1])
    sim.compute_encodings([x.cpu() for x in data], progress=False)  # batches follow the model's device
    with torch.no_grad():
        out = sim.model(data[0])
    assert out.is_cuda and lt.metrics.sqnr_db(model(data[0]), out) > 20


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 2), nn.Linear(4, 2)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return self.a(x1) + self.b(x2)


def test_calibration_reads_grouped_inputs_and_map_style_datasets() -> None:
    from torch.utils.data import Subset, TensorDataset

    x1, x2, y = torch.randn(4, 3), torch.randn(4, 4), torch.tensor([0, 1, 0, 1])
    sim = lt.QuantSim(_TwoInputs(), (x1[:1], x2[:1]), param_bw=8, act_bw=8)
    sim.compute_encodings([((x1, x2), y)], progress=False)  # the default collate of ((x1, x2), y) samples
    one = lt.QuantSim(nn.Linear(3, 2), x1[:1], param_bw=8, act_bw=8)
    data = TensorDataset(x1, y)  # map-style: iterated through __getitem__
    one.compute_encodings(data, progress=False)
    one.compute_encodings(Subset(data, [0, 2]), progress=False)
    with pytest.raises(lt.CalibrationDataError, match=r"\(int 1, a tuple of 2 \(\(2,\), \(2,\)\)\)"):
        sim.compute_encodings([(1, (torch.randn(2), torch.randn(2)))], progress=False)  # shapes, not tensor reprs


def test_calibration_still_refuses_inf_in_a_float_input() -> None:
    sim = lt.QuantSim(nn.Linear(3, 2), torch.randn(1, 3), param_bw=8, act_bw=8)
    with pytest.raises(lt.CalibrationDataError, match="batch 1, input 0 .* NaN or Inf"):
        sim.compute_encodings([torch.randn(2, 3), torch.tensor([[1.0, float("-inf"), 0.0]])], progress=False)


class _Raises(nn.Module):
    def __init__(self, exc: Exception) -> None:
        super().__init__()
        self.fc, self.exc = nn.Linear(3, 2), exc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and x.shape[0] == 7:
            raise self.exc
        return self.fc(x)


@pytest.mark.parametrize("exc", [torch.OutOfMemoryError("CUDA out of memory"), lt.EncodingsMissingError("no encoding")])
def test_out_of_memory_and_leantorch_errors_are_not_reported_as_a_bad_batch(exc: Exception) -> None:
    from leantorch.batches import run_batch

    model = _Raises(exc)
    with pytest.raises(type(exc)) as info:
        run_batch(model, (torch.randn(7, 3),), 0)
    assert info.value is exc
    with pytest.raises(
        lt.CalibrationDataError,
        match=r"batch 3 \(input shapes \[\(7, 2\)\]; the example input had "
        r"\[\(1, 3\)\]\)",
    ):
        run_batch(nn.Linear(3, 2), (torch.randn(7, 2),), 3, example_shapes=[(1, 3)])


def test_a_constant_before_a_tensor_argument_leaves_the_input_quantizer_on_the_tensor() -> None:
    # `0.044715 * x` (gelu_new): the Mul's input quantizer belongs to x, the second argument; it used to be applied
    # to position 0 (the constant), so it never saw data and the export failed on a missing encoding.
    class GeluNew(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 0.5 * x * (1.0 + torch.tanh(0.7978845608 * (x + 0.044715 * torch.pow(x, 3.0))))

    x = torch.randn(4, 8)
    sim = lt.QuantSim(GeluNew(), x)
    sim.compute_encodings([x], progress=False)
    active = {n: q for n, q in sim.quantizers().items() if q.is_active}
    assert active and all(q.encoding is not None for q in active.values())


def test_transformer_preset_gives_16_bit_outliers_and_8_bit_per_channel_weights() -> None:
    from leantorch.models.transformer import TransformerClassifier

    torch.manual_seed(0)
    model = TransformerClassifier(in_features=8, num_classes=3, dim=32).eval()
    x = torch.randn(2, 6, 8)
    sim = lt.QuantSim(model, x, param_bw=8, act_bw=8, config="transformer")
    assert sim.config.name == "transformer" and sim.config.per_channel
    seen = set()
    for layer in sim.layers().values():
        outputs = [q for q in layer.output_quantizers if q.enabled]
        if layer.op_type in ("LayerNorm", "Softmax", "Add", "Linear") and outputs:
            seen.add(layer.op_type)
            assert all(q.bitwidth == 16 for q in outputs), layer.op_type
        elif layer.op_type in ("GELU", "MatMul"):
            assert all(q.bitwidth == 8 for q in outputs), layer.op_type
        if layer.op_type == "Linear":
            weight = layer.param_quantizers["weight"]
            assert weight.enabled and weight.bitwidth == 8 and weight.axis == 0
    assert seen == {"LayerNorm", "Softmax", "Add", "Linear"}
    sim.compute_encodings([x], progress=False)
    assert torch.isfinite(sim.model(x)).all()
    # The same rule from JSON, and a bad bitwidth is named.
    cfg = lt.QuantSimConfig.from_dict({"op_types": {"Softmax": {"act_bw": 16}}})
    assert cfg.rule("Softmax").act_bw == 16 and cfg.rule("Linear").act_bw is None
    with pytest.raises(lt.ConfigError, match="'op_types.Softmax.act_bw' is 12.5"):
        lt.QuantSimConfig.from_dict({"op_types": {"Softmax": {"act_bw": 12.5}}})
    with pytest.raises(lt.ConfigError, match="'transformer'"):
        lt.QuantSimConfig.preset("transformers")
