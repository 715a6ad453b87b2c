"""Compression: MACs against hand counts, exact decompositions at full rank (float64), channel pruning
through BN/depthwise with least-squares reconstruction, greedy ratio selection, and bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import leantorch as lt
from leantorch.compress.channel_pruning import (
    PruningPath,
    prune_channels,
    pruning_path,
    reconstruct,
    sample_grams,
    select_channels,
)
from leantorch.compress.cost import layer_macs
from leantorch.compress.ratio_selection import EvalScoreTable, greedy_select
from leantorch.compress.svd import full_rank, spatial_svd, weight_svd

from .conftest import assert_unchanged, state_snapshot


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1d = nn.Conv1d(4, 6, 3, stride=2, dilation=2)
        self.grouped = nn.Conv2d(6, 12, 3, stride=2, padding=1, groups=3)
        self.up = nn.ConvTranspose2d(12, 5, 4, stride=2, padding=1)
        self.fc = nn.Linear(5, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1d(x)  # (6, 16)
        y = self.grouped(y[:, :, None, :].expand(-1, -1, 8, -1).contiguous())  # (12, 4, 8)
        y = self.up(y)  # (5, 8, 16)
        return self.fc(y.permute(0, 2, 3, 1))  # 8*16 rows of 5 -> 7


def test_cost_matches_hand_counts() -> None:
    report = lt.compress.cost(Mixed(), torch.randn(3, 4, 36))
    layers = report.layers
    # Conv1d: out length (36 - 2*2 - 1)//2 + 1 = 16; 6 * 16 * 4 * 3.
    assert layers["conv1d"].macs == 6 * 16 * 4 * 3 and layers["conv1d"].output_shape == (6, 16)
    # Grouped conv: 12 out channels, out 4x8, each sees 6/3 = 2 input channels of 3x3.
    assert layers["grouped"].macs == 12 * 4 * 8 * 2 * 9
    # ConvTranspose: every one of 12 * 4 * 8 input values meets 5 * 4 * 4 weights.
    assert layers["up"].macs == 12 * 4 * 8 * 5 * 16 and layers["up"].output_shape == (5, 8, 16)
    # Linear over 8*16 rows.
    assert layers["fc"].macs == 8 * 16 * 5 * 7
    assert report.total_params == (6 * 4 * 3 + 6) + (12 * 2 * 9 + 12) + (12 * 5 * 16 + 5) + (5 * 7 + 7)
    assert report.total_macs == sum(c.macs for c in layers.values())


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(6, 10, 3, stride=2, padding=1),
        nn.Conv2d(6, 4, (3, 5), stride=(1, 2), padding=(2, 1), dilation=(2, 1), bias=False),
    ],
)
def test_weight_and_spatial_svd_are_exact_at_full_rank(conv: nn.Conv2d) -> None:
    conv = conv.double()
    x = torch.randn(2, 6, 11, 13, dtype=torch.float64)
    for decompose, scheme in ((weight_svd, "weight_svd"), (spatial_svd, "spatial_svd")):
        pair = decompose(conv, full_rank(conv, scheme))
        torch.testing.assert_close(pair(x), conv(x), rtol=1e-10, atol=1e-10)
        # Truncation error equals the discarded singular values (Eckart-Young) in the reshaped weight.
        low = decompose(conv, 2)
        assert (low(x) - conv(x)).abs().max() > 1e-6
    linear = nn.Linear(9, 5).double()
    z = torch.randn(4, 9, dtype=torch.float64)
    torch.testing.assert_close(weight_svd(linear, 5)(z), linear(z), rtol=1e-10, atol=1e-10)


def test_spatial_svd_rank_one_is_the_best_rank_one_separable_filter() -> None:
    """A separable kernel (outer product of a column and a row filter) is reproduced exactly at rank 1."""
    column, row = torch.randn(1, 1, 3, 1, dtype=torch.float64), torch.randn(1, 1, 1, 3, dtype=torch.float64)
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False).double()
    conv.weight.data = column * row
    x = torch.randn(1, 1, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(spatial_svd(conv, 1)(x), conv(x))


def mobile_block() -> nn.Module:
    """expand 1x1 → BN → ReLU6 → pad → depthwise 3x3 → BN → ReLU → project 1x1 (EfficientNet-like)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 1),
        nn.BatchNorm2d(16),
        nn.ReLU6(),
        nn.ZeroPad2d(1),
        nn.Conv2d(16, 16, 3, groups=16),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 8, 1),
    ).eval()
    for bn in (model[1], model[5]):
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 1.5)
    return model


def correlated_images(n: int, seed: int) -> torch.Tensor:
    """Inputs whose channels are correlated, as natural images are (so that pruned channels are partly
    predictable from kept ones and least squares has something to recover)."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 1, 10, 10, generator=gen)
    return base.repeat(1, 3, 1, 1) + 0.3 * torch.randn(n, 3, 10, 10, generator=gen)


def test_channel_pruning_walks_through_bn_and_depthwise_and_reconstructs() -> None:
    model = mobile_block()
    x = correlated_images(1, 0)
    gm = lt.prepare(model, x)
    reference = copy.deepcopy(gm)
    path = pruning_path(gm, "7")
    assert path == PruningPath("7", ["5", "1"], ["4"], "0")
    data = [correlated_images(16, s) for s in range(4)]
    grams = sample_grams(gm, reference, "7", data, samples_per_image=32)
    weight = gm.get_submodule("7").weight
    test = correlated_images(32, 99)
    # Keeping every channel, the least-squares fit reproduces the original layer's outputs (weights of
    # channels that are always zero after the ReLU are not identifiable and may differ).
    whole = copy.deepcopy(gm)
    everything = torch.arange(16)
    prune_channels(whole, pruning_path(whole, "7"), everything, reconstruct(weight, grams, everything))
    with torch.no_grad():
        assert lt.metrics.sqnr_db(reference(test), whole(test)) > 60
    kept = select_channels(weight, grams.current, keep=6)
    fitted, naive = copy.deepcopy(gm), copy.deepcopy(gm)
    prune_channels(fitted, path, kept, reconstruct(weight, grams, kept))
    prune_channels(naive, path, kept, weight.detach()[:, kept].clone())
    with torch.no_grad():
        want = reference(test)
        assert fitted(test).shape == want.shape
        assert lt.metrics.sqnr_db(want, fitted(test)) > lt.metrics.sqnr_db(want, naive(test)) + 1.0
    assert fitted.get_submodule("0").out_channels == 6 and fitted.get_submodule("4").groups == 6
    assert fitted.get_submodule("1").running_mean.shape == (6,) and fitted.get_submodule("7").in_channels == 6


def test_pruning_skips_channels_tied_by_residual_adds(resnet) -> None:
    gm = lt.prepare(resnet, torch.randn(1, 3, 32, 32))
    assert isinstance(pruning_path(gm, "layers.0.conv2"), PruningPath)  # conv1 -> bn1 -> relu -> conv2
    reason = pruning_path(gm, "layers.1.conv1")  # its input is the block output, also the shortcut
    assert isinstance(reason, str) and "feeds" in reason


def test_greedy_selection_prefers_insensitive_layers_and_meets_the_target() -> None:
    table = EvalScoreTable(
        "weight_svd",
        [0.25, 0.5, 0.75, 1.0],
        1.0,
        {
            "robust": {0.25: 0.97, 0.5: 0.99, 0.75: 1.0, 1.0: 1.0},
            "fragile": {0.25: 0.2, 0.5: 0.6, 0.75: 0.9, 1.0: 1.0},
        },
    )
    macs = {"robust": 100, "fragile": 100}

    def estimate(ratios: dict[str, float]) -> float:
        return 50 + sum(macs[n] * r for n, r in ratios.items())

    # Budget 130 for the two layers: compressing only the robust one (score 0.97) fits (175).
    ratios, threshold = greedy_select(table, estimate, target_macs=180)
    assert ratios == {"robust": 0.25, "fragile": 1.0} and threshold == pytest.approx(0.97)
    # Budget 90: the fragile layer must give up MACs too; the highest threshold that fits is 0.6 (125).
    ratios, threshold = greedy_select(table, estimate, target_macs=140)
    assert ratios == {"robust": 0.25, "fragile": 0.5} and threshold == pytest.approx(0.6)
    with pytest.raises(lt.CompressionError, match="cannot be reached"):
        greedy_select(table, estimate, target_macs=60)


def test_compress_reaches_target_caches_table_and_never_touches_the_input(tmp_path, resnet) -> None:
    x = torch.randn(8, 3, 32, 32)
    snapshot = state_snapshot(resnet)
    calls = []

    def score(m: nn.Module) -> float:
        calls.append(1)
        with torch.no_grad():
            return min(lt.metrics.sqnr_db(resnet(x), m(x)), 200.0)  # identical outputs: inf

    seen = []
    small, info = lt.compress(
        resnet,
        x[:1],
        score,
        ["spatial_svd", "channel_pruning"],
        0.6,
        calibration=[x],
        candidates=5,
        rank_multiple=1,
        cache_dir=tmp_path,
        layer_callback=lambda m, name: seen.append(name),
        progress=False,
    )
    assert_unchanged(resnet, snapshot)
    assert info.mac_ratio <= 0.6 + 1e-9 and info.mac_ratio > 0.3
    assert lt.compress.cost(small, x[:1]).total_macs == info.macs_after
    assert len(info.stages) == 2 and seen and set(seen) == {n.split(":")[1] for n in info.ratios}
    assert (tmp_path / "eval_scores_spatial_svd.json").exists()
    first = len(calls)
    again, info2 = lt.compress(
        resnet,
        x[:1],
        score,
        ["spatial_svd", "channel_pruning"],
        0.6,
        calibration=[x],
        candidates=5,
        rank_multiple=1,
        cache_dir=tmp_path,
        progress=False,
    )
    assert len(calls) - first < first / 3  # the tables were reloaded, not recomputed
    assert info2.ratios == info.ratios
    # The compressed model quantizes and exports.
    sim = lt.QuantSim(small, x[:1])
    sim.compute_encodings([x], progress=False)
    assert sim.export(tmp_path, "small")["onnx"].exists()


def test_manual_ratios_and_rank_rounding() -> None:
    model = nn.Sequential(nn.Conv2d(16, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1))
    x = torch.randn(1, 16, 8, 8)
    small, info = lt.compress(
        model, x, lambda m: 1.0, "weight_svd", 0.9, ratios={"2": 0.3}, rank_multiple=8, progress=False
    )
    assert list(info.ratios) == ["2"] and info.sizes["2"] % 8 == 0
    assert isinstance(small.get_submodule("2"), nn.Sequential)


def test_bad_input_is_rejected_clearly() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    x = torch.randn(1, 3, 10, 10)
    for target in (0.0, 1.0, -0.5, 1.5):
        with pytest.raises(lt.CompressionError, match="target_mac_ratio"):
            lt.compress(model, x, lambda m: 1.0, "weight_svd", target)
    with pytest.raises(lt.CompressionError, match="unknown scheme"):
        lt.compress(model, x, lambda m: 1.0, "magic", 0.5)
    with pytest.raises(lt.CalibrationDataError, match="calibration=None"):
        lt.compress(model, x, lambda m: 1.0, "channel_pruning", 0.5)
    with pytest.raises(lt.CompressionError, match="no layer can be compressed"):
        lt.compress(nn.Sequential(nn.ReLU()), x, lambda m: 1.0, "spatial_svd", 0.5)
    with pytest.raises(lt.EvalFunctionError, match="eval_fn raised"):
        lt.compress(model, x, lambda m: 1 / 0, "weight_svd", 0.5)
    with pytest.raises(lt.UnknownLayerError, match=r"ratios=\['nope'\].*valid names \(2\): 0, 2"):
        lt.compress(model, x, lambda m: 1.0, "weight_svd", 0.5, ratios={"nope": 0.5})
    with pytest.raises(lt.CompressionError, match="manual ratios"):
        lt.compress(model, x, lambda m: 1.0, "weight_svd", 0.5, ratios={"2": 1.5})


def _prunable() -> tuple[nn.Module, torch.Tensor, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 1)).eval()
    data = [torch.randn(4, 3, 10, 10, generator=gen) for _ in range(3)]
    return model, data[0][:1], data


def test_channel_pruning_checks_calibration_before_blaming_eval_fn() -> None:
    model, x, data = _prunable()
    before = state_snapshot(model)
    calls = []

    def score(m: nn.Module) -> float:
        calls.append(1)
        with torch.no_grad():
            return -float((m(data[0]) - model(data[0])).pow(2).mean())

    bad = [d.clone() for d in data]
    bad[1][0, 0, 0, 0] = float("nan")  # once reached the least-squares fits and came back as a NaN score
    options = dict(scheme="channel_pruning", target_mac_ratio=0.7, rank_multiple=1, progress=False)
    with pytest.raises(lt.CalibrationDataError, match=r"calibration batch 1, input 0 \(shape \(4, 3, 10, 10\)\)"):
        lt.compress(model, x, score, calibration=bad, **options)
    with pytest.raises(lt.CalibrationDataError, match="no batch"):
        lt.compress(model, x, score, calibration=[], **options)
    with pytest.raises(lt.InvalidOptionError, match="num_batches=0: pass a whole number ≥ 1"):
        lt.compress(model, x, score, calibration=data, num_batches=0, **options)
    with pytest.raises(lt.CalibrationDataError, match=r"calibration batch 0 is a dict with keys \['x'\]"):
        lt.compress(model, x, score, calibration=[{"x": data[0]}], **options)
    with pytest.raises(lt.CalibrationDataError, match="not a single tensor"):
        lt.compress(model, x, score, calibration=data[0], **options)
    assert not calls  # all refused before eval_fn ran
    with pytest.raises(lt.CalibrationDataError, match="fails on calibration batch 0"):
        lt.compress(model, x, score, calibration=[torch.randn(2, 5, 10, 10)], **options)
    small, info = lt.compress(model, x, score, calibration=data, **options)  # the clean data works
    assert info.mac_ratio <= 0.7
    assert_unchanged(model, before)


def test_channel_pruning_takes_labelled_batches_like_calibration_does() -> None:
    # (inputs, labels) batches, as QuantSim.compute_encodings takes them, once reached forward() with the labels.
    model, x, data = _prunable()
    labelled = [(d, torch.zeros(len(d), dtype=torch.long)) for d in data]
    options = dict(scheme="channel_pruning", ratios={"2": 0.5}, rank_multiple=1, progress=False)
    plain, plain_info = lt.compress(model, x, lambda m: 1.0, calibration=data, **options)
    with_labels, info = lt.compress(model, x, lambda m: 1.0, calibration=labelled, **options)
    assert info.sizes == plain_info.sizes == {"2": 8}
    for a, b in zip(plain.state_dict().values(), with_labels.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_compress_names_unknown_layers_and_bad_options() -> None:
    model, x, data = _prunable()
    before = state_snapshot(model)
    with pytest.raises(lt.UnknownLayerError, match=r"skip_layers=\['conv9'\].*valid names \(3\): 0, 2, 4"):
        lt.compress(model, x, lambda m: 1.0, "weight_svd", 0.7, skip_layers=["conv9"], progress=False)
    for candidates in (0, 1, [1.0], [0.0, 0.5], True):
        with pytest.raises(lt.InvalidOptionError, match="candidates="):
            lt.compress(model, x, lambda m: 1.0, "weight_svd", 0.7, candidates=candidates, progress=False)
    with pytest.raises(lt.EvalFunctionError, match="got nan on the uncompressed model.*NaN model outputs"):
        lt.compress(model, x, lambda m: float("nan"), "weight_svd", 0.7, progress=False)
    with pytest.raises(lt.InputShapeError, match=r"\(1, 5, 10, 10\)"):
        lt.compress.cost(model, torch.randn(1, 5, 10, 10))
    bad_x = x.clone()
    bad_x[0, 0, 0, 0] = float("nan")  # once gave a normal-looking cost report (Inf is allowed: attention masks)
    with pytest.raises(lt.NonFiniteModelError, match=r"example input 0 \(shape \(1, 3, 10, 10\)\) has 1 NaN value"):
        lt.compress.cost(model, bad_x)
    with pytest.raises(lt.CompressionError, match="no MAC formula for ReLU"):
        layer_macs(nn.ReLU(), (1, 3), (1, 3))
    for multiple in (0, -8, 2.5, True):
        with pytest.raises(lt.InvalidOptionError, match=f"rank_multiple={multiple!r}: pass a whole number ≥ 1"):
            lt.compress(model, x, lambda m: 1.0, "weight_svd", 0.7, rank_multiple=multiple, progress=False)
    assert_unchanged(model, before)


def test_skip_layers_as_one_string_and_a_cache_dir_that_is_a_file(tmp_path) -> None:
    model, x, _ = _prunable()
    calls = []

    def score(m: nn.Module) -> float:
        calls.append(1)
        return 1.0

    a_file = tmp_path / "cache"
    a_file.write_text("not a directory")
    with pytest.raises(lt.OutputPathError, match="cache_dir .*cache is an existing file, not a directory"):
        lt.compress(model, x, score, "weight_svd", 0.7, cache_dir=a_file, progress=False)
    with pytest.raises(lt.OutputPathError, match="cache is a file, so no directory can be made there"):
        lt.compress(model, x, score, "weight_svd", 0.7, cache_dir=a_file / "sub", progress=False)
    assert not calls and a_file.read_text() == "not a directory"  # refused before any evaluation
    # One name as a string is that layer (it was once matched as a substring of the string).
    _, info = lt.compress(
        model,
        x,
        score,
        "weight_svd",
        0.8,
        skip_layers="0",
        candidates=[0.25, 0.5],
        cache_dir=tmp_path / "new",
        progress=False,
    )
    assert info.skipped == {"0": "skipped by request"} and "0" not in info.ratios
    assert (tmp_path / "new" / "eval_scores_weight_svd.json").exists()


def test_cached_eval_score_table_is_reused_only_for_the_same_weights_and_eval_fn(tmp_path) -> None:
    """A table cached for another model (same shapes, other weights) or another eval_fn/data (another
    baseline score) must be recomputed, never silently reused."""
    from leantorch.compress.ratio_selection import build_table, fingerprint

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    path = tmp_path / "table.json"
    calls = []

    def score(layer: str, ratio: float) -> float:
        calls.append((layer, ratio))
        return ratio

    stamp = fingerprint(model, ["0", "2"], "weight_svd", [0.5, 1.0], 1)
    build_table(["0", "2"], [0.5, 1.0], score, 1.0, "weight_svd", stamp, path, progress=False)
    assert len(calls) == 2
    build_table(["0", "2"], [0.5, 1.0], score, 1.0, "weight_svd", stamp, path, progress=False)
    assert len(calls) == 2  # same model, same baseline: reused
    build_table(["0", "2"], [0.5, 1.0], score, 0.9, "weight_svd", stamp, path, progress=False)
    assert len(calls) == 4  # another baseline (eval_fn or data changed): recomputed
    retrained = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    assert fingerprint(retrained, ["0", "2"], "weight_svd", [0.5, 1.0], 1) != stamp


def test_channel_pruning_passes_out_of_memory_through_unchanged() -> None:
    class OutOfMemory(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise torch.OutOfMemoryError("CUDA out of memory")

    model = nn.Sequential(nn.Conv2d(3, 4, 3), OutOfMemory())
    with pytest.raises(torch.OutOfMemoryError):  # not a CalibrationDataError blaming the batch's shape
        sample_grams(model, copy.deepcopy(model), "0", [torch.randn(1, 3, 8, 8)])
    with pytest.raises(
        lt.CalibrationDataError, match=r"fails on calibration batch 0 \(input shapes \[\(1, 2, 8, 8\)\]"
    ):
        sample_grams(model[:1], copy.deepcopy(model[:1]), "0", [torch.randn(1, 2, 8, 8)])


def test_a_compressed_model_goes_through_cle_quantsim_and_a_qdq_export_that_onnx_runtime_matches(tmp_path) -> None:
    """Compress → quantize in one flow (API): the compressed GraphModule is an ordinary model for BN folding, CLE,
    QuantSim and the QDQ export; ONNX Runtime runs the export within a step of the simulation."""
    import onnxruntime as ort

    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 8, 1),
    ).eval()
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.running_mean.normal_(0, 0.1, generator=gen)
            bn.running_var.uniform_(0.5, 2.0, generator=gen)
    x = torch.randn(16, 3, 12, 12, generator=gen)
    compressed, info = lt.compress(
        model, x[:1], lambda m: 0.0, "channel_pruning", ratios={"3": 0.5, "6": 0.5}, calibration=[x]
    )
    assert info.macs_after < info.macs_before
    equalized = lt.equalize(compressed, x[:1])
    with torch.no_grad():
        torch.testing.assert_close(equalized(x), compressed(x), rtol=1e-4, atol=1e-4)  # CLE keeps the function
    sim = lt.QuantSim(equalized, x[:1], per_channel=True)
    sim.compute_encodings([x], progress=False)
    files = sim.export(tmp_path, "compressed_w8a8")
    options = ort.SessionOptions()  # the QDQ graph as written (the fused u8s8 kernels saturate on CPUs w/o VNNI)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(files["onnx"]), options, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        simulated = sim.model(x)
    exported = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    step = float(
        sim.quantizers()[next(n for n in sim.quantizers() if "output" in n and n.startswith("6"))].encoding.scale.max()
    )
    assert (exported - simulated).abs().max() <= step * 1.01


def test_a_registered_compression_scheme_is_selectable_everywhere() -> None:
    # One CompressionScheme subclass, registered, is enough for lt.compress and the CLI's --scheme choices.
    from leantorch.cli_args import build_parser
    from leantorch.compress.schemes import LowRankScheme, register_scheme, scheme_names, unregister_scheme

    class HalfWeightSvd(LowRankScheme):
        """Weight SVD that only ever compresses to the rank for half the layer's MACs."""

        def __init__(self) -> None:
            super().__init__("weight_svd", name="half_weight_svd")

        def size_for(self, stage, name, module, ratio):  # type: ignore[no-untyped-def,override]
            return super().size_for(stage, name, module, 0.5)

    register_scheme(HalfWeightSvd())
    try:
        assert "half_weight_svd" in scheme_names()
        with pytest.raises(ValueError, match="already registered"):
            register_scheme(HalfWeightSvd())
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
        x = torch.randn(32, 64)
        small, info = lt.compress.compress(
            net, x[:1], lambda m: 1.0, "half_weight_svd", 0.6, ratios={"1": 0.9, "3": 0.9}, progress=False
        )
        assert info.scheme == "half_weight_svd" and set(info.sizes) == {"1", "3"}
        assert info.macs_after < 0.6 * info.macs_before  # every layer at half its MACs, whatever the ratio
        args = build_parser().parse_args(
            ["compress", "--model", "m.pt", "--data", "d.pt", "--scheme", "half_weight_svd"]
        )
        assert args.scheme == ["half_weight_svd"]
    finally:
        unregister_scheme("half_weight_svd")
    assert "half_weight_svd" not in scheme_names()
