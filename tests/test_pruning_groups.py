"""Channel-pruning dependency groups: the groups of small graphs written out by hand, exact pruning of dead
channels through a residual add and a concatenation, the summed-error selection against an explicit float64
computation, and whole ResNet/EfficientNet models where every block is prunable."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import leantorch as lt
from leantorch.compress.cost import cost
from leantorch.compress.group_pruning import prune_groups, select_units
from leantorch.compress.pruning_groups import PruningGroup, find_groups
from leantorch.compress.pruning_pass import prune_in_one_pass
from leantorch.compress.stage import Stage
from leantorch.evaluation import sqnr_score
from leantorch.models.resnet import ResNetSmall


class Residual(nn.Module):
    """a → (b → bn) + a → ReLU → c, then a linear head: a, b write one group; b and c read it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        y = F.relu(y + self.bn(self.b(y)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(F.relu(self.c(y)), 1), 1))


class Concat(nn.Module):
    """Two branches concatenated along the channels, read by one conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 5, 3, padding=1)
        self.a, self.b = nn.Conv2d(5, 4, 1), nn.Conv2d(5, 6, 3, padding=1)
        self.c = nn.Conv2d(10, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.stem(x))
        return self.c(torch.cat([torch.relu(self.a(y)), self.b(y)], dim=1))


class FanOut(nn.Module):
    """conv → BN → ReLU6 → depthwise → ReLU, read by two convs; plus a conv behind a transpose."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.c1, self.c2 = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 3, padding=1)
        self.d = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.dw(F.relu6(self.bn(self.a(x)))))
        z = self.c1(y) + self.c2(y)
        return self.d(z.transpose(2, 3))


def _analyse(model: nn.Module, x: torch.Tensor):  # type: ignore[no-untyped-def]
    gm = lt.prepare(model.eval(), x)
    return gm, find_groups(gm, list(cost(gm, x).layers))


def _lists(group: PruningGroup) -> dict[str, dict[str, list[int]]]:
    return {
        kind: {n: t.tolist() for n, t in getattr(group, kind).items()}
        for kind in ("consumers", "producers", "channelwise")
    }


def test_groups_of_a_residual_add_a_concat_and_a_fan_out_through_depthwise() -> None:
    x = torch.randn(1, 3, 8, 8)
    _, found = _analyse(Residual(), x)
    assert list(found.groups) == ["b", "fc"]
    eight = list(range(8))
    assert _lists(found.groups["b"]) == {
        "consumers": {"b": eight, "c": eight},
        "producers": {"a": eight, "b": eight},
        "channelwise": {"bn": eight},
    }
    assert _lists(found.groups["fc"]) == {
        "consumers": {"fc": list(range(6))},
        "producers": {"c": list(range(6))},
        "channelwise": {},
    }
    assert found.skipped == {"a": "reaches the model input"}
    assert found.group_of == {"b": "b", "c": "b", "fc": "fc"}

    _, found = _analyse(Concat(), x)
    assert list(found.groups) == ["a", "c"]
    assert _lists(found.groups["a"]) == {  # fan-out of the stem: a and b read the same channels
        "consumers": {"a": list(range(5)), "b": list(range(5))},
        "producers": {"stem": list(range(5))},
        "channelwise": {},
    }
    assert _lists(found.groups["c"]) == {  # the concatenation: a owns units 0-3, b owns 4-9
        "consumers": {"c": list(range(10))},
        "producers": {"a": [0, 1, 2, 3], "b": [4, 5, 6, 7, 8, 9]},
        "channelwise": {},
    }

    _, found = _analyse(FanOut(), x)
    assert list(found.groups) == ["c1"]
    assert _lists(found.groups["c1"]) == {
        "consumers": {"c1": eight, "c2": eight},
        "producers": {"a": eight},
        "channelwise": {"bn": eight, "dw": eight},
    }
    # c1 + c2 is transposed before d: a layout the analysis does not model, so d cannot be pruned.
    assert "transpose" in found.skipped["d"] and "a" in found.skipped
    assert "dw" not in found.skipped  # pruned with its group

    grouped = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2), nn.Conv2d(8, 4, 1))
    _, found = _analyse(grouped, x)
    assert found.groups == {} and "grouped but not depthwise" in found.skipped["2"]
    assert "channels come from 2 (Conv2d, groups=2" in found.skipped["3"]


def test_a_resnet_has_every_block_in_a_group_and_only_the_stem_skipped() -> None:
    x = torch.randn(1, 3, 16, 16)
    _, found = _analyse(ResNetSmall(width=8), x)
    assert found.skipped == {"stem.0": "reaches the model input"}
    written = {
        "layers.0.conv1": (["layers.0.conv1", "layers.1.conv1", "layers.1.shortcut.0"], ["stem.0", "layers.0.conv2"]),
        "layers.0.conv2": (["layers.0.conv2"], ["layers.0.conv1"]),
        "layers.1.conv2": (["layers.1.conv2"], ["layers.1.conv1"]),
        "layers.2.conv1": (["layers.2.conv1", "layers.2.shortcut.0"], ["layers.1.conv2", "layers.1.shortcut.0"]),
        "layers.2.conv2": (["layers.2.conv2"], ["layers.2.conv1"]),
        "fc": (["fc"], ["layers.2.conv2", "layers.2.shortcut.0"]),
    }
    assert {n: (list(g.consumers), list(g.producers)) for n, g in found.groups.items()} == written
    assert list(found.groups["layers.0.conv1"].channelwise) == ["stem.1", "layers.0.bn2"]


def _dead_residual() -> Residual:
    """Units 2 and 5 of the residual group are zero everywhere: a, b and the BN write exact zeros there."""
    torch.manual_seed(0)
    model = Residual().eval()
    with torch.no_grad():
        for dead in (2, 5):
            model.a.weight[dead] = 0
            model.a.bias[dead] = 0
            model.bn.weight[dead] = 0
            model.bn.bias[dead] = 0
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model


def test_pruning_dead_channels_of_a_residual_group_gives_the_same_outputs() -> None:
    model = _dead_residual()
    x = torch.randn(1, 3, 8, 8)
    gm, found = _analyse(model, x)
    group = found.groups["b"]
    kept = torch.tensor([0, 1, 3, 4, 6, 7])
    # Closed form: keep the live units, slice every consumer's weight (no re-fit): identical outputs.
    pruned = copy.deepcopy(gm)
    weights = {n: gm.get_submodule(n).weight.detach()[:, kept] for n in group.consumers}
    prune_groups(pruned, [(group, kept, weights)])
    test = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(pruned(test), model(test), rtol=0, atol=1e-6)
    assert pruned.get_submodule("a").out_channels == 6 and pruned.get_submodule("bn").num_features == 6
    assert pruned.get_submodule("b").weight.shape == (6, 6, 3, 3) and pruned.get_submodule("c").in_channels == 6
    # The one pass finds the dead units itself (zero contribution) and the least-squares re-fit keeps the rest.
    data = [(torch.randn(8, 3, 8, 8),) for _ in range(2)]
    stage = Stage(lt.prepare(model, x), "channel_pruning", cost(gm, x), (), data, 1, 16)
    assert prune_in_one_pass(stage, {"b": 0.75}, progress=False) == {"b": 6}
    assert stage.gm.get_submodule("b").in_channels == 6 and stage.gm.get_submodule("b").out_channels == 6
    with torch.no_grad():
        torch.testing.assert_close(stage.gm(test), model(test), rtol=1e-4, atol=1e-5)
    # At ratio 1.0 nothing is pruned.
    untouched = Stage(lt.prepare(model, x), "channel_pruning", cost(gm, x), (), data, 1, 16)
    assert prune_in_one_pass(untouched, {"b": 1.0}, progress=False) == {}


def test_pruning_a_concat_group_cuts_each_branch_by_its_slice() -> None:
    torch.manual_seed(1)
    model = Concat().eval()
    x = torch.randn(1, 3, 8, 8)
    data = [(torch.randn(8, 3, 8, 8),)]
    score = sqnr_score(model, [torch.randn(4, 3, 8, 8)])
    small, info = lt.compress(
        model, x, score, "channel_pruning", ratios={"c": 0.5}, calibration=data, rank_multiple=1, progress=False
    )
    a, b, c = (small.get_submodule(n) for n in ("a", "b", "c"))
    assert info.sizes == {"c": 5} and a.out_channels + b.out_channels == c.in_channels == 5
    assert small(torch.randn(2, 3, 8, 8)).shape == (2, 3, 8, 8)


def _explicit_greedy(zs: list[torch.Tensor], keep: int) -> list[int]:
    """Remove, one at a time, the unit whose removal least increases Σ_consumers ‖Σ_R Z‖² / ‖Y‖² (float64)."""
    units = zs[0].shape[0]
    energy = [float(z.sum(0).pow(2).sum()) for z in zs]
    removed: list[int] = []
    for _ in range(units - keep):
        cost_of = {
            u: sum(float(z[removed + [u]].sum(0).pow(2).sum()) / e for z, e in zip(zs, energy))
            for u in range(units)
            if u not in removed
        }
        removed.append(min(cost_of, key=cost_of.__getitem__))
    return sorted(set(range(units)) - set(removed))


def test_summed_error_selection_equals_an_explicit_float64_computation() -> None:
    gen = torch.Generator().manual_seed(3)
    units = 6
    x = torch.randn(4, units, 5, 5, generator=gen, dtype=torch.float64)
    x[:, 1] *= 0.05  # a weak unit, and one that only one consumer cares about
    convs = {"k3": nn.Conv2d(units, 4, 3).double(), "k1": nn.Conv2d(units, 3, 1).double()}
    with torch.no_grad():
        convs["k1"].weight[:, 4] *= 0.01
    group = PruningGroup("k3", units, {n: torch.arange(units) for n in convs})
    grams, zs = {}, []
    for conv in convs.values():
        patches = F.unfold(x, conv.kernel_size).permute(0, 2, 1).reshape(-1, units * conv.kernel_size[0] ** 2)
        grams[conv] = patches.t() @ patches
        k = conv.kernel_size[0] ** 2
        w = conv.weight.detach().reshape(conv.out_channels, units * k)
        zs.append(torch.stack([patches[:, u * k : (u + 1) * k] @ w[:, u * k : (u + 1) * k].t() for u in range(units)]))
    weights = {n: c.weight for n, c in convs.items()}
    by_name = {n: grams[c] for n, c in convs.items()}
    for keep in range(1, units):
        assert select_units(group, weights, by_name, keep).tolist() == _explicit_greedy(zs, keep), keep
    # Removing one unit, greedy is the exhaustive optimum.
    best = min(itertools.combinations(range(units), units - 1), key=lambda s: _error(zs, s))
    assert select_units(group, weights, by_name, units - 1).tolist() == list(best)


def _error(zs: list[torch.Tensor], kept: tuple[int, ...]) -> float:
    dropped = [u for u in range(zs[0].shape[0]) if u not in kept]
    return sum(float(z[dropped].sum(0).pow(2).sum()) / float(z.sum(0).pow(2).sum()) for z in zs)


def test_compress_prunes_every_resnet_block_and_reaches_the_target(resnet) -> None:
    x = torch.randn(1, 3, 12, 12)
    calibration = [torch.randn(8, 3, 12, 12)]
    score = sqnr_score(resnet, [torch.randn(2, 3, 12, 12)])
    small, info = lt.compress(
        resnet, x, score, "channel_pruning", 0.6, calibration=calibration, candidates=[0.5, 0.75], progress=False
    )
    assert info.skipped == {"stem.0": "reaches the model input"}
    assert info.mac_ratio <= 0.6 and info.macs_after == cost(small, x).total_macs
    assert small(torch.randn(2, 3, 12, 12)).shape == (2, 10)
    assert torch.isfinite(torch.tensor(info.score))


@pytest.mark.slow
def test_compress_prunes_every_efficientnet_block() -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    from leantorch.models.efficientnet import efficientnet_lite0

    torch.manual_seed(0)
    model = efficientnet_lite0(pretrained=False)
    x = torch.randn(1, 3, 96, 96)
    gm = lt.prepare(model, x)
    found = find_groups(gm, list(cost(gm, x).layers))
    assert found.skipped == {"_conv_stem": "reaches the model input"}
    # Every block's expand (if any), depthwise and project convs are in a prunable group.
    members = {n for g in found.groups.values() for n in (*g.consumers, *g.producers, *g.channelwise)}
    blocks = {n for n in cost(gm, x).layers if n.startswith("_blocks.")}
    assert blocks <= members and len(found.groups) == 24
    small, info = lt.compress(
        model,
        x,
        sqnr_score(model, [torch.randn(2, 3, 96, 96)]),
        "channel_pruning",
        0.75,
        calibration=[torch.randn(4, 3, 96, 96)],
        candidates=[0.5, 0.75],
        progress=False,
    )
    assert info.skipped == {"_conv_stem": "reaches the model input"}
    assert info.mac_ratio <= 0.75 and small(torch.randn(1, 3, 96, 96)).shape == (1, 1000)


def test_a_manual_ratio_for_any_consumer_is_its_groups_ratio() -> None:
    model = _dead_residual()
    x = torch.randn(1, 3, 8, 8)
    data = [torch.randn(8, 3, 8, 8)]
    score = sqnr_score(model, [torch.randn(2, 3, 8, 8)])
    options = {"calibration": data, "rank_multiple": 1, "progress": False}
    small, info = lt.compress(model, x, score, "channel_pruning", ratios={"c": 0.5}, **options)
    assert info.sizes == {"b": 4} and small.get_submodule("c").in_channels == small.get_submodule("a").out_channels == 4
    with pytest.raises(lt.CompressionError, match="pruned together with the group b"):
        lt.compress(model, x, score, "channel_pruning", ratios={"b": 0.5, "c": 0.75}, **options)


@pytest.mark.parametrize("module", ["leantorch.compress.pruning_groups", "leantorch.compress.group_pruning"])
def test_docstring_examples_run(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
