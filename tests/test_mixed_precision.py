"""Automatic mixed precision (leantorch.ptq.mixed_precision): groups, phase 1, the Pareto list, the choice, export."""

from __future__ import annotations

import json
import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import leantorch as lt
from leantorch.cli import main
from leantorch.errors import CalibrationDataError, InvalidOptionError
from leantorch.evaluation import sqnr_score
from leantorch.models import ResNetSmall
from leantorch.ptq.amp_groups import Candidate, find_groups, parse_candidates
from leantorch.ptq.amp_search import first_within, greedy_steps, search_front
from leantorch.ptq.auto import EvalFunctionError
from leantorch.ptq.mixed_precision import MixedPrecisionResult, mixed_precision


def _mlp(outlier: float | None = None) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    if outlier is not None:  # one weight far outside the others: a per-tensor 4-bit grid rounds the rest to 0
        with torch.no_grad():
            net[2].weight[3, 5] = outlier
    return net


@pytest.fixture(scope="module")
def data() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(64, 16, generator=gen) for _ in range(2)]


@pytest.fixture(scope="module")
def sensitive(data: list[torch.Tensor]) -> tuple[nn.Module, dict[str, torch.Tensor], MixedPrecisionResult]:
    net = _mlp(outlier=3.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    amp = mixed_precision(
        net, data[0][:1], data, candidates=("W4A8", "W8A8"), allowed_drop=6.0, score="sqnr", per_channel=False,
        front_evals=4, progress=False,
    )  # fmt: skip
    return net, before, amp


def test_candidates_parse_and_sort_highest_first() -> None:
    assert [c.name for c in parse_candidates("w4a8,W8A16, W8A8")] == ["W8A16", "W8A8", "W4A8"]
    assert parse_candidates([(4, 8), Candidate(8, 8), "W4A8"]) == (Candidate(8, 8), Candidate(4, 8))
    assert Candidate.parse("W8A16").bit_product == 128
    for bad in ("fp16", "W1A8", "W8A32", "W4"):
        with pytest.raises(InvalidOptionError):
            parse_candidates(["W8A8", bad])
    with pytest.raises(InvalidOptionError, match="at least two"):
        parse_candidates("W8A8,w8a8")


def test_bad_options_are_typed_errors(data: list[torch.Tensor]) -> None:
    net, x = _mlp(), data[0][:1]
    with pytest.raises(InvalidOptionError, match="allowed_drop"):
        mixed_precision(net, x, data, allowed_drop=-0.1, progress=False)
    with pytest.raises(InvalidOptionError, match="allowed_drop"):
        mixed_precision(net, x, data, allowed_drop=math.nan, progress=False)
    with pytest.raises(InvalidOptionError, match="candidate"):
        mixed_precision(net, x, data, candidates=("W8A8", "fp16"), progress=False)
    with pytest.raises(InvalidOptionError, match="unknown option"):
        mixed_precision(net, x, data, allowed_dorp=0.1, progress=False)
    with pytest.raises(CalibrationDataError):
        mixed_precision(net, x, None, progress=False)
    with pytest.raises(CalibrationDataError):
        mixed_precision(net, x, [], progress=False)
    with pytest.raises(EvalFunctionError, match="finite"):
        mixed_precision(net, x, data, lambda m: math.nan, candidates="W4A8,W8A8", progress=False)


def test_groups_own_weights_and_the_activations_after_them() -> None:
    sim = lt.QuantSim(_mlp(), torch.randn(1, 16))
    groups, orphans = find_groups(sim)
    assert [g.name for g in groups] == ["0", "2", "4"] and orphans == []
    assert groups[0].activation_names == ["input_quantizers.0", "1.output_quantizers.0"]
    assert [g.param_names for g in groups] == [["0.weight"], ["2.weight"], ["4.weight"]]
    assert [g.params for g in groups] == [16 * 32, 32 * 32, 32 * 10]


def test_phase1_table_is_complete_and_the_outlier_layer_is_the_sensitive_one(sensitive) -> None:
    _, _, amp = sensitive
    assert set(amp.sensitivity) == {"0", "2", "4"}
    assert all(set(row) == {"W8A8", "W4A8"} for row in amp.sensitivity.values())
    lowered = {g: row["W4A8"] for g, row in amp.sensitivity.items()}
    assert min(lowered, key=lambda g: lowered[g]) == "2"
    # the outlier rounds layer 2's other weights to 0 at 4 bits: far below the others' loss
    assert lowered["2"] < min(lowered["0"], lowered["4"]) - 6.0
    # a lower candidate never scores better than the highest by more than noise
    assert all(row["W4A8"] <= row["W8A8"] + 0.5 for row in amp.sensitivity.values())


def test_pareto_list_falls_in_cost_and_the_choice_meets_the_drop(sensitive) -> None:
    _, _, amp = sensitive
    costs = [p.cost for p in amp.front]
    assert all(a > b for a, b in zip(costs, costs[1:]))
    assert set(amp.front[0].config.values()) == {"W8A8"} and set(amp.front[-1].config.values()) == {"W4A8"}
    # bit-operations: MACs × weight bits × activation bits, summed over the groups
    macs = {g.name: g.macs for g in amp.groups}
    assert macs == {"0": 16 * 32, "2": 32 * 32, "4": 32 * 10}
    assert amp.front[0].cost == sum(m * 64 for m in macs.values())
    assert amp.met and amp.chosen.score is not None and amp.chosen.score >= amp.target
    assert amp.chosen.config["2"] == "W8A8"  # the sensitive layer keeps the higher candidate
    assert "W4A8" in amp.chosen.config.values()  # and something was lowered


def test_returned_sim_has_the_chosen_bitwidths_and_the_model_is_untouched(sensitive, data) -> None:
    net, before, amp = sensitive
    quantizers = {**amp.sim.quantizers(), **amp.sim.param_quantizers()}
    for name, bw in amp.bitwidths().items():
        assert quantizers[name].bitwidth == bw and quantizers[name].encoding.bitwidth == bw
    assert amp.bitwidths()["2.weight"] == 8
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not any(isinstance(m, lt.Quantizer) for m in net.modules())
    # the sim scores what the search measured for the chosen point
    score = sqnr_score(net, data)
    assert score(amp.sim.model) == pytest.approx(amp.chosen.score, abs=1e-6)


def test_export_carries_the_chosen_bitwidths_and_onnx_runtime_runs_it(sensitive, data, tmp_path) -> None:
    _, _, amp = sensitive
    files = amp.sim.export(tmp_path, "amp")
    encodings = json.loads(files["encodings"].read_text())
    for name, bw in amp.bitwidths().items():
        if name.endswith(".weight"):
            assert encodings["param_encodings"][name][0]["bitwidth"] == bw
    assert {e[0]["bitwidth"] for e in encodings["activation_encodings"].values()} == {8}
    session = ort.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
    x = data[1][:8]
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    want = amp.sim.model(x).detach().numpy()
    step = float(amp.sim.quantizers()["4.output_quantizers.0"].encoding.scale)
    assert np.abs(got - want).max() <= 1.01 * step


def test_a_quantsim_is_configured_in_place_with_16_bit_activations(data) -> None:
    sim = lt.QuantSim(_mlp(), data[0][:1])
    amp = mixed_precision(
        sim, calibration=data, candidates="W8A8,W8A16", allowed_drop=0.0, score="sqnr", progress=False
    )
    assert amp.sim is sim
    assert amp.met and amp.chosen.score is not None and amp.chosen.score >= amp.reference_score
    acts = {amp.bitwidths()[n] for g in amp.groups for n in g.activation_names}
    assert acts == {16}  # no drop allowed: every group stays at W8A16


def test_unreachable_drop_keeps_every_group_at_the_highest(data) -> None:
    amp = mixed_precision(_mlp(), data[0][:1], data, candidates="W2A8,W8A8", allowed_drop=0.0, progress=False)
    assert amp.fp32_score == 1.0  # top-1 agreement of the float model with itself
    if not amp.met:
        assert set(amp.chosen.config.values()) == {"W8A8"} and amp.chosen is amp.front[0]


def test_a_budget_limits_the_choice_to_the_points_within_it(data) -> None:
    options = {"candidates": "W4A8,W8A8", "cost": "memory", "score": "sqnr", "per_channel": False, "progress": False}
    net = _mlp(outlier=3.0)
    # no drop allowed: nothing within the budget meets it, so the costliest point within it is taken (not all-W8)
    strict = mixed_precision(net, data[0][:1], data, allowed_drop=0.0, max_cost=0.9, **options)
    first = first_within(strict.front, 0.9)
    assert first > 0 and strict.front[first - 1].cost > 0.9 * strict.front[0].cost
    assert not strict.met and strict.chosen is strict.front[first] and strict.chosen.score is not None
    assert strict.chosen.weight_bytes <= 0.9 * strict.front[0].weight_bytes
    assert strict.max_cost == 0.9
    # the sim is on that point: the chosen bitwidths are the quantizers'
    weights = {n: q.bitwidth for n, q in strict.sim.param_quantizers().items() if n.endswith(".weight")}
    assert weights == {n: bw for n, bw in strict.bitwidths().items() if n.endswith(".weight")}
    assert 4 in weights.values()
    # a generous drop: the cheapest verified point within the budget that meets it
    loose = mixed_precision(net, data[0][:1], data, allowed_drop=6.0, max_cost=0.9, **options)
    assert loose.met and loose.chosen.cost <= 0.9 * loose.front[0].cost
    assert loose.chosen.score is not None and loose.chosen.score >= loose.target
    # where the unlimited search's choice fits the budget, the budget changes nothing
    unlimited = mixed_precision(net, data[0][:1], data, allowed_drop=6.0, **options)
    assert unlimited.chosen.cost <= 0.9 * unlimited.front[0].cost and loose.chosen.config == unlimited.chosen.config


def test_a_budget_below_the_cheapest_mix_is_refused_before_any_work(data) -> None:
    sim = lt.QuantSim(_mlp(), data[0][:1])
    calls: list[int] = []

    def score(model: nn.Module) -> float:
        calls.append(1)
        return 1.0

    # every group at W4A8 still costs half the weight bytes of all-W8A8
    with pytest.raises(InvalidOptionError, match=r"max_cost=0.4 .*\(0.5 of"):
        mixed_precision(sim, calibration=data, eval_fn=score, candidates="W4A8,W8A8", cost="memory", max_cost=0.4)
    assert calls == [] and all(q.encoding is None for q in sim.quantizers().values())
    for bad in (0.0, -1.0, math.nan, "half"):
        with pytest.raises(InvalidOptionError, match="max_cost"):
            mixed_precision(sim, calibration=data, eval_fn=score, candidates="W4A8,W8A8", max_cost=bad)


def test_plot_and_html_report(sensitive, tmp_path) -> None:
    _, _, amp = sensitive
    png = amp.save_plot(tmp_path / "p.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Automatic mixed precision" in amp.to_html(tmp_path / "amp.html").read_text()
    report = lt.AnalysisReport("t", {"fp32": 1.0}, [], {}, {}, {})
    report.add_mixed_precision(amp)
    assert "mixed_precision" in report.figures()
    assert "Automatic mixed precision" in report.to_html(tmp_path / "r.html").read_text()


def test_greedy_steps_take_the_least_loss_per_cost_saved() -> None:
    drops = {"a": {"W8": 0.0, "W4": 0.3, "W2": 0.9}, "b": {"W8": 0.0, "W4": 0.1, "W2": 2.0}}
    costs = {"a": {"W8": 8.0, "W4": 4.0, "W2": 2.0}, "b": {"W8": 8.0, "W4": 4.0, "W2": 2.0}}
    steps = greedy_steps(drops, costs, ["W8", "W4", "W2"])
    # per cost saved: b→W4 0.025, a→W4 0.075, then a→W2 (0.6/2 = 0.3) before b→W2 (1.9/2)
    assert [s for s, _ in steps] == [("b", "W4"), ("a", "W4"), ("a", "W2"), ("b", "W2")]
    assert [round(d, 6) for _, d in steps] == [0.1, 0.4, 1.0, 2.9]


def test_search_front_binary_search_evaluates_few_points() -> None:
    scores = [1.0 - 0.01 * i for i in range(101)]
    seen: list[int] = []

    def score_at(i: int) -> float:
        seen.append(i)
        return scores[i]

    assert search_front(len(scores), score_at, 0.705, front_evals=4) == (29, True)
    assert len(set(seen)) <= 1 + 5 + 5
    assert search_front(3, [0.5, 0.4, 0.3].__getitem__, 0.9, front_evals=2) == (0, False)


def test_cli_quantize_amp_writes_the_curve(tmp_path) -> None:
    data = tmp_path / "d.npy"
    np.save(data, np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32))
    out = tmp_path / "out"
    args = ["quantize", "--model", "leantorch.models:ResNetSmall", "--data", str(data), "--num-samples", "8"]
    args += ["--batch-size", "8", "--amp", "W4A8,W8A8", "--allowed-drop", "0.5", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    assert {"amp_pareto.png", "amp.html", "model.onnx", "model.encodings"} <= {p.name for p in out.iterdir()}
    assert main([*args[:-2], "--out", str(tmp_path / "o2"), "--adaround"]) == 2
    assert main([*args[:-2], "--amp", "W4A8,fp16", "--out", str(tmp_path / "o3")]) == 2
    # a budget: the chosen mix's weight bytes stay within it (every layer W4 is half of W8)
    budget = ["--amp-cost", "memory", "--amp-max-cost", "0.75", "--allowed-drop", "0.0"]
    assert main([*args[:-2], *budget, "--out", str(tmp_path / "o4")]) == 0
    chosen = json.loads((tmp_path / "o4" / "model.encodings").read_text())["param_encodings"]
    state = ResNetSmall().state_dict()
    params = {n: state[n].numel() for n in chosen}
    bits = {n: e[0]["bitwidth"] for n, e in chosen.items()}
    assert sum(params[n] * bits[n] for n in chosen) <= 0.75 * 8 * sum(params.values())
    without_amp = ["quantize", "--model", "leantorch.models:ResNetSmall", "--data", str(data), "--amp-max-cost", "0.5"]
    assert main([*without_amp, "--out", str(tmp_path / "o5")]) == 2


def test_phase1_by_suffix_runs_equals_full_runs(data) -> None:
    net = _mlp(outlier=3.0)
    score = sqnr_score(net, data)  # an OutputScore: phase 1 runs only the graph after each lowered group
    options = {"candidates": "W4A8,W8A8,W8A16", "allowed_drop": 3.0, "per_channel": False, "progress": False}
    fast = mixed_precision(net, data[0][:1], data, sensitivity_fn=score, **options)
    full = mixed_precision(net, data[0][:1], data, sensitivity_fn=lambda m: score(m), **options)
    for group, row in full.sensitivity.items():
        assert fast.sensitivity[group] == pytest.approx(row, abs=1e-6)
    assert fast.chosen.config == full.chosen.config
