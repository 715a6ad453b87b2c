"""Blockwise weights and LPBQ (issue 13, item 1): the grid per block, the QuantSim option, the ONNX export."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import leantorch as lt
from leantorch.errors import InvalidOptionError
from leantorch.quant.blocks import from_block_rows, lpbq_compress, lpbq_scale, to_block_rows
from leantorch.quant.quantizer import Quantizer

from .conftest import run_onnx


def _reference(weight: torch.Tensor, block_size: int, bitwidth: int, lpbq_bw: int | None = None) -> torch.Tensor:
    """Symmetric min-max blockwise quantization of a (C, K, ...) weight along K, written out in float64."""
    w = weight.double()
    out = torch.empty_like(w)
    channels, inputs = w.shape[:2]
    half = 2 ** (bitwidth - 1)
    scales = torch.empty(channels, inputs // block_size, dtype=torch.float64)
    for c in range(channels):
        for b in range(inputs // block_size):
            block = w[c, b * block_size : (b + 1) * block_size]
            scales[c, b] = float(torch.tensor(float(block.abs().max() / (half - 1)), dtype=torch.float32))
    if lpbq_bw is not None:
        levels = 2 ** (lpbq_bw - bitwidth)
        per_channel = (scales.max(dim=1).values / levels).float().double()
        scales = (torch.round(scales / per_channel[:, None]).clamp(1, levels) * per_channel[:, None]).float().double()
    for c in range(channels):
        for b in range(inputs // block_size):
            block = w[c, b * block_size : (b + 1) * block_size]
            out[c, b * block_size : (b + 1) * block_size] = (block / scales[c, b]).round().clamp(
                -half, half - 1
            ) * scales[c, b]
    return out


@pytest.mark.parametrize("shape", [(6, 64), (4, 32, 3, 3)], ids=["linear", "conv"])
@pytest.mark.parametrize("lpbq_bw", [None, 8], ids=["blockwise", "lpbq"])
def test_blockwise_quantizer_matches_a_per_block_reference(shape: tuple[int, ...], lpbq_bw: int | None) -> None:
    torch.manual_seed(0)
    weight = torch.randn(shape) * torch.rand(shape[0], *[1] * (len(shape) - 1)) * 3
    q = Quantizer(bitwidth=4, symmetric=True, scheme="minmax", axis=0)
    q.block_size, q.block_axis, q.decompressed_bw = 16, 1, lpbq_bw
    enc = q.encoding_from_tensor(weight)
    assert enc.scale.shape == (shape[0], shape[1] // 16) and enc.is_blockwise
    assert torch.allclose(q(weight).double(), _reference(weight, 16, 4, lpbq_bw), atol=1e-6)
    if lpbq_bw is not None:
        floats, ints = lpbq_compress(enc.scale, 4, lpbq_bw)
        assert ints.min() >= 1 and ints.max() == 16  # every channel's largest block uses the top integer
        assert torch.equal(lpbq_scale(floats, ints), enc.scale)  # the effective scales are exactly int × float


def test_blocks_beat_channels_on_weights_with_uneven_input_channels() -> None:
    torch.manual_seed(0)
    weight = torch.randn(16, 128) * torch.logspace(-2, 0, 128)  # input channels of very different size
    errors = {}
    for name, block in (("per_channel", None), ("block32", 32), ("block8", 8)):
        q = Quantizer(bitwidth=4, symmetric=True, scheme="minmax", axis=0)
        q.block_size, q.block_axis = block, 1 if block else None
        q.encoding_from_tensor(weight)
        errors[name] = float((q(weight) - weight).pow(2).sum())
    assert errors["block8"] < errors["block32"] < 0.7 * errors["per_channel"]


def test_block_rows_round_trip_for_every_axis_pair() -> None:
    w = torch.randn(4, 8, 3)
    for axis, block_axis in ((0, 1), (1, 0), (0, 2)):
        block = {1: 4, 0: 2, 2: 3}[block_axis]
        rows = to_block_rows(w, axis, block_axis, block)
        assert torch.equal(from_block_rows(rows, w.shape, axis, block_axis, block), w)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(32, 32, 3, padding=1)
        self.up = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.fc = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.up(torch.relu(self.conv(x)))).flatten(1))


@pytest.mark.parametrize("param_bw,lpbq_bw", [(4, None), (8, None), (4, 8)], ids=["w4", "w8", "lpbq-w4"])
def test_blockwise_sim_exports_blocked_dequantize_and_onnx_runtime_follows(tmp_path, param_bw, lpbq_bw) -> None:
    model = _Net().eval()
    data = [torch.randn(8, 32, 4, 4) for _ in range(2)]
    sim = lt.QuantSim(model, data[0][:1], param_bw=param_bw, param_block_size=16, decompressed_bw=lpbq_bw)
    weights = {n: q for n, q in sim.param_quantizers().items() if q.is_active}
    assert weights and all(q.is_blockwise for q in weights.values())
    assert weights["up.weight"].block_axis == 0  # ConvTranspose: input channels first
    sim.compute_encodings(data, progress=False)
    files = sim.export(tmp_path, "model")
    proto = onnx.load(str(files["onnx"]))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 21
    blocked = [n for n in proto.graph.node if any(a.name == "block_size" for a in n.attribute)]
    assert {n.op_type for n in blocked} == {"QuantizeLinear", "DequantizeLinear"} and len(blocked) == 6
    zero_point_types = {i.data_type for i in proto.graph.initializer if i.name.endswith("weight_q0_zero_point")}
    assert zero_point_types == ({onnx.TensorProto.INT4} if param_bw == 4 else {onnx.TensorProto.INT8})
    x = torch.randn(16, 32, 4, 4)
    got = run_onnx(files["onnx"], x)
    with torch.no_grad():
        want = sim.model(x).numpy()
    step = float(sim.layers()["fc"].output_quantizers[0].scale)
    assert np.abs(got - want).max() <= step * 1.001


def test_layers_without_whole_blocks_stay_per_channel_with_a_warning() -> None:
    model = nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(32, 8, 1)).eval()
    with pytest.warns(UserWarning, match="3 input channels, blocks of 32"):
        sim = lt.QuantSim(model, torch.randn(1, 3, 8, 8), param_bw=4, param_block_size=32)
    first, second = sim.param_quantizers()["0.weight"], sim.param_quantizers()["2.weight"]
    assert not first.is_blockwise and first.axis == 0 and second.is_blockwise


def test_block_size_per_op_type_in_the_config() -> None:
    model = nn.Sequential(nn.Conv2d(32, 32, 1), nn.Flatten(), nn.Linear(32 * 4 * 4, 8)).eval()
    config = {"per_channel": True, "param_block_size": 16, "op_types": {"Conv": {"param_block_size": 0}}}
    sim = lt.QuantSim(model, torch.randn(1, 32, 4, 4), param_bw=4, config=config)
    assert not sim.param_quantizers()["0.weight"].is_blockwise  # 0: per channel for Conv
    assert sim.param_quantizers()["2.weight"].block_size == 16


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"param_block_size": 0}, "param_block_size=0"),
        ({"param_block_size": 16.0}, "param_block_size=16.0"),
        ({"decompressed_bw": 8}, "needs blockwise weights"),
        ({"param_block_size": 16, "decompressed_bw": 4}, "above param_bw=4"),
    ],
)
def test_bad_block_settings_are_refused(kwargs: dict, match: str) -> None:
    with warnings.catch_warnings(), pytest.raises(InvalidOptionError, match=match):
        lt.QuantSim(nn.Linear(32, 4), torch.randn(1, 32), param_bw=4, **kwargs)


@pytest.mark.parametrize("algorithm", ["gptq", "gptq_asymmetric", "seq_mse", "adaround"])
def test_layerwise_rounding_works_on_blockwise_grids(tmp_path, algorithm: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 16)).eval()
    with torch.no_grad():
        model[0].weight.mul_(torch.logspace(-1, 0.5, 64))  # input channels of uneven size: blocks pay off
    data = [torch.randn(64, 64) * torch.linspace(0.2, 2, 64) for _ in range(4)]
    options = {"param_bw": 4, "param_block_size": 32, "progress": False, "path": tmp_path}
    extra = {"adaround": {"iterations": 200}, "gptq_asymmetric": {"asymmetric": True}}.get(algorithm, {})
    rounded, _ = getattr(lt, algorithm.removesuffix("_asymmetric"))(model, data[0][:1], data, **options, **extra)
    nearest = lt.QuantSim(model, data[0][:1], param_bw=4, param_block_size=32, param_scheme="mse")
    nearest.compute_encodings(data, progress=False)
    nearest.set_activation_quantization(False)
    x = torch.cat(data)
    with torch.no_grad():
        reference = model(x)
        error = (rounded(x) - reference).pow(2).mean()
        nearest_error = (nearest.model(x) - reference).pow(2).mean()
    assert error < nearest_error
    for layer in (rounded.get_submodule("0"), rounded.get_submodule("2")):
        blocks = layer.weight.detach().reshape(layer.weight.shape[0], -1, 32)
        levels = [len(torch.unique(block)) for row in blocks for block in row]
        assert max(levels) <= 16  # every block on a 4-bit grid of its own ...
        assert len(torch.unique(layer.weight.detach()[0])) > 16  # ... and the blocks of a row on different grids


def test_a_layer_kept_at_8_bits_on_an_lpbq_sim_is_refused_at_construction_naming_the_rule() -> None:
    """The common recipe (the first layer at 8 bits) on a sim with decompressed_bw=8 used to calibrate 0-bit
    multipliers for that layer and fail only at export."""
    config = {"layers": {"conv": {"param_bw": 8}}}
    with (
        warnings.catch_warnings(),
        pytest.raises(InvalidOptionError, match='conv: 8-bit weights.*"decompressed_bw": 0'),
    ):
        lt.QuantSim(_Net().eval(), torch.randn(1, 32, 4, 4), param_bw=4, param_block_size=16, decompressed_bw=8,
                    config=config)  # fmt: skip


def test_lpbq_per_layer_in_the_config_exports_and_onnx_runtime_follows(tmp_path) -> None:
    """The config-wide LPBQ with one layer out of it (8 bits, float block scales), and LPBQ on one layer only of
    a blockwise sim: each weight gets what its rule says, the encodings carry LPBQ exactly there, and ONNX Runtime
    follows the sim within one output step."""
    data = [torch.randn(8, 32, 4, 4) for _ in range(2)]
    x = torch.randn(16, 32, 4, 4)
    conv_out = {"conv": {"param_bw": 8, "decompressed_bw": 0}}
    cases = {
        "all but conv": ({"decompressed_bw": 8, "layers": conv_out}, {"up", "fc"}),
        "fc only": ({"layers": {"fc": {"decompressed_bw": 8}}}, {"fc"}),
    }
    for name, (config, lpbq_layers) in cases.items():
        sim = lt.QuantSim(_Net().eval(), data[0][:1], param_bw=4, param_block_size=16, config=config)
        weights = {n.split(".")[0]: q for n, q in sim.param_quantizers().items() if n.endswith("weight")}
        assert {n for n, q in weights.items() if q.decompressed_bw == 8} == lpbq_layers, name
        assert all(q.is_blockwise for q in weights.values()), name
        sim.compute_encodings(data, progress=False)
        for layer in lpbq_layers:  # block scales: an integer in [1, 16] times one float per channel
            block_scales = weights[layer].scale.reshape(weights[layer].scale.shape[0], -1)
            assert torch.allclose(lpbq_scale(*lpbq_compress(block_scales, 4, 8)), block_scales), (name, layer)
        files = sim.export(tmp_path / name.replace(" ", "_"), "model")
        entries = json.loads(files["encodings"].read_text())["param_encodings"]  # version 1.0.0: a list
        kinds = {e["name"].split(".")[0]: e["enc_type"] for e in entries if e["name"].endswith("weight")}
        assert {n for n, kind in kinds.items() if kind == "LPBQ"} == lpbq_layers, name
        assert set(kinds.values()) <= {"LPBQ", "PER_BLOCK"}, name
        with torch.no_grad():
            want = sim.model(x).numpy()
        step = float(sim.layers()["fc"].output_quantizers[0].scale)
        assert np.abs(run_onnx(files["onnx"], x) - want).max() <= step * 1.001, name


@pytest.mark.parametrize(
    "config,match",
    [
        ({"layers": {"fc": {"decompressed_bw": 8}}}, "fc: decompressed_bw=8 .*needs blockwise weights"),
        ({"param_block_size": 16, "param_symmetric": False, "layers": {"fc": {"decompressed_bw": 8}}}, "symmetric"),
        ({"param_block_size": 16, "layers": {"fc": {"decompressed_bw": 4}}}, "fc: 4-bit weights"),
    ],
)
def test_bad_per_layer_lpbq_is_refused_naming_the_layer(config: dict, match: str) -> None:
    with warnings.catch_warnings(), pytest.raises(InvalidOptionError, match=match):
        lt.QuantSim(_Net().eval(), torch.randn(1, 32, 4, 4), param_bw=4, config=config)


@pytest.mark.parametrize("value", ["8", 1, 8.0, True])
def test_a_rule_decompressed_bw_must_be_a_bitwidth_or_0(value: object) -> None:
    from leantorch.errors import ConfigError

    with pytest.raises(ConfigError, match="layers.fc.decompressed_bw"):
        lt.QuantSim(_Net().eval(), torch.randn(1, 32, 4, 4), config={"layers": {"fc": {"decompressed_bw": value}}})
