"""The fast compression paths give the numbers of the slow ones they replace.

* Eval-score table with an OutputScore (only the suffix after each layer runs, channel pruning's Gram matrices
  once per layer) against full runs of a compressed deep copy per candidate (a plain eval_fn).
* Channel pruning applied in one lock-step pass over both models against ``sample_grams`` per layer.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import leantorch as lt
from leantorch.compress.cost import cost
from leantorch.compress.pruning_pass import prune_in_one_pass
from leantorch.compress.stage import Stage
from leantorch.evaluation import agreement_score, sqnr_score


def chain() -> nn.Module:
    """conv → BN → ReLU → conv → ReLU → depthwise → BN → ReLU6 → 1×1 → ReLU → conv → pool → linear: three
    prunable layers, each the producer of the next, a depthwise on one path; SVD-able convs and a linear."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 24, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(24, 24, 3, padding=1, groups=24),
        nn.BatchNorm2d(24),
        nn.ReLU6(),
        nn.Conv2d(24, 16, 1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()
    for bn in (model[1], model[6]):
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 1.5)
    return model


def images(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 1, 12, 12, generator=gen)
    return base.repeat(1, 3, 1, 1) + 0.3 * torch.randn(n, 3, 12, 12, generator=gen)


@pytest.mark.parametrize("scheme", ["weight_svd", "spatial_svd", "channel_pruning"])
def test_suffix_table_scores_equal_full_run_scores(scheme: str) -> None:
    model = chain()
    x = images(1, 0)
    calibration = [images(4, s) for s in range(1, 4)]
    score = sqnr_score(model, [images(5, 10), images(3, 11)])
    options = dict(
        target_mac_ratio=0.7, calibration=calibration, candidates=[0.25, 0.5, 0.75], rank_multiple=1, progress=False
    )
    fast, fast_info = lt.compress(model, x, score, scheme, **options)
    # A plain callable is not recognised as an OutputScore: every candidate runs a compressed deep copy in full.
    slow, slow_info = lt.compress(model, x, lambda m: score(m), scheme, **options)
    assert fast_info.table is not None and slow_info.table is not None
    assert list(fast_info.table.scores) == list(slow_info.table.scores)
    assert len(fast_info.table.scores) >= 2
    for layer, row in slow_info.table.scores.items():
        assert list(fast_info.table.scores[layer]) == list(row)
        for ratio, value in row.items():
            # SQNR in dB; equal up to float rounding (the channel-pruning producers compute fewer output
            # channels in the full run, and a conv kernel may block a different channel count differently).
            assert fast_info.table.scores[layer][ratio] == pytest.approx(value, rel=1e-6, abs=1e-6), (layer, ratio)
    assert fast_info.ratios == slow_info.ratios and fast_info.sizes == slow_info.sizes
    test = images(8, 99)
    with torch.no_grad():
        torch.testing.assert_close(fast(test), slow(test), rtol=1e-5, atol=1e-6)


def test_suffix_table_with_top1_agreement_and_a_layer_that_saves_nothing() -> None:
    """Top-1 agreement ties a lot: the same ties either way. Candidate 0.99 rounds to the full rank on some
    layers (saves nothing): those entries are the baseline, as in the full-run path."""
    model = chain()
    x = images(1, 0)
    score = agreement_score(model, [images(16, 12)])
    options = dict(target_mac_ratio=0.8, candidates=[0.3, 0.99], rank_multiple=8, progress=False)
    _, fast = lt.compress(model, x, score, "spatial_svd", **options)
    _, slow = lt.compress(model, x, lambda m: score(m), "spatial_svd", **options)
    assert fast.table.scores == slow.table.scores


def _stage(model: nn.Module, data: list[torch.Tensor]) -> Stage:
    x = data[0][:1]
    gm = lt.prepare(model, x)
    gm.eval()
    return Stage(gm, "channel_pruning", cost(gm, x), (), [(d,) for d in data], 1, 16)


def test_one_pass_pruning_equals_layer_by_layer_pruning() -> None:
    data = [images(4, s) for s in range(1, 4)]
    chosen = {"3": 0.5, "8": 0.4, "10": 0.6}  # each pruned layer is the producer of the next
    slow = _stage(chain(), data)
    # The linear head reads the last conv's channels through the pool and the flatten: a group too.
    assert set(slow.layers) == {*chosen, "14"}
    slow_sizes = {name: slow.apply(slow.gm, name, ratio) for name, ratio in chosen.items()}  # sample_grams each
    fast = _stage(chain(), data)
    fast_sizes = prune_in_one_pass(fast, chosen, progress=False)
    assert fast_sizes == slow_sizes == {"3": 8, "8": 9, "10": 9}
    slow_state, fast_state = slow.gm.state_dict(), fast.gm.state_dict()
    assert list(slow_state) == list(fast_state)
    for key, value in slow_state.items():
        assert fast_state[key].shape == value.shape, key  # the same channels kept
        torch.testing.assert_close(fast_state[key], value, rtol=1e-5, atol=1e-6, msg=key)
    test = images(6, 50)
    with torch.no_grad():
        torch.testing.assert_close(fast.gm(test), slow.gm(test), rtol=1e-5, atol=1e-6)


def test_suffix_table_names_a_calibration_batch_the_model_cannot_run() -> None:
    model = chain()
    x = images(1, 0)
    score = sqnr_score(model, [images(4, 10)])
    with pytest.raises(
        lt.CalibrationDataError, match=r"fails on calibration batch 1 \(input shapes \[\(2, 5, 12, 12\)\]"
    ):
        lt.compress(
            model,
            x,
            score,
            "channel_pruning",
            0.7,
            calibration=[images(2, 1), torch.randn(2, 5, 12, 12)],
            progress=False,
        )


def test_layer_callback_still_sees_each_pruned_layer() -> None:
    model = chain()
    x = images(1, 0)
    seen = []
    score = sqnr_score(model, [images(4, 10)])
    small, info = lt.compress(
        model,
        x,
        score,
        "channel_pruning",
        0.75,
        calibration=[images(4, 1)],
        layer_callback=lambda m, name: seen.append((name, m.get_submodule(name).in_channels)),
        progress=False,
    )
    assert seen and [n for n, _ in seen] == list(info.sizes)
    assert all(channels == info.sizes[n] for n, channels in seen)
    assert copy.deepcopy(small) is not None


def test_channel_pruning_skips_a_conv_called_at_several_places() -> None:
    from torch import nn

    from leantorch.compress.cost import cost
    from leantorch.compress.stage import Stage

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.c1, self.c2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            return self.c2(torch.relu(self.c1(self.c2(torch.relu(self.c1(x))))))

    x = torch.randn(2, 3, 8, 8)
    gm = lt.prepare(Twice().eval(), x)
    stage = Stage(gm, "channel_pruning", cost(gm, x), [], [x], 1, 4)
    assert "c2" not in stage.layers and "called at 2 places" in stage.skipped["c2"]


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["spatial_svd", "channel_pruning"])
def test_eval_score_table_on_two_ray_workers_equals_the_serial_table(scheme: str) -> None:
    pytest.importorskip("ray")
    model = chain()
    x = images(1, 0)
    options = dict(
        target_mac_ratio=0.7,
        calibration=[images(4, s) for s in range(1, 3)],
        candidates=[0.25, 0.5, 0.75],
        rank_multiple=1,
        progress=False,
    )
    threads = torch.get_num_threads()
    # Each Ray worker runs one thread; so does this process here (reference outputs and baseline included), so
    # that every float reduction is split the same way.
    torch.set_num_threads(1)
    try:
        score = sqnr_score(model, [images(5, 10)])
        _, serial = lt.compress(model, x, score, scheme, **options)
        _, parallel = lt.compress(model, x, score, scheme, workers=2, **options)
    finally:
        torch.set_num_threads(threads)
    assert serial.table is not None and parallel.table is not None
    assert parallel.table.scores == serial.table.scores
    assert parallel.ratios == serial.ratios
