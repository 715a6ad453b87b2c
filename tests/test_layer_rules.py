"""Per-layer rules in a QuantSim config (``layers``): the usual "first and last layer at 8 bits" of a W4 model,
honoured by QuantSim, its encodings file and the layer-wise roundings that build their grids from the config."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import leantorch as lt

from .conftest import assert_unchanged, state_snapshot

FIRST_AND_LAST_8 = {"layers": {"0": {"param_bw": 8}, "4": {"param_bw": 8, "act_bw": 16}}}


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()


def _data() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(8, 3, 12, 12, generator=gen) for _ in range(2)]


def test_layer_rules_set_weight_and_activation_bitwidths_of_those_layers_only(tmp_path) -> None:
    data = _data()
    sim = lt.QuantSim(_net(), data[0][:1], param_bw=4, act_bw=8, param_scheme="minmax", config=FIRST_AND_LAST_8)
    sim.compute_encodings(data, progress=False)
    bits = {n: q.bitwidth for n, q in sim.quantizers().items() if q.is_active}
    assert bits["0.param_quantizers.weight"] == 8 and bits["4.param_quantizers.weight"] == 8
    assert bits["2.param_quantizers.weight"] == 4
    assert bits["4.output_quantizers.0"] == 16 and bits["1.output_quantizers.0"] == 8
    # The 8-bit layer's weights are on a 255-step grid (symmetric per tensor, minmax): error ≤ half a step,
    # the step being max|w| / 127 computed in float64.
    weight = sim.model.get_submodule("0").module.weight.detach().double()
    step = float(weight.abs().max()) / 127
    with torch.no_grad():
        quantized = sim.quantizers()["0.param_quantizers.weight"](weight.float()).double()
    assert float((quantized - weight).abs().max()) <= step / 2 * (1 + 1e-5)
    assert len(torch.unique(quantized)) > 16  # more levels than a 4-bit grid has
    sim.save_encodings(tmp_path / "e.json")
    params = json.loads((tmp_path / "e.json").read_text())["param_encodings"]
    assert params["0.weight"][0]["bitwidth"] == 8 and params["2.weight"][0]["bitwidth"] == 4


def test_layer_rules_round_trip_through_json_and_override_the_op_type_rule(tmp_path) -> None:
    cfg = lt.QuantSimConfig.from_dict({"op_types": {"Conv": {"act_bw": 16}}, **FIRST_AND_LAST_8})
    cfg.to_json(tmp_path / "c.json")
    loaded = lt.QuantSimConfig.from_json(tmp_path / "c.json")
    assert loaded.layers == cfg.layers
    assert loaded.rule("Conv", "0").param_bw == 8 and loaded.rule("Conv", "0").act_bw == 16  # op type's act_bw
    assert loaded.rule("Conv", "2").param_bw is None and loaded.rule("Conv", "4").act_bw == 16


@pytest.mark.parametrize(
    "cfg,error,message",
    [
        ({"layers": {"O": {"param_bw": 8}}}, lt.UnknownLayerError, r"config 'layers': no such layer\(s\) \['O'\]"),
        ({"layers": {"0": {"param_bw": 7.5}}}, lt.ConfigError, "'layers.0.param_bw' is 7.5; it must be null or a"),
        ({"layers": {"0": {"param_bw": 1}}}, lt.ConfigError, "'layers.0.param_bw' is 1"),
        ({"layers": {"0": {"bits": 8}}}, lt.ConfigError, "bad layers entry '0'"),
        ({"layers": [["0", 8]]}, lt.ConfigError, "'layers' is .* \\(a list\\); it must be an object of layer name"),
        ({"op_types": {"Conv": {"param_bw": "8"}}}, lt.ConfigError, "'op_types.Conv.param_bw' is '8'"),
    ],
)
def test_bad_layer_rules_are_refused_before_anything_changes(cfg, error, message) -> None:
    model, data = _net(), _data()
    before = state_snapshot(model)
    with pytest.raises(error, match=message):
        lt.QuantSim(model, data[0][:1], param_bw=4, config=cfg)
    assert_unchanged(model, before)


@pytest.mark.parametrize("rounding", [lt.adaround, lt.gptq])
def test_layer_wise_rounding_rounds_each_layer_on_its_own_bitwidth(tmp_path, rounding) -> None:
    data = _data()
    extra = {"iterations": 20} if rounding is lt.adaround else {}
    rounded, encodings = rounding(
        _net(), data[0][:1], data, param_bw=4, num_batches=2, path=tmp_path, progress=False,
        config=FIRST_AND_LAST_8, per_channel=False, **extra,
    )  # fmt: skip
    params = json.loads(encodings.read_text())["param_encodings"]
    for layer, bits in (("0", 8), ("2", 4), ("4", 8)):
        (enc,) = params[f"{layer}.weight"]
        assert enc["bitwidth"] == bits
        # every rounded weight is a grid point of that layer's own bitwidth
        steps = rounded.get_submodule(layer).weight.detach().double() / enc["scale"] - enc["offset"]
        assert torch.allclose(steps, steps.round(), atol=1e-3)
        assert 0 <= float(steps.round().min()) and float(steps.round().max()) <= 2**bits - 1
    sim = lt.QuantSim(rounded, data[0][:1], param_bw=4, config=FIRST_AND_LAST_8, per_channel=False)
    sim.set_and_freeze_param_encodings(encodings)
    sim.compute_encodings(data, progress=False)
    assert sim.quantizers()["0.param_quantizers.weight"].bitwidth == 8
