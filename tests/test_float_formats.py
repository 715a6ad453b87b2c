"""Float formats in the simulation (issue 13, item 3): fp16, bf16, fp8 e4m3 / e5m2 quantizers, per layer,
exported as Cast pairs or float8 QuantizeLinear/DequantizeLinear that ONNX Runtime runs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import leantorch as lt
from leantorch.errors import ConfigError, InvalidOptionError, UnknownLayerError
from leantorch.quant.float_formats import float_fake_cast
from leantorch.quant.quantizer import Quantizer

from .conftest import run_onnx

FORMATS = ["float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"]
FMAX = {"float8_e4m3fn": 448.0, "float8_e5m2": 57344.0}


@pytest.mark.parametrize("name", FORMATS)
def test_fake_cast_is_the_torch_cast_with_saturation(name: str) -> None:
    torch.manual_seed(0)
    x = torch.cat([torch.randn(1000) * 50, torch.tensor([1e6, -1e6])])  # and beyond every format's range
    dtype = getattr(torch, name)
    scale = torch.tensor(0.25)
    got = float_fake_cast(x, scale if name in FMAX else torch.tensor(1.0), None, name)
    if name in FMAX:
        want = (x / 0.25).clamp(-FMAX[name], FMAX[name]).to(dtype).float() * 0.25
        assert float(got.abs().max()) == FMAX[name] * 0.25  # saturates, never NaN/Inf
    else:
        x = x[:-2]  # fp16 would give inf (as ONNX Cast does), bf16 keeps them
        got = float_fake_cast(x, torch.tensor(1.0), None, name)
        want = x.to(dtype).float()
    assert torch.equal(got, want)
    x.requires_grad_(True)
    float_fake_cast(x, torch.tensor(1.0), None, name).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # straight-through


def test_fp16_needs_no_calibration_and_fp8_calibrates_its_scale() -> None:
    half = Quantizer()
    half.set_float_format("fp16")
    assert half.encoding is not None and half(torch.tensor([1.0 + 2**-12])).item() == 1.0
    fp8 = Quantizer(scheme="minmax", axis=0)
    fp8.set_float_format("e4m3")
    weight = torch.randn(4, 16) * torch.tensor([1.0, 10.0, 100.0, 1000.0])[:, None]
    enc = fp8.encoding_from_tensor(weight)
    assert torch.allclose(enc.scale, weight.abs().amax(1) / 448.0)
    error = (fp8(weight) - weight).abs() / weight.abs().amax(1, keepdim=True)
    assert float(error.max()) < 2**-4  # 3 mantissa bits, whatever the channel's magnitude


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 16, 3)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 6 * 6, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)))


@pytest.mark.parametrize("name", FORMATS)
def test_float_layers_export_and_onnx_runtime_follows(tmp_path, name: str) -> None:
    model = _Net().eval()
    data = [torch.randn(8, 3, 8, 8) for _ in range(2)]
    sim = lt.QuantSim(model, data[0][:1], per_channel=True)
    changed = lt.set_float_format(sim, name, layers=["conv", "head.1"])
    assert "conv.param_quantizers.weight" in changed and "head.1.output_quantizers.0" in changed
    sim.compute_encodings(data, progress=False)
    x = torch.randn(16, 3, 8, 8)
    files = sim.export(tmp_path, "model")
    proto = onnx.load(str(files["onnx"]))
    ops = [n.op_type for n in proto.graph.node]
    if name in FMAX:
        zero_types = {i.data_type for i in proto.graph.initializer if i.name.endswith("zero_point")}
        assert getattr(onnx.TensorProto, name.upper().replace("_", "")) in zero_types
    else:
        assert ops.count("Cast") >= 4  # a pair per float quantizer
    got = run_onnx(files["onnx"], x)
    with torch.no_grad():
        want = sim.model(x).numpy()
        reference = model(x).numpy()
    # the same roundings on both sides; only the conv's summation order may differ (one ulp of the format)
    assert np.abs(got - want).max() <= 2 ** -(3 if name in FMAX else 7) * np.abs(want).max()
    assert np.abs(want - reference).max() < 0.25 * np.abs(reference).max()


def test_float_format_per_op_type_in_the_config_and_bad_names() -> None:
    config = {"op_types": {"Linear": {"float_format": "bf16"}}}
    sim = lt.QuantSim(_Net().eval(), torch.randn(1, 3, 8, 8), config=config)
    assert sim.param_quantizers()["head.1.weight"].float_format == "bfloat16"
    assert sim.param_quantizers()["conv.weight"].float_format is None
    with pytest.raises(ConfigError, match="float_format"):
        lt.QuantSim(_Net().eval(), torch.randn(1, 3, 8, 8), config={"op_types": {"Linear": {"float_format": "fp4"}}})
    with pytest.raises(InvalidOptionError, match="fp4"):
        lt.set_float_format(sim, "fp4")
    with pytest.raises(UnknownLayerError):
        lt.set_float_format(sim, "fp16", layers="nope")
