"""Post-training techniques: CLE keeps the function, bias correction removes the mean error, AdaRound
beats round-to-nearest, auto_quant stops at the first stage that meets the target."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import leantorch as lt
from leantorch.ops import BoundedReLU
from leantorch.ptq.bias_correction import clipped_normal_mean
from leantorch.ptq.cle import find_scaling_sets, input_ranges, output_ranges
from leantorch.ptq.input_moments import InputMoments

from .conftest import assert_unchanged, state_snapshot


def mobile_block(relu6: bool = False) -> nn.Module:
    act = nn.ReLU6 if relu6 else nn.ReLU
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        act(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),
        nn.BatchNorm2d(16),
        act(),  # depthwise
        nn.Conv2d(16, 8, 1),
        nn.BatchNorm2d(8),
        act(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 12),
        nn.ReLU(),
        nn.Linear(12, 5),
    )
    gen = torch.Generator().manual_seed(3)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=gen) * 3 + 0.05  # very different channel scales
            m.bias.data = torch.randn(n, generator=gen)
            m.running_mean.data = torch.randn(n, generator=gen)
            m.running_var.data = torch.rand(n, generator=gen) + 0.5
    return net.eval()


def test_scaling_sets_find_pairs_and_depthwise_triplets() -> None:
    gm = lt.fold_batch_norms(mobile_block(), torch.randn(1, 3, 6, 6))[0]
    sets = [s.layers for s in find_scaling_sets(gm)]
    assert ["0", "3", "6"] in sets and ["10", "12"] in sets


@pytest.mark.parametrize("relu6", [False, True])
def test_cross_layer_scaling_keeps_the_function_float64(relu6: bool) -> None:
    net = mobile_block(relu6).double()
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    folded = lt.fold_batch_norms(net, x)[0]
    scaled, report = lt.cross_layer_scale(folded, x)
    xs = torch.randn(16, 3, 6, 6, dtype=torch.float64) * 3
    torch.testing.assert_close(scaled(xs), net(xs), rtol=1e-9, atol=1e-9)
    assert any(isinstance(m, BoundedReLU) for m in scaled.modules()) == relu6
    # ranges are equalized: the first conv's output ranges equal the geometric mean of the triplet
    r1, r2, r3 = (
        output_ranges(scaled.get_submodule("0")),
        output_ranges(scaled.get_submodule("3")),
        input_ranges(scaled.get_submodule("6")),
    )
    torch.testing.assert_close(r1, r2, rtol=1e-6, atol=0)
    torch.testing.assert_close(r2, r3, rtol=1e-6, atol=0)
    spreads = {r["layer"]: r for r in report}
    assert spreads["0"]["spread after"] < spreads["0"]["spread before"]


def test_high_bias_absorption_is_exact_when_preactivations_stay_above_c() -> None:
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double().eval()
    bn = net[1]
    bn.running_mean.zero_(), bn.running_var.fill_(1.0)
    bn.weight.data.fill_(0.1)
    bn.bias.data = torch.linspace(1.0, 3.0, 6, dtype=torch.float64)  # β ≫ 3γ: large absorbable bias
    x = torch.randn(64, 4, dtype=torch.float64) * 0.5
    torch.testing.assert_close(lt.equalize(net, x[:1])(x), net(x), rtol=1e-9, atol=1e-9)  # absorption is opt-in
    eq = lt.equalize(net, x[:1], absorb_high_bias=True)
    assert float(eq.get_submodule("0").bias.abs().max()) < float(bn.bias.max())  # bias was absorbed
    torch.testing.assert_close(eq(x), net(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("relu6", [False, True])
def test_cle_leaves_channels_that_bn_folding_left_constant_unscaled(relu6: bool) -> None:
    """A BN with γ ≈ 0 leaves a channel of ~1e-7 weights whose output is the constant relu(β); scaling it like the
    others would divide that constant by ~1e-7. It keeps scale 1 (its bias and ReLU6 bound unchanged), the live
    channels are still equalized, and the function is unchanged."""
    net = mobile_block(relu6).double()
    for bn in (net[1], net[4]):  # a constant channel after the first conv and after the depthwise conv
        bn.weight.data[0], bn.bias.data[0] = 1e-7, 2.0
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    folded = lt.fold_batch_norms(net, x)[0]
    scaled, _ = lt.cross_layer_scale(folded, x)
    xs = torch.randn(16, 3, 6, 6, dtype=torch.float64) * 3
    torch.testing.assert_close(scaled(xs), net(xs), rtol=1e-9, atol=1e-9)
    for name, act in (("0", "2"), ("3", "5")):  # the constant channels' biases and ReLU6 bounds are not scaled
        assert float(scaled.get_submodule(name).bias[0]) == pytest.approx(float(folded.get_submodule(name).bias[0]))
        if relu6:
            assert float(scaled.get_submodule(act).upper[0]) == pytest.approx(6.0)
    r1, r3 = output_ranges(scaled.get_submodule("0"))[1:], input_ranges(scaled.get_submodule("6"))[1:]
    torch.testing.assert_close(r1, r3, rtol=1e-6, atol=0)  # live channels equalized as before
    acts: dict[str, float] = {}
    for tag, model in (("folded", folded), ("scaled", scaled)):
        hook = model.get_submodule("5").register_forward_hook(lambda m, i, o, t=tag: acts.__setitem__(t, o.abs().max()))
        model(xs)
        hook.remove()
    assert acts["scaled"] < 10 * acts["folded"]  # before the fix: ~1e7 times larger


def test_clipped_normal_mean_matches_numerical_integration() -> None:
    mu, sigma = torch.tensor([-1.0, 0.3, 2.0]), torch.tensor([0.5, 1.0, 2.0])
    for hi in (math.inf, 1.5):
        got = clipped_normal_mean(
            mu.double(), sigma.double(), torch.zeros(3, dtype=torch.float64), torch.full((3,), hi, dtype=torch.float64)
        )
        z = np.linspace(-12, 12, 400_001)
        for i in range(3):
            xs = mu[i].item() + sigma[i].item() * z
            density = np.exp(-(z**2) / 2) / math.sqrt(2 * math.pi)
            want = np.trapezoid(np.clip(xs, 0, hi) * density, z)
            assert float(got[i]) == pytest.approx(want, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("method", ["empirical", "analytical", "hybrid"])
def test_bias_correction_removes_mean_output_error(method: str) -> None:
    torch.manual_seed(0)
    net = mobile_block()
    x = torch.randn(1, 3, 6, 6)
    folded = lt.fold_batch_norms(net, x)[0]
    data = [torch.randn(64, 3, 6, 6) for _ in range(2)]

    def mean_error(model: nn.Module) -> float:
        sim = lt.QuantSim(model, x, param_bw=4, act_bw=32, scheme="minmax")
        sim.compute_encodings(data, progress=False)
        with torch.no_grad():
            fp = folded.get_submodule("6")
            outs = {}
            h1 = fp.register_forward_hook(lambda m, i, o: outs.__setitem__("fp", o))
            h2 = sim.layers()["6"].register_forward_hook(lambda m, i, o: outs.__setitem__("q", o))
            folded(data[0]), sim.model(data[0])
            h1.remove(), h2.remove()
        return float((outs["q"] - outs["fp"]).mean((0, 2, 3)).abs().mean())

    corrected = lt.bias_correction(
        folded, x, data, method=method, param_bw=4, act_bw=32, scheme="minmax", progress=False
    )
    assert mean_error(corrected) < 0.5 * mean_error(folded)


@pytest.mark.slow  # model-level: minutes on 2 cores
@pytest.mark.parametrize("objective", ["moments", "minibatch"])
def test_adaround_beats_round_to_nearest_on_the_layer_objective(tmp_path, objective: str) -> None:
    """AdaRound minimises each layer's output error; on held-out inputs it must beat nearest rounding,
    whether the objective is exact (second moments) or sampled on mini-batches as in the paper."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 1)).eval()
    data = [torch.relu(torch.randn(32, 8, 12, 12)) for _ in range(2)]
    held_out = torch.relu(torch.randn(64, 8, 12, 12))
    rtn = lt.QuantSim(net, data[0][:1], param_bw=3, act_bw=32, per_channel=True, scheme="minmax")
    rtn.compute_encodings(data, progress=False)
    # the same (minmax) weight grid as the round-to-nearest sim: only the rounding differs
    rounded, enc = lt.adaround(
        net,
        data[0][:1],
        data,
        param_bw=3,
        act_bw=32,
        scheme="minmax",
        param_scheme="minmax",
        iterations=1000,
        objective=objective,
        path=tmp_path,
        progress=False,
    )
    sim = lt.QuantSim(rounded, data[0][:1], param_bw=3, act_bw=32, per_channel=True, scheme="minmax")
    sim.set_and_freeze_param_encodings(enc)
    sim.compute_encodings(data, progress=False)
    with torch.no_grad():
        target = net[0](held_out)
        err_rtn = (rtn.layers()["0"](held_out) - target).pow(2).mean()
        err_ada = (rounded.get_submodule("0")(held_out) - target).pow(2).mean()
        assert err_ada < 0.8 * err_rtn
        # the returned weights already lie on the frozen grids: simulating them changes nothing
        torch.testing.assert_close(sim.model(held_out), rounded(held_out), rtol=1e-5, atol=1e-5)
    assert sim.quantizers()["0.param_quantizers.weight"].frozen


def test_auto_quant_stops_at_first_stage_meeting_target(resnet) -> None:
    data = [torch.randn(16, 3, 32, 32) for _ in range(2)]
    evaluation = torch.randn(32, 3, 32, 32)
    with torch.no_grad():
        ref = resnet(evaluation)

    def eval_fn(model: nn.Module) -> float:
        with torch.no_grad():
            return lt.metrics.top1_agreement(ref, model(evaluation))

    result = lt.auto_quant(resnet, data[0][:1], data, eval_fn, allowed_drop=0.5, progress=False)
    assert [s["stage"] for s in result.stages] == ["float", "bn_fold"]
    assert result.stages[1]["score"] >= 0.5
    with pytest.raises(lt.EvalFunctionError, match="eval_fn"):
        lt.auto_quant(resnet, data[0][:1], data, lambda m: "good", progress=False)
    with pytest.raises(lt.EvalFunctionError, match="eval_fn raised ZeroDivisionError"):
        lt.auto_quant(resnet, data[0][:1], data, lambda m: 1 / 0, progress=False)


def test_auto_quant_adaround_stage_starts_from_the_cle_stage_model(tmp_path, monkeypatch) -> None:
    """The AdaRound and GPTQ stages round the CLE stage's model itself (CLE runs once, not once per stage); GPTQ is
    the asymmetric one, on AdaRound's MSE grids."""
    import functools

    import leantorch.ptq.auto as auto

    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    data = [torch.randn(4, 3, 8, 8)]
    equalized, rounded_from = [], []
    real_equalize, real_adaround, real_gptq = auto.equalize, auto.adaround, auto.gptq
    gptq_options = []

    def counting_equalize(*args, **kwargs):
        equalized.append(real_equalize(*args, **kwargs))
        return equalized[-1]

    @functools.wraps(real_adaround)  # auto_quant checks adaround_kwargs against adaround's signature
    def recording_adaround(model, *args, **kwargs):
        rounded_from.append(model)
        return real_adaround(model, *args, **kwargs)

    def recording_gptq(model, example, calibration, options):
        rounded_from.append(model)
        gptq_options.append(options)
        return real_gptq(model, example, calibration, options)

    monkeypatch.setattr(auto, "equalize", counting_equalize)
    monkeypatch.setattr(auto, "adaround", recording_adaround)
    monkeypatch.setattr(auto, "gptq", recording_gptq)
    scores = iter([1.0, 0.0, 0.0, 0.0, 0.0])  # the float model, then stages that never reach the target
    result = lt.auto_quant(
        net,
        data[0][:1],
        data,
        lambda m: next(scores),
        allowed_drop=0.0,
        path=tmp_path,
        adaround_kwargs={"iterations": 2},
        progress=False,
        downstream=False,
        stages=["bn_fold", "cle", "adaround", "gptq"],  # gptq is opt-in
    )
    assert [s["stage"] for s in result.stages] == ["float", "bn_fold", "cle", "adaround", "gptq"]
    assert len(equalized) == 1 and rounded_from == equalized * 2
    assert gptq_options[0].asymmetric and not gptq_options[0].correct_bias and gptq_options[0].param_scheme == "mse"


@pytest.mark.slow  # model-level: minutes on 2 cores
def test_adaround_with_quantized_inputs_compensates_the_error_of_earlier_layers(tmp_path) -> None:
    """Asymmetric reconstruction (the default) fits a layer to what the quantized layer before feeds it.

    Layer 0 sees the model input in both modes, so it is rounded identically; the difference in the output
    error is then all due to how layer 2 was fitted, and fitting it to the quantized inputs must win.
    """
    net = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1)).eval()
    data = [torch.randn(16, 4, 10, 10) for _ in range(2)]
    held_out = torch.randn(32, 4, 10, 10)
    with torch.no_grad():
        target = net(held_out)

    def rounded(use_quantized_inputs: bool) -> nn.Module:
        return lt.adaround(
            net,
            data[0][:1],
            data,
            param_bw=2,
            act_bw=32,
            iterations=500,
            lr=1e-2,
            use_quantized_inputs=use_quantized_inputs,
            path=tmp_path,
            progress=False,
        )[0]

    asymmetric, symmetric = rounded(True), rounded(False)
    assert torch.equal(asymmetric.get_submodule("0").weight, symmetric.get_submodule("0").weight)
    with torch.no_grad():
        error = {
            m: float((model(held_out) - target).pow(2).mean())
            for m, model in (("asymmetric", asymmetric), ("symmetric", symmetric))
        }
    assert error["asymmetric"] < 0.9 * error["symmetric"]


# --------------------------------------------------------------------------- bad options and bad data
def _small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()


def _calibration(nan_in: int | None = None) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    data = [torch.randn(4, 3, 8, 8, generator=gen) for _ in range(3)]
    if nan_in is not None:
        data[nan_in][1, 2, 3, 4] = float("nan")
    return data


def test_bias_correction_rejects_bad_options_and_data_with_typed_errors() -> None:
    net, data = _small_net(), _calibration()
    x = data[0][:1]
    before = state_snapshot(net)
    with pytest.raises(lt.InvalidOptionError, match="method='fast'.*'empirical', 'analytical', 'hybrid'"):
        lt.bias_correction(net, x, data, method="fast", progress=False)
    with pytest.raises(lt.InvalidOptionError, match="num_samples=0"):
        lt.bias_correction(net, x, data, num_samples=0, progress=False)
    with pytest.raises(lt.InvalidOptionError, match="BN statistics.*lt.fold_batch_norms"):
        lt.bias_correction(net, x, method="analytical", progress=False)
    for missing in (None, []):
        with pytest.raises(lt.CalibrationDataError, match="needs calibration data"):
            lt.bias_correction(net, x, missing, progress=False)
    with pytest.raises(lt.CalibrationDataError, match="not a single tensor"):
        lt.bias_correction(net, x, data[0], progress=False)
    with pytest.raises(lt.CalibrationDataError, match="batch 1.*NaN"):
        lt.bias_correction(net, x, _calibration(nan_in=1), progress=False)
    assert_unchanged(net, before)


def test_adaround_rejects_bad_options_and_data_with_typed_errors(tmp_path) -> None:
    net, data = _small_net(), _calibration()
    x = data[0][:1]
    before = state_snapshot(net)
    with pytest.raises(lt.InvalidOptionError, match="objective='exact'.*'moments', 'minibatch'"):
        lt.adaround(net, x, data, objective="exact", iterations=5, path=tmp_path, progress=False)
    for missing in (None, []):
        with pytest.raises(lt.CalibrationDataError, match="adaround needs calibration data"):
            lt.adaround(net, x, missing, iterations=5, path=tmp_path, progress=False)
    with pytest.raises(lt.InvalidOptionError, match="num_batches=0: pass a whole number ≥ 1"):
        lt.adaround(net, x, data, num_batches=0, iterations=5, path=tmp_path, progress=False)
    with pytest.raises(lt.CalibrationDataError, match="batch 2.*NaN"):
        lt.adaround(net, x, _calibration(nan_in=2), iterations=5, path=tmp_path, progress=False)
    assert_unchanged(net, before)
    assert not list(tmp_path.iterdir())  # nothing written either


@pytest.mark.parametrize(
    "option,value,message",
    [
        ("iterations", 0, "iterations=0: pass a whole number ≥ 1"),  # once ran zero steps without a word
        ("iterations", -5, "iterations=-5"),
        ("iterations", 2.5, "iterations=2.5"),
        ("lr", float("nan"), "lr=nan: pass a finite number > 0"),  # once failed inside Adam, after calibration
        ("lr", -1, "lr=-1: pass a finite number > 0"),
        ("lr", 0, "lr=0"),
        ("reg_param", -0.1, "reg_param=-0.1: pass a finite number ≥ 0"),
        ("beta_range", (20, 0), r"beta_range\[1\]=0: pass a finite number > 0"),
        ("beta_range", 20, r"beta_range=20: pass \(start, end\)"),
        ("warm_start", 1.5, r"warm_start=1.5: pass a fraction in \[0, 1\]"),
        ("batch_size", 0, "batch_size=0"),
        ("use_quantized_inputs", "no", "use_quantized_inputs='no': pass True or False"),
        ("per_channel", "yes", "per_channel='yes'"),
    ],
)
def test_adaround_refuses_bad_optimisation_options_before_any_work(
    tmp_path, monkeypatch, option, value, message
) -> None:
    net, data = _small_net(), _calibration()
    before = state_snapshot(net)
    traced = []
    monkeypatch.setattr("leantorch.ptq.layer_rounding.prepare", lambda *a, **k: traced.append(1))
    with pytest.raises(lt.InvalidOptionError, match=message):
        lt.adaround(net, data[0][:1], data, path=tmp_path, progress=False, **{option: value})
    assert not traced and not list(tmp_path.iterdir())
    assert_unchanged(net, before)


def test_adaround_output_location_is_checked_before_any_work(tmp_path, monkeypatch) -> None:
    net, data = _small_net(), _calibration()
    traced = []
    monkeypatch.setattr("leantorch.ptq.layer_rounding.prepare", lambda *a, **k: traced.append(1))
    a_file = tmp_path / "taken"
    a_file.write_text("")
    for kwargs, error, message in [
        ({"path": a_file}, lt.OutputPathError, "taken is an existing file"),
        ({"path": tmp_path, "filename_prefix": ""}, lt.OutputPathError, "filename_prefix=''"),
        ({"path": tmp_path, "filename_prefix": None}, lt.InvalidOptionError, "filename_prefix=None"),
    ]:
        with pytest.raises(error, match=message):
            lt.adaround(net, data[0][:1], data, iterations=5, progress=False, **kwargs)
    assert not traced


def test_ptq_batches_follow_the_calibration_rule(tmp_path) -> None:
    """Batches with labels work everywhere; None and dict batches are named with the structure that works."""
    net, data = _small_net(), _calibration()
    x = data[0][:1]
    labelled = [(d, torch.zeros(len(d), dtype=torch.long)) for d in data]
    plain = lt.bias_correction(net, x, data, param_bw=4, progress=False)
    with_labels = lt.bias_correction(net, x, labelled, param_bw=4, progress=False)
    torch.testing.assert_close(plain.get_submodule("3").bias, with_labels.get_submodule("3").bias, rtol=0, atol=0)
    structure = r"a batch must be a tensor, or a tuple/list whose first 1 item\(s\) are the model's input tensor"
    for bad, message in [
        ([None], "calibration batch 0 is None; " + structure),
        ([data[0], {"x": data[1]}], r"calibration batch 1 is a dict with keys \['x'\]; " + structure),
        (5, "calibration must be an iterable of batches .*, got int 5"),
    ]:
        with pytest.raises(lt.CalibrationDataError, match=message):
            lt.bias_correction(net, x, bad, progress=False)
        with pytest.raises(lt.CalibrationDataError, match=message):
            lt.adaround(net, x, bad, iterations=2, path=tmp_path, progress=False)
    _, enc = lt.adaround(net, x, labelled, iterations=2, path=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [enc.name]


def test_equalize_auto_quant_and_input_moments_raise_typed_errors() -> None:
    net, data = _small_net(), _calibration()
    x = data[0][:1]
    before = state_snapshot(net)
    with pytest.raises(lt.InvalidOptionError, match="relu6='clip'.*'bound'.*'replace'"):
        lt.equalize(net, x, relu6="clip")
    with pytest.raises(lt.InvalidOptionError, match="absorb_high_bias"):
        lt.equalize(net, x, absorb_high_bias="yes")
    with pytest.raises(lt.EvalFunctionError, match="got nan on the float model.*NaN model outputs"):
        lt.auto_quant(net, x, data, lambda m: float("nan"), progress=False)
    calls = []

    def nan_when_quantized(m: nn.Module) -> float:
        calls.append(m)
        return 1.0 if len(calls) == 1 else float("inf")

    with pytest.raises(lt.EvalFunctionError, match="got inf on the quantized model after bn_fold"):
        lt.auto_quant(net, x, data, nan_when_quantized, progress=False)
    with pytest.raises(lt.CalibrationDataError, match="auto_quant needs calibration data"):
        lt.auto_quant(net, x, [], lambda m: 1.0, progress=False)
    with pytest.raises(lt.CalibrationDataError, match=r"calibration batch 1 is a dict with keys \['x'\]"):
        lt.auto_quant(net, x, [data[0], {"x": data[1]}], lambda m: 1 / 0, progress=False)  # before eval_fn
    with pytest.raises(lt.InvalidOptionError, match="allowed_drop=-0.1"):
        lt.auto_quant(net, x, data, lambda m: 1.0, allowed_drop=-0.1, progress=False)
    assert_unchanged(net, before)
    with pytest.raises(lt.CalibrationDataError, match="call add"):
        InputMoments(nn.Linear(3, 2)).second_moment()


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"iteration": 100}, r"no adaround option 'iteration'; choose from .*iterations.*lr"),
        ({"path": "/tmp"}, r"'path' is set by auto_quant itself"),
        ({"per_channel": True}, r"'per_channel' is set by auto_quant itself"),
        ({"param_bw": 4}, r"'param_bw' is set by auto_quant itself"),
        ({"iterations": 0}, r"iterations"),
        ({"lr": float("nan")}, r"lr"),
        ({"objective": "mean"}, r"objective='mean'"),
        ({"filename_prefix": None}, r"filename_prefix"),
        ([("iterations", 5)], r"adaround_kwargs=.*pass a dict"),
    ],
)
def test_auto_quant_checks_adaround_kwargs_before_any_evaluation(kwargs, words) -> None:
    """A typo or a bad AdaRound option used to surface only when the third stage started (after the float,
    BN-fold and CLE stages were scored), as a raw TypeError for an unknown key."""
    net, data = _small_net(), _calibration()
    calls = []

    def eval_fn(m: nn.Module) -> float:
        calls.append(m)
        return 1.0

    with pytest.raises(lt.InvalidOptionError, match=words):
        lt.auto_quant(net, data[0][:1], data, eval_fn, adaround_kwargs=kwargs, progress=False)
    assert calls == []


def test_auto_quant_passes_adaround_kwargs_through(tmp_path, monkeypatch) -> None:
    import functools

    import leantorch.ptq.auto as auto

    seen = {}

    @functools.wraps(auto.adaround)  # keeps adaround's signature, which auto_quant checks the keys against
    def recording(*args, **kwargs):
        seen.update(kwargs)
        raise KeyboardInterrupt  # stop here: only the arguments matter

    monkeypatch.setattr(auto, "adaround", recording)
    net, data = _small_net(), _calibration()
    with pytest.raises(KeyboardInterrupt):
        lt.auto_quant(
            net,
            data[0][:1],
            data,
            lambda m: 1.0 if m is net else 0.0,
            path=tmp_path,
            progress=False,
            per_channel=None,
            config="per_channel",
            adaround_kwargs={"iterations": 3, "lr": 0.01},
        )
    assert (seen["iterations"], seen["lr"], seen["per_channel"], seen["config"]) == (3, 0.01, None, "per_channel")


@pytest.mark.parametrize("embedding", [False, True])
def test_empirical_bias_correction_of_linear_layers_on_sequences(embedding: bool) -> None:
    """A Linear on [B, T, C] adds its bias along the last dim: the channel means must be taken there (they were
    taken along dim 1, and _add_to_bias failed with a raw size-mismatch RuntimeError). After the correction,
    the mean output error per channel on the calibration data is ~0 against a float64 reference."""
    torch.manual_seed(0)
    head = [nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3)]
    net = nn.Sequential(*([nn.Embedding(20, 8)] if embedding else []), *head).eval()
    offset = 1 if embedding else 0
    if embedding:
        data = [torch.randint(0, 20, (4, 6)) for _ in range(2)]
    else:
        data = [torch.randn(4, 6, 8) for _ in range(2)]
    last = str(offset + 2)

    def mean_error(model: nn.Module) -> torch.Tensor:
        """Per output channel of the last layer: E[quantized output] − E[float64 output] over the data."""
        sim = lt.QuantSim(model, data[0][:1], param_bw=4, act_bw=32, scheme="minmax")
        sim.compute_encodings(data, progress=False)
        reference = copy.deepcopy(net).double()
        with torch.no_grad():
            errors = [sim.model(x).double() - reference(x if embedding else x.double()) for x in data]
        return torch.cat([e.reshape(-1, e.shape[-1]) for e in errors]).mean(0)

    corrected = lt.bias_correction(net, data[0][:1], data, param_bw=4, act_bw=32, scheme="minmax", progress=False)
    assert corrected.get_submodule(last).bias.shape == (3,)
    assert mean_error(net).abs().max() > 1e-2  # 4-bit weights shift the mean visibly before the correction
    assert torch.allclose(mean_error(corrected), torch.zeros(3, dtype=torch.float64), atol=1e-5)


class _TiedPair(nn.Module):
    """conv → ReLU → conv → ReLU → conv, the last two sharing one weight."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3.weight = self.c2.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c3(torch.relu(self.c2(torch.relu(self.c1(x)))))


class _ReusedLayer(nn.Module):
    """conv → ReLU → conv → ReLU → the same conv again."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(torch.relu(self.c2(torch.relu(self.c1(x)))))


@pytest.mark.parametrize("make", [_TiedPair, _ReusedLayer])
def test_cle_keeps_the_function_with_tied_weights_and_reused_layers(make) -> None:
    # Both once came back silently wrong (max error ~0.65 on outputs of magnitude ~1): the shared weight was
    # rescaled for one use, and a layer called twice was rescaled for one of its calls.
    torch.manual_seed(0)
    model = make().eval()
    with torch.no_grad():
        model.c1.weight.mul_(torch.linspace(0.1, 5, 8)[:, None, None, None])  # unequal ranges: CLE has work
    x = torch.randn(4, 3, 8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    equalized = lt.equalize(model, x[:1])
    with torch.no_grad():
        assert torch.allclose(equalized(x), model(x), atol=1e-5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    if make is _TiedPair:  # still equalized: c2 and c3 each got their own copy of the shared weight
        assert lt.ptq.cle.spread(equalized.get_submodule("c1")) < 0.5 * lt.ptq.cle.spread(model.c1)
        assert equalized.get_submodule("c2").weight is not equalized.get_submodule("c3").weight


def test_auto_quant_runs_the_chosen_stages_and_a_registered_one(tmp_path) -> None:
    """Stages come from the registry: a registered stage runs like a built-in one, `stages=` picks and orders
    them, and a stage that starts from one that did not run gets the float model."""
    from leantorch.ptq.auto_stages import AutoQuantStage, register_stage, unregister_stage

    net, data = _small_net(), _calibration()
    started_from = []

    def halve(model, context):
        started_from.append(model)
        copy_ = copy.deepcopy(model)
        with torch.no_grad():
            for p in copy_.parameters():
                p.mul_(0.5)
        return copy_, None

    register_stage(AutoQuantStage("halve", halve, starts_from="cle"))
    try:
        scores = iter([1.0, 0.2, 0.9])
        result = lt.auto_quant(
            net,
            data[0][:1],
            data,
            lambda m: next(scores),
            stages=["cle", "halve"],
            path=tmp_path,
            progress=False,
            downstream=False,
        )
        assert [s["stage"] for s in result.stages] == ["float", "cle", "halve"]
        assert isinstance(started_from[0], torch.fx.GraphModule)  # the CLE stage's model
        assert result.model is not started_from[0]
        scores = iter([1.0, 0.5])
        result = lt.auto_quant(
            net, data[0][:1], data, lambda m: next(scores), stages=["halve"], path=tmp_path, downstream=False
        )
        assert started_from[1] is net  # cle did not run: the float model
        with pytest.raises(lt.InvalidOptionError, match="use one of bn_fold, cle, adaround, gptq, reconstruct, halve"):
            lt.auto_quant(net, data[0][:1], data, lambda m: 1.0, stages=["clee"], path=tmp_path)
        with pytest.raises(lt.InvalidOptionError, match="distinct"):
            lt.auto_quant(net, data[0][:1], data, lambda m: 1.0, stages=["cle", "cle"], path=tmp_path)
    finally:
        unregister_stage("halve")


def test_auto_quant_tries_downstream_ranges_when_no_stage_reaches_the_target(tmp_path, monkeypatch) -> None:
    """Missing the target, the best stage's activation ranges are re-chosen by their downstream error: kept
    when that scores better (a table row), the stage's own ranges restored when it does not."""
    import leantorch.ptq.auto as auto
    from leantorch.ptq.downstream_ranges import DownstreamRange

    def halve_a_range(sim, calibration, num_batches, progress):  # what a search that clips one range does
        name, q = next((n, q) for n, q in sim.activation_quantizers().items() if q.is_active)
        enc = q.encoding
        q.set_encoding(lt.compute_encoding(enc.min * 0.5, enc.max * 0.5, enc.bitwidth, enc.symmetric))
        return [DownstreamRange(name, ("3",), 0.5, 1.0, 0.5)]

    monkeypatch.setattr(auto, "downstream_ranges", halve_a_range)
    net, data = _small_net(), _calibration()
    for later, kept in [(0.8, True), (0.1, False)]:
        scores = iter([1.0, 0.5, later])  # float, cle, cle + downstream ranges
        result = lt.auto_quant(net, data[0][:1], data, lambda m: next(scores), stages=["cle"], path=tmp_path)  # noqa: B023
        assert [s["stage"] for s in result.stages] == ["float", "cle", "cle + downstream ranges"]
        assert result.stages[-1]["score"] == later
        plain = lt.QuantSim(result.model, data[0][:1])
        plain.compute_encodings(data, progress=False)
        same = [
            torch.equal(q.encoding.scale, plain.quantizers()[name].encoding.scale)
            for name, q in result.sim.activation_quantizers().items()
            if q.is_active
        ]
        assert all(same) != kept  # kept: the clipped range stays; not better: the stage's own ranges back
    scores = iter([1.0, 0.5])
    result = lt.auto_quant(
        net, data[0][:1], data, lambda m: next(scores), stages=["cle"], path=tmp_path, downstream=False
    )
    assert [s["stage"] for s in result.stages] == ["float", "cle"]


def test_algorithm_configs_equal_the_keyword_api(tmp_path) -> None:
    """adaround/gptq/seq_mse take a frozen config or the same options as keywords, with the same result; a bad
    value is refused when the config is built, an unknown keyword names the valid ones."""
    import dataclasses

    from leantorch.ptq.adaround import AdaroundConfig
    from leantorch.ptq.gptq import GptqConfig
    from leantorch.ptq.seq_mse import SeqMseConfig

    net, data = _small_net(), _calibration()
    for fn, cls, options in [
        (lt.adaround, AdaroundConfig, {"iterations": 5, "param_bw": 4}),
        (lt.gptq, GptqConfig, {"damping": 0.05, "param_bw": 4}),
        (lt.seq_mse, SeqMseConfig, {"num_candidates": 5, "param_bw": 4}),
    ]:
        config = cls(**options, path=tmp_path / "a", progress=False)
        with pytest.raises(dataclasses.FrozenInstanceError):
            config.param_bw = 8  # type: ignore[misc]
        by_config, _ = fn(net, data[0][:1], data, config)
        by_keywords, _ = fn(net, data[0][:1], data, **options, path=tmp_path / "b", progress=False)
        overridden, _ = fn(net, data[0][:1], data, cls(param_bw=8), **options, path=tmp_path / "c", progress=False)
        for a, b, c in zip(by_config.parameters(), by_keywords.parameters(), overridden.parameters()):
            assert torch.equal(a, b) and torch.equal(a, c)
        with pytest.raises(lt.InvalidOptionError, match="unknown option.*param_bw"):
            fn(net, data[0][:1], data, param_bits=4)
    with pytest.raises(lt.InvalidOptionError, match="lr="):
        AdaroundConfig(lr=float("nan"))
    with pytest.raises(lt.InvalidOptionError, match="is a dict"):
        lt.adaround(net, data[0][:1], data, {"iterations": 5})


def _tied_with_bias() -> nn.Module:
    model = _TiedPair().eval()
    model.c3.bias = model.c2.bias  # weight and bias tied
    return model


@pytest.mark.parametrize("algorithm", ["adaround", "gptq", "seq_mse"])
def test_layer_wise_rounding_gives_each_tied_layer_its_own_rounding(tmp_path, algorithm: str) -> None:
    # Once the second layer's rounding silently overwrote the first's (one tensor for two roundings).
    torch.manual_seed(0)
    model = _tied_with_bias()
    data = [torch.randn(8, 3, 8, 8)]
    options = {"iterations": 20} if algorithm == "adaround" else {}
    rounded, enc = getattr(lt, algorithm)(model, data[0][:1], data, progress=False, path=tmp_path, **options)
    assert model.c2.weight is model.c3.weight  # the user's model keeps its tie
    assert rounded.get_submodule("c2").weight is not rounded.get_submodule("c3").weight
    sim = lt.QuantSim(rounded, data[0][:1], param_bw=4, per_channel=True)
    sim.set_and_freeze_param_encodings(enc)
    for name in ("c2", "c3"):
        wrapper = sim.layers()[name]
        weight = wrapper.module.weight
        assert torch.equal(wrapper.param_quantizers["weight"](weight), weight)  # on its own frozen grid


def test_bias_correction_corrects_each_tied_bias_for_its_own_layer() -> None:
    # Once both layers' shifts went into the one shared bias.
    torch.manual_seed(0)
    model = _tied_with_bias()
    data = [torch.randn(8, 3, 8, 8)]
    corrected = lt.bias_correction(model, data[0][:1], data, param_bw=4, scheme="minmax", progress=False)
    untied = _TiedPair().eval()
    untied.load_state_dict(model.state_dict())  # the same numbers, every tensor its own
    reference = lt.bias_correction(untied, data[0][:1], data, param_bw=4, scheme="minmax", progress=False)
    for name in ("c1", "c2", "c3"):
        assert torch.allclose(corrected.get_submodule(name).bias, reference.get_submodule(name).bias, atol=1e-6)
    assert model.c2.bias is model.c3.bias


def test_channel_pruning_of_a_tied_layer_equals_pruning_the_untied_model() -> None:
    torch.manual_seed(0)
    model = _TiedPair().eval()
    untied = _TiedPair().eval()
    untied.load_state_dict(model.state_dict())
    x = torch.randn(8, 3, 8, 8)
    score = lambda m: -float((m(x) - model(x)).pow(2).mean())  # noqa: E731
    for layer in ("c2", "c3"):
        options = {"ratios": {layer: 0.5}, "calibration": [x], "progress": False, "rank_multiple": 1}
        tied_small, _ = lt.compress(model, x[:1], score, "channel_pruning", 0.9, **options)
        untied_small, _ = lt.compress(untied, x[:1], score, "channel_pruning", 0.9, **options)
        with torch.no_grad():
            assert torch.equal(tied_small(x), untied_small(x))
