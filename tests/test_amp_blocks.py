"""Blockwise AMP candidates (``"W3A16B32"``) and AMP on blockwise sims: cost, layouts, rounding, export."""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from leantorch.cli_amp import add_amp_options
from leantorch.errors import InvalidOptionError
from leantorch.ptq.amp_groups import Candidate, LayerGroup, find_groups, parse_candidates
from leantorch.ptq.amp_rounding import mix_config
from leantorch.ptq.gptq import GptqConfig
from leantorch.ptq.mixed_precision import MixedPrecisionResult, mixed_precision
from leantorch.quant.sim import QuantSim

from .conftest import run_onnx
from .test_amp_rounding import noise_score

ASYMMETRIC = {"param_symmetric": False}
W8, B32, W3 = parse_candidates("W8A16,W3A16B32,W3A16")


def _net() -> nn.Module:
    # input channels 64 and 96 make whole blocks of 32; the last layer's 48 do not (it stays per channel). Inputs of
    # uneven weight magnitude (a tenth past the first 32), as trained layers have: what blocks are for
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 48), nn.ReLU(), nn.Linear(48, 10)).eval()
    with torch.no_grad():
        for layer in (net[0], net[2]):
            layer.weight[:, 32:] *= 0.1
    return net


@pytest.fixture(scope="module")
def data() -> dict[str, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return {"calib": [torch.randn(64, 64, generator=gen) for _ in range(2)], "held_out": [torch.randn(128, 64)]}


def _amp(data: dict[str, list[torch.Tensor]], candidates: str, **kw: Any) -> MixedPrecisionResult:
    net = _net()
    kw = {"allowed_drop": 0.0, "cost": "memory", "progress": False, "config": ASYMMETRIC, **kw}
    return mixed_precision(net, data["calib"][0][:1], data["calib"], noise_score(net, data["held_out"]),
                           candidates=candidates, **kw)  # fmt: skip


def test_block_candidates_parse_name_and_rank_above_their_bitwidth() -> None:
    assert Candidate.parse("w3a16b64") == Candidate(3, 16, 64) == Candidate.parse((3, 16, 64))
    assert Candidate(3, 16, 64).name == "W3A16B64" and Candidate(3, 16).name == "W3A16"
    # finer scales rank higher at the same bitwidths; bitwidths first
    assert [c.name for c in parse_candidates("W4A16,W4A16B64,W8A16,W4A16B32,W3A16B32")] == [
        "W8A16", "W4A16B32", "W4A16B64", "W4A16", "W3A16B32",
    ]  # fmt: skip
    for bad in ("W16A16B32", "W4A16B", "W4B32A16"):
        with pytest.raises(InvalidOptionError, match="candidate"):
            Candidate.parse(bad)
    with pytest.raises(InvalidOptionError, match="block_size"):
        Candidate(4, 8, -32)


def test_memory_cost_counts_each_further_block_scale() -> None:
    net = _net()
    x = torch.randn(1, 64)
    groups = {g.name: g for g in find_groups(QuantSim(net, x, per_channel=True, config=ASYMMETRIC))[0]}
    first, last = groups["0"], groups["4"]
    assert first.weight_blocks == [("0.weight", 0, 96, 64, 0, 0)] and first.zero_points
    # 96 channels × one further block × (float32 scale + 3-bit zero point)
    assert first.cost(B32, "memory") == (64 * 96 * 3 + 96 * 1 * (32 + 3)) / 8
    assert first.cost(W3, "memory") == 64 * 96 * 3 / 8
    assert last.cost(B32, "memory") == last.cost(W3, "memory") == 48 * 10 * 3 / 8  # 48 inputs: no whole blocks
    assert first.cost(B32, "bitops") == first.cost(W3, "bitops")
    # LPBQ sim (symmetric): its own blocks cost an integer multiplier each, decompressed_bw - weight bits
    lpbq = QuantSim(net, x, param_bw=4, per_channel=True, param_block_size=32, decompressed_bw=8)
    group = find_groups(lpbq)[0][0]
    assert group.weight_blocks == [("0.weight", 0, 96, 64, 32, 8)] and not group.zero_points
    assert group.cost(Candidate(4, 16), "memory") == (64 * 96 * 4 + 96 * 2 * 4) / 8
    assert group.cost(Candidate(3, 16), "memory") == (64 * 96 * 3 + 96 * 2 * 5) / 8
    assert LayerGroup("x", params=10).cost(Candidate(4, 8), "memory") == 5.0  # no weight that takes blocks


def test_assembler_switches_layouts_and_matches_a_blockwise_sim(data) -> None:
    amp = _amp(data, "W8A16,W3A16B32,W3A16")
    assert amp.assembler is not None
    weights = amp.sim.param_quantizers()
    reference = QuantSim(_net(), data["calib"][0][:1], param_bw=3, act_bw=16, per_channel=True,
                         config={**ASYMMETRIC, "param_block_size": 32})  # fmt: skip
    reference.compute_encodings(data["calib"], progress=False)
    for there_and_back in (W3, B32, W8, B32):  # each switch restores the candidate's own layout
        amp.assembler.set_all({g.name: there_and_back for g in amp.groups})
    for name in ("0.weight", "2.weight", "4.weight"):
        got, want = weights[name].encoding, reference.param_quantizers()[name].encoding
        assert got is not None and want is not None
        assert (got.block_size, got.bitwidth, got.symmetric) == (want.block_size, want.bitwidth, False)
        torch.testing.assert_close(got.scale, want.scale)
        torch.testing.assert_close(got.offset, want.offset)
    assert weights["0.weight"].encoding.scale.shape == (96, 2) and weights["4.weight"].block_size is None
    amp.assembler.set_all({g.name: W3 for g in amp.groups})
    assert weights["0.weight"].block_size is None and weights["0.weight"].encoding.scale.shape == (96,)


def test_blocks_buy_accuracy_and_the_chosen_mix_exports_for_onnx_runtime(data, tmp_path) -> None:
    # all at W3 per channel is 0.375 of W8's bytes; the budget leaves room for block scales on top
    amp = _amp(data, "W8A16,W3A16B32,W3A16", max_cost=0.45)
    sensitivity = amp.sensitivity
    for group in ("0", "2"):  # blocks lower each blockable group's error at the same bits
        assert sensitivity[group][B32.name] > sensitivity[group][W3.name]
    assert amp.assembler is not None
    at_b32, at_w3 = (amp.assembler.cache[c]["4.weight"] for c in (B32, W3))  # 48 inputs: the same grid
    assert at_b32 is not None and at_w3 is not None and torch.equal(at_b32.scale, at_w3.scale)
    by_name = {c.name: c for c in amp.candidates}
    expected = sum(g.cost(by_name[amp.chosen.config[g.name]], "memory") for g in amp.groups)
    assert amp.chosen.weight_bytes == pytest.approx(expected)
    assert any(amp.chosen.config[g] == B32.name for g in ("0", "2"))  # a blockable group took blocks
    files = amp.sim.export(tmp_path, "mix")
    params = {e["name"]: e for e in json.loads(files["encodings"].read_text())["param_encodings"]}
    for group in ("0", "2"):  # 1.0.0 (the oldest version with blocks): PER_BLOCK where the mix put blocks
        blocked = amp.chosen.config[group] == B32.name
        assert (params[f"{group}.weight"]["enc_type"] == "PER_BLOCK") == blocked
        assert params[f"{group}.weight"].get("block_size") == (32 if blocked else None)
    x = data["held_out"][0]
    with torch.no_grad():
        want = amp.sim.model(x).numpy()
    step = float(amp.sim.layers()["4"].output_quantizers[0].scale)
    assert np.abs(run_onnx(files["onnx"], x) - want).max() <= step * 1.01  # one 16-bit step (plus float error)


@pytest.mark.parametrize("config", [ASYMMETRIC, {"param_block_size": 32}], ids=["asymmetric", "blockwise-sim"])
def test_gptq_candidates_are_rounded_on_the_sims_grids(data, config) -> None:
    # rounding options with their default config ("default": symmetric, per channel): the candidates still follow
    # the sim's config (a blockwise sim used to fail with "the file has per-channel encodings")
    amp = _amp(data, "W8A16,W4A16", rounding="gptq", rounding_options=GptqConfig(progress=False), config=config)
    rounded = amp.assembler.rounded[Candidate(4, 16)] if amp.assembler else None
    assert rounded is not None
    enc = rounded.encodings["0.weight"]
    assert enc.symmetric == config.get("param_symmetric", True)
    assert enc.block_size == config.get("param_block_size")


def test_block_candidates_are_rounded_and_rerounded_on_blocks(data) -> None:
    amp = _amp(data, "W8A16,W3A16B32,W3A16", rounding="gptq", max_cost=0.45, reround_keep="always")
    assert amp.assembler is not None
    assert amp.assembler.rounded[B32].encodings["0.weight"].block_size == 32
    assert amp.assembler.rounded[W3].encodings["0.weight"].block_size is None
    assert amp.rerounded
    for group in amp.groups:
        quantizer = amp.sim.param_quantizers()[f"{group.name}.weight"]
        blocked = amp.chosen.config[group.name] == B32.name and group.name != "4"
        assert quantizer.frozen and (quantizer.block_size == 32) == blocked
    cfg = mix_config(ASYMMETRIC, {"0": B32, "2": W3})
    assert cfg.layers["0"].param_block_size == 32 and cfg.layers["2"].param_block_size is None


def test_block_candidates_on_an_lpbq_sim_are_refused(data) -> None:
    sim = QuantSim(_net(), data["calib"][0][:1], param_bw=4, act_bw=16, per_channel=True, param_block_size=32,
                   decompressed_bw=8)  # fmt: skip
    with pytest.raises(InvalidOptionError, match="LPBQ"):
        mixed_precision(sim, calibration=data["calib"], candidates="W4A16,W3A16B32", progress=False)
    with pytest.raises(InvalidOptionError, match="below 8 bits"):  # LPBQ at 8 of 8 bits: nothing to decompress
        mixed_precision(sim, calibration=data["calib"], candidates="W8A16,W4A16", progress=False)


def test_cli_takes_block_candidates() -> None:
    parser = argparse.ArgumentParser()
    add_amp_options(parser)
    assert parser.parse_args(["--amp", "W8A16,W3A16B64"]).amp == "W8A16,W3A16B64"
    with pytest.raises(SystemExit):
        parser.parse_args(["--amp", "W8A16,W3A16B"])
