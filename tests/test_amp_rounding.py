"""AMP with AdaRound candidates (leantorch.ptq.amp_rounding, ``rounding="adaround"`` of mixed_precision).

The tests on the AdaRound-rounded AMP result share one run (two AdaRound passes over a tiny conv net), which took
about 30 s on the shared 2-core machine they were written on; they are marked slow."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import leantorch as lt
from leantorch.cli_amp import add_amp_options
from leantorch.errors import InvalidOptionError
from leantorch.ptq.amp_rounding import float_copy
from leantorch.ptq.mixed_precision import MixedPrecisionResult, mixed_precision
from leantorch.quant.encodings_file import read_encodings

ITERATIONS = 40
CANDIDATES = "W16A16,W4A16,W3A16"


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10)
    ).eval()


@pytest.fixture(scope="module")
def data() -> dict[str, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return {
        "calib": [torch.randn(32, 3, 8, 8, generator=gen) for _ in range(2)],
        "held_out": [torch.randn(64, 3, 8, 8, generator=gen)],
    }


def noise_score(net: nn.Module, held_out: list[torch.Tensor]) -> Any:
    """Negative relative output noise power on held-out inputs (0 for the float model)."""
    with torch.no_grad():
        ref = torch.cat([net(x) for x in held_out])

    def score(model: nn.Module) -> float:
        with torch.no_grad():
            out = torch.cat([model(x) for x in held_out])
        return -float((out - ref).pow(2).sum() / ref.pow(2).sum())

    return score


def _amp(net: nn.Module, data: dict[str, list[torch.Tensor]], rounding: str, **kw: Any) -> MixedPrecisionResult:
    # Float inputs: each layer's rounding does not count on the layers before it being at the same candidate, so a
    # group lowered alone (phase 1) gets the rounding's full benefit.
    options = lt.AdaroundConfig(iterations=ITERATIONS, progress=False, use_quantized_inputs=False)
    return mixed_precision(
        net, data["calib"][0][:1], data["calib"], noise_score(net, data["held_out"]), candidates=CANDIDATES,
        allowed_drop=0.05, cost="memory", rounding=rounding, rounding_options=options, progress=False, **kw,
    )  # fmt: skip


@pytest.fixture(scope="module")
def rounded(data: dict[str, list[torch.Tensor]]) -> tuple[nn.Module, dict[str, torch.Tensor], MixedPrecisionResult]:
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    return net, before, _amp(net, data, "adaround")


def _all_at(amp: MixedPrecisionResult, name: str) -> None:
    assert amp.assembler is not None
    cand = next(c for c in amp.candidates if c.name == name)
    amp.assembler.set_all({g.name: cand for g in amp.groups})


def _weights(amp: MixedPrecisionResult) -> dict[str, torch.Tensor]:
    layers = amp.sim.layers()
    names = [n for g in amp.groups for n in g.param_names if n.endswith(".weight")]
    return {n: layers[n.rpartition(".")[0]].module.weight.detach().clone() for n in names}


@pytest.mark.slow
@pytest.mark.parametrize("bw", [4, 3])
def test_candidate_weights_and_encodings_are_adarounds(rounded, data, tmp_path, bw: int) -> None:
    net, _, amp = rounded
    want, path = lt.adaround(
        net, data["calib"][0][:1], data["calib"], param_bw=bw, act_bw=16, per_channel=True, iterations=ITERATIONS,
        num_batches=2, progress=False, path=tmp_path, use_quantized_inputs=False,
    )  # fmt: skip
    _all_at(amp, f"W{bw}A16")
    file = read_encodings(path)["param_encodings"]
    for name, got in _weights(amp).items():
        assert torch.equal(got, want.get_parameter(name)), name
        q = amp.sim.param_quantizers()[name]
        assert q.frozen and q.bitwidth == bw
        assert q.encoding is not None
        np.testing.assert_allclose(q.encoding.scale.flatten().numpy(), [e["scale"] for e in file[name]], rtol=1e-6)


def test_gptq_candidates_are_asymmetric_gptqs_of_the_float_model(data, tmp_path) -> None:
    """``rounding="gptq"``: a group at W4A16 holds exactly what ``lt.gptq(asymmetric=True)`` gives on the AMP
    calibration data (MSE grids), with that file's frozen encodings; the float model is untouched."""
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    amp = mixed_precision(
        net, data["calib"][0][:1], data["calib"], noise_score(net, data["held_out"]), candidates=CANDIDATES,
        allowed_drop=0.05, cost="memory", rounding="gptq", progress=False,
    )  # fmt: skip
    want, path = lt.gptq(
        net, data["calib"][0][:1], data["calib"], param_bw=4, act_bw=16, per_channel=True, num_batches=2,
        asymmetric=True, param_scheme="mse", progress=False, path=tmp_path,
    )  # fmt: skip
    _all_at(amp, "W4A16")
    file = read_encodings(path)["param_encodings"]
    for name, got in _weights(amp).items():
        assert torch.equal(got, want.get_parameter(name)), name
        q = amp.sim.param_quantizers()[name]
        assert q.frozen and q.bitwidth == 4 and q.encoding is not None
        np.testing.assert_allclose(q.encoding.scale.flatten().numpy(), [e["scale"] for e in file[name]], rtol=1e-6)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.slow
def test_set_group_switches_weights_back_and_forth_exactly(rounded) -> None:
    net, before, amp = rounded
    assert amp.assembler is not None
    by_name = {c.name: c for c in amp.candidates}
    group = amp.groups[1]
    name = group.param_names[0]
    weights = {}
    for cand in ("W4A16", "W3A16", "W16A16"):
        _all_at(amp, cand)
        weights[cand] = _weights(amp)[name]
    assert torch.equal(weights["W16A16"], before[name])  # 16 bits: the float weight, not rounded
    assert not torch.equal(weights["W4A16"], weights["W3A16"])
    for cand in ("W3A16", "W16A16", "W4A16", "W3A16", "W16A16"):
        amp.assembler.set_group(group, by_name[cand])
        assert torch.equal(_weights(amp)[name], weights[cand]), cand
        assert amp.sim.param_quantizers()[name].frozen == (cand != "W16A16")
        assert amp.sim.param_quantizers()[name].bitwidth == by_name[cand].param_bw


@pytest.mark.slow
def test_rounded_candidates_score_higher_in_phase1(rounded, data) -> None:
    _, _, amp = rounded
    nearest = _amp(_net(), data, "nearest")
    for g in amp.groups:
        for cand in ("W4A16", "W3A16"):
            assert amp.sensitivity[g.name][cand] >= nearest.sensitivity[g.name][cand], (g.name, cand)
    gain = [amp.sensitivity[g.name]["W3A16"] - nearest.sensitivity[g.name]["W3A16"] for g in amp.groups]
    assert sum(gain) > 0.1 * -sum(nearest.sensitivity[g.name]["W3A16"] for g in amp.groups)  # noise cut > 10%


@pytest.mark.slow
def test_chosen_sim_exports_the_rounded_weights(rounded, data, tmp_path: Path) -> None:
    _, _, amp = rounded
    assert amp.assembler is not None
    by_name = {c.name: c for c in amp.candidates}
    config = {g.name: by_name[c] for g, c in zip(amp.groups, ("W3A16", "W16A16", "W4A16"))}
    amp.assembler.set_all(config)
    files = amp.sim.export(tmp_path, "amp")
    encodings = json.loads(files["encodings"].read_text())["param_encodings"]
    for g in amp.groups:
        assert encodings[g.param_names[0]][0]["bitwidth"] == config[g.name].param_bw
    saved = torch.load(files["pth"])
    for name, w in _weights(amp).items():
        assert torch.equal(saved[name], w), name
    session = ort.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
    x = data["held_out"][0][:8]
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    want = amp.sim.model(x).detach().numpy()
    step = float(amp.sim.quantizers()["5.output_quantizers.0"].encoding.scale)
    assert np.abs(got - want).max() <= 1.01 * step


@pytest.mark.slow
def test_input_model_is_unchanged(rounded) -> None:
    net, before, _ = rounded
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_bad_options_are_typed_errors(data) -> None:
    net = _net()
    with pytest.raises(InvalidOptionError, match="rounding"):
        mixed_precision(net, data["calib"][0][:1], data["calib"], candidates=CANDIDATES, rounding="gptq2")
    with pytest.raises(InvalidOptionError, match="rounding_options"):
        mixed_precision(net, data["calib"][0][:1], data["calib"], candidates=CANDIDATES, rounding_options={"a": 1})
    with pytest.raises(InvalidOptionError, match="GptqConfig"):  # the options of the other rounding
        mixed_precision(
            net, data["calib"][0][:1], data["calib"], candidates=CANDIDATES, rounding="gptq",
            rounding_options=lt.AdaroundConfig(),
        )  # fmt: skip
    with pytest.raises(InvalidOptionError, match="correct_bias"):  # a re-fitted bias would not follow its weights
        mixed_precision(
            net, data["calib"][0][:1], data["calib"], candidates=CANDIDATES, rounding="gptq",
            rounding_options=lt.GptqConfig(correct_bias=True),
        )  # fmt: skip
    with pytest.raises(InvalidOptionError, match="callable"):
        mixed_precision(
            net, data["calib"][0][:1], lambda m: None, eval_fn=lambda m: 1.0, candidates=CANDIDATES, rounding="adaround"
        )
    p = argparse.ArgumentParser()
    add_amp_options(p)
    assert p.parse_args(["--amp", CANDIDATES, "--amp-rounding", "adaround"]).amp_rounding == "adaround"
    assert p.parse_args([]).amp_rounding == "nearest"
    with pytest.raises(SystemExit):
        p.parse_args(["--amp-rounding", "upwards"])


def test_float_copy_of_a_sim_computes_the_float_model(data) -> None:
    net = _net()
    sim = lt.QuantSim(net, data["calib"][0][:1], per_channel=True)
    sim.compute_encodings(data["calib"], progress=False)
    copy = float_copy(sim)
    x = data["held_out"][0]
    torch.testing.assert_close(copy(x), net(x), rtol=0, atol=0)
    assert set(dict(copy.named_parameters())) == {f"{n}.{p}" for n in ("0", "2", "5") for p in ("weight", "bias")}


@pytest.mark.slow
def test_quantsim_input_gets_the_same_rounded_weights(rounded, data) -> None:
    net, _, amp = rounded
    sim = lt.QuantSim(net, data["calib"][0][:1], param_bw=16, act_bw=16, per_channel=True)
    options = lt.AdaroundConfig(iterations=ITERATIONS, progress=False, use_quantized_inputs=False)
    in_place = mixed_precision(
        sim, calibration=data["calib"], eval_fn=noise_score(net, data["held_out"]), candidates=CANDIDATES,
        allowed_drop=0.05, cost="memory", rounding="adaround", rounding_options=options, progress=False,
    )  # fmt: skip
    for cand in ("W4A16", "W3A16"):
        _all_at(amp, cand)
        _all_at(in_place, cand)
        for name, w in _weights(amp).items():
            assert torch.equal(_weights(in_place)[name], w), (cand, name)
