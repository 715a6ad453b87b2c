"""Re-rounding AMP's chosen mix (leantorch.ptq.amp_reround, ``reround`` of mixed_precision)."""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import leantorch as lt
from leantorch.cli import main
from leantorch.cli_amp import add_amp_options
from leantorch.errors import CalibrationDataError, InvalidOptionError
from leantorch.ptq.adaround import AdaroundConfig
from leantorch.ptq.amp_groups import Candidate, parse_candidates
from leantorch.ptq.amp_reround import mix_config, needs_reround, reround_mix
from leantorch.ptq.amp_rounding import GPTQ_DEFAULTS
from leantorch.ptq.gptq import GptqConfig
from leantorch.ptq.mixed_precision import MixedPrecisionResult, mixed_precision

from .test_amp_rounding import noise_score

CANDIDATES = "W16A16,W4A16,W3A16"
W16, W4, W3 = parse_candidates(CANDIDATES)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 2 * 2, 10),
    ).eval()  # fmt: skip


@pytest.fixture(scope="module")
def data() -> dict[str, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return {
        "calib": [torch.randn(64, 3, 8, 8, generator=gen) for _ in range(2)],
        "held_out": [torch.randn(128, 3, 8, 8, generator=gen)],
    }


def _amp(net: nn.Module, data: dict[str, list[torch.Tensor]], **kw: Any) -> MixedPrecisionResult:
    # no drop allowed and a budget: the costliest point of the greedy list within 0.22 of W16's weight bytes, a mix
    # of W4 and W3 (all at W4 would be 0.25)
    return mixed_precision(
        net, data["calib"][0][:1], data["calib"], noise_score(net, data["held_out"]), candidates=CANDIDATES,
        allowed_drop=0.0, cost="memory", max_cost=0.22, rounding="gptq", progress=False, **kw,
    )  # fmt: skip


def _weights(amp: MixedPrecisionResult) -> dict[str, torch.Tensor]:
    layers = amp.sim.layers()
    return {n: layers[n.rpartition(".")[0]].module.weight.detach().clone() for g in amp.groups for n in g.param_names}


@pytest.fixture(scope="module")
def pair(data) -> tuple[MixedPrecisionResult, MixedPrecisionResult]:
    """The same search with and without re-rounding."""
    return _amp(_net(), data), _amp(_net(), data, reround=False)


def test_mix_config_adds_a_rule_per_group_over_the_base() -> None:
    base = {"param_symmetric": False, "layers": {"0": {"per_channel": True, "param_bw": 8}}}
    cfg = mix_config(base, {"0": W4, "2": W16})
    assert not cfg.param_symmetric
    assert (cfg.layers["0"].per_channel, cfg.layers["0"].param_bw, cfg.layers["0"].act_bw) == (True, 4, 16)
    assert cfg.layers["2"].param_bw == 32  # 16-bit weights: round-to-nearest in AMP, nothing to round
    assert base["layers"] == {"0": {"per_channel": True, "param_bw": 8}}  # the caller's dict is not changed


def test_needs_reround_only_for_a_mix_with_low_bit_weights() -> None:
    assert not needs_reround({"a": W4, "b": W4})
    assert not needs_reround({"a": W16, "b": Candidate(16, 8)})
    assert needs_reround({"a": W16, "b": W3})


def test_reround_mix_is_one_gptq_with_per_layer_bitwidths(data, tmp_path) -> None:
    """Exactly what ``lt.gptq`` gives with each layer's bitwidths in the config's ``layers``."""
    net = _net()
    sim = lt.QuantSim(net, data["calib"][0][:1], param_bw=16, act_bw=16, per_channel=True)
    mix = {"0": W4, "2": W3, "4": W16, "7": W3}
    found = reround_mix(net, data["calib"][0][:1], data["calib"], sim, mix, GPTQ_DEFAULTS, False)
    layers = {"0": {"param_bw": 4}, "2": {"param_bw": 3}, "4": {"param_bw": 32}, "7": {"param_bw": 3}}
    want, _ = lt.gptq(
        net, data["calib"][0][:1], data["calib"], param_bw=4, act_bw=16, per_channel=True, num_batches=2,
        asymmetric=True, param_scheme="mse", config={"layers": layers}, progress=False, path=tmp_path,
    )  # fmt: skip
    assert sorted(found.weights) == ["0.weight", "2.weight", "7.weight"]  # the 16-bit layer stays float
    for name, w in found.weights.items():
        assert torch.equal(w, want.get_parameter(name)), name
        assert found.encodings[name].bitwidth == int(layers[name[0]]["param_bw"])


def test_rerounded_sim_holds_the_rerounded_weights_and_its_score(pair, data) -> None:
    amp, plain = pair
    assert amp.chosen.config == plain.chosen.config and len(set(amp.chosen.config.values())) == 2
    assert plain.reround_score is None and not plain.rerounded and plain.final_score == plain.chosen.score
    assert amp.reround_score is not None
    by_name = {c.name: c for c in amp.candidates}
    mix = {g: by_name[c] for g, c in amp.chosen.config.items()}
    found = reround_mix(_net(), data["calib"][0][:1], data["calib"], amp.sim, mix, GPTQ_DEFAULTS, False)
    got, chosen = _weights(amp), _weights(plain)
    quantizers = amp.sim.param_quantizers()
    for name, w in got.items():
        want = found.weights[name] if amp.rerounded else chosen[name]
        assert torch.equal(w, want), name
        assert quantizers[name].frozen and quantizers[name].bitwidth == mix[name.rpartition(".")[0]].param_bw
    score = noise_score(_net(), data["held_out"])(amp.sim.model)
    assert score == pytest.approx(amp.final_score, abs=1e-6)


def test_rerounding_lowers_the_output_error(pair) -> None:
    """Each layer fitted to the inputs its real upstream gives: here about a third less noise power (seed 0)."""
    amp, plain = pair
    assert amp.rerounded and amp.reround_score is not None and plain.chosen.score is not None
    assert amp.reround_score > plain.chosen.score
    assert -amp.reround_score < 0.9 * -plain.chosen.score, (amp.reround_score, plain.chosen.score)


@pytest.fixture
def worse_rerounding(monkeypatch) -> list[Any]:
    """The re-rounding made worse (its weights × 1.5); returns the list of what it gave, newest last."""
    import leantorch.ptq.amp_reround as module

    found: list[Any] = []

    def worse(*args: Any, **kw: Any) -> Any:
        found.append(reround_mix(*args, **kw))
        found[-1].weights = {n: w * 1.5 for n, w in found[-1].weights.items()}
        return found[-1]

    monkeypatch.setattr(module, "reround_mix", worse)
    return found


def test_a_worse_rerounding_is_not_kept(data, worse_rerounding) -> None:
    """A re-rounded mix scoring below the chosen one leaves the sim on the chosen mix."""
    amp = _amp(_net(), data)
    plain = _amp(_net(), data, reround=False)
    assert amp.reround_score is not None and not amp.rerounded
    assert amp.chosen.score is not None and amp.reround_score < amp.chosen.score
    for name, w in _weights(amp).items():
        assert torch.equal(w, _weights(plain)[name]), name
    assert noise_score(_net(), data["held_out"])(amp.sim.model) == pytest.approx(amp.chosen.score, abs=1e-6)


def test_reround_keep_always_keeps_a_worse_rerounding(data, worse_rerounding) -> None:
    """``reround_keep="always"``: the sim holds the re-rounded weights even where they score below the chosen mix."""
    found = worse_rerounding
    amp = _amp(_net(), data, reround_keep="always")
    assert amp.rerounded and amp.chosen.score is not None and amp.reround_score is not None
    assert amp.reround_score < amp.chosen.score and amp.final_score == amp.reround_score
    for name, w in _weights(amp).items():
        assert torch.equal(w, found[-1].weights[name]), name
    assert noise_score(_net(), data["held_out"])(amp.sim.model) == pytest.approx(amp.reround_score, abs=1e-6)
    with pytest.raises(InvalidOptionError, match="reround_keep"):
        lt.MixedPrecisionConfig(reround_keep="maybe")  # type: ignore[arg-type]


def test_reround_data_is_what_the_chosen_mix_is_rerounded_on(data) -> None:
    """The search on two batches, the re-rounding (and activation recalibration) on four."""
    gen = torch.Generator().manual_seed(3)
    more = data["calib"] + [torch.randn(64, 3, 8, 8, generator=gen) for _ in range(2)]
    amp = _amp(_net(), data, reround_data=more)
    assert amp.rerounded
    by_name = {c.name: c for c in amp.candidates}
    mix = {g: by_name[c] for g, c in amp.chosen.config.items()}
    found = reround_mix(_net(), more[0][:1], more, amp.sim, mix, GPTQ_DEFAULTS, False)
    for name, w in _weights(amp).items():
        assert torch.equal(w, found.weights[name]), name
    with pytest.raises(CalibrationDataError, match="reround_data"):
        _amp(_net(), data, reround_data=[])


def test_reround_options_round_the_mix_and_rounding_options_the_candidates(pair, data) -> None:
    """Candidates rounded each for its layers' float inputs (what phase 1 measures), the mix by asymmetric GPTQ."""
    float_inputs = GptqConfig(use_quantized_inputs=False, param_scheme="mse", progress=False)
    amp = _amp(_net(), data, rounding_options=float_inputs, reround_options=GPTQ_DEFAULTS)
    plain = _amp(_net(), data, rounding_options=float_inputs, reround=False)
    assert amp.chosen.config == plain.chosen.config and amp.rerounded
    by_name = {c.name: c for c in amp.candidates}
    mix = {g: by_name[c] for g, c in amp.chosen.config.items()}
    found = reround_mix(_net(), data["calib"][0][:1], data["calib"], amp.sim, mix, GPTQ_DEFAULTS, False)
    for name, w in _weights(amp).items():
        assert torch.equal(w, found.weights[name]), name
    default_search = _weights(pair[1])  # candidates rounded by asymmetric GPTQ: other weights
    assert any(not torch.equal(w, default_search[n]) for n, w in _weights(plain).items())
    with pytest.raises(InvalidOptionError, match="GptqConfig"):
        lt.MixedPrecisionConfig(rounding="gptq", reround_options=AdaroundConfig())


def test_bad_reround_option_and_cli_flag() -> None:
    with pytest.raises(InvalidOptionError, match="reround"):
        lt.MixedPrecisionConfig(reround="yes")  # type: ignore[arg-type]
    p = argparse.ArgumentParser()
    add_amp_options(p)
    assert p.parse_args([]).amp_reround
    assert not p.parse_args(["--no-amp-reround"]).amp_reround
    assert p.parse_args([]).amp_reround_keep == "if_better"
    assert p.parse_args(["--amp-reround-keep", "always"]).amp_reround_keep == "always"


FACTORY = """
import torch
from torch import nn


def net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 2 * 2, 10),
    )
"""


def test_cli_amp_with_gptq_rounding_reports_and_exports_the_rerounded_mix(tmp_path, capsys, monkeypatch) -> None:
    """``--amp-rounding gptq`` with a budget: both scores are printed, and the exported weights lie on the frozen
    encodings' grids at the chosen bitwidths, within the budget; ``--no-amp-reround`` prints no re-rounded score.
    (The 4-layer net of the other tests: random ResNetSmall logits keep their argmax even at W2.)"""
    (tmp_path / "amp_reround_cli_net.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    data = tmp_path / "d.npy"
    np.save(data, np.random.default_rng(0).standard_normal((64, 3, 8, 8)).astype(np.float32))
    args = ["quantize", "--model", "amp_reround_cli_net:net", "--data", str(data), "--num-samples", "64"]
    args += ["--batch-size", "32", "--amp", "W8A16,W4A16,W3A16", "--amp-cost", "memory", "--amp-max-cost", "0.45"]
    args += ["--allowed-drop", "0.0", "--amp-rounding", "gptq", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert "re-rounded:" in capsys.readouterr().out
    encodings = json.loads((tmp_path / "a" / "model.encodings").read_text())["param_encodings"]
    saved = torch.load(tmp_path / "a" / "model.pth")
    bits = {n: e[0]["bitwidth"] for n, e in encodings.items()}
    assert len(set(bits.values())) > 1  # a mix
    assert sum(saved[n].numel() * b for n, b in bits.items()) <= 0.45 * 8 * sum(saved[n].numel() for n in bits)
    for name, entries in encodings.items():  # every exported weight lies on its grid
        scale = torch.tensor([e["scale"] for e in entries]).view(-1, *[1] * (saved[name].dim() - 1))
        steps = saved[name] / scale  # whole numbers on the grid (the offsets are whole numbers too)
        assert torch.allclose(steps, steps.round(), atol=1e-3), name
    assert main([*args, "--no-amp-reround", "--out", str(tmp_path / "b")]) == 0
    assert "re-rounded:" not in capsys.readouterr().out
