"""BatchNorm folding: the folded model computes the same function (float64 check)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import leantorch as lt
from leantorch.graph import call_sites, op_type

from .conftest import assert_unchanged, state_snapshot


def test_folded_resnet_equals_original_in_float64(resnet) -> None:
    before = state_snapshot(resnet)
    model = resnet.double()
    folded, pairs = lt.fold_batch_norms(model, torch.randn(1, 3, 32, 32, dtype=torch.float64))
    assert len(pairs) == 9 and "BatchNorm" not in [op_type(m) for _, m in call_sites(folded)]
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-10, atol=1e-10)
    # BN statistics live in the model's one state object (lt.model_state), not in ad-hoc attributes
    assert set(lt.model_state(folded).output_stats) == {layer for layer, _ in pairs}
    assert set(lt.model_state(lt.prepare(folded, x[:1])).output_stats) == set(lt.model_state(folded).output_stats)
    assert set(lt.model_state(copy.deepcopy(folded)).output_stats) == set(lt.model_state(folded).output_stats)
    assert not hasattr(folded, "output_stats")
    assert_unchanged(resnet.float(), {k: v.float() if v.is_floating_point() else v for k, v in before.items()})


@pytest.mark.slow
def test_all_efficientnet_batch_norms_fold(efficientnet) -> None:
    folded, pairs = lt.fold_batch_norms(efficientnet, torch.randn(1, 3, 224, 224))
    assert len(pairs) == 49
    x = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(folded(x), efficientnet(x), rtol=1e-4, atol=1e-4)


def test_batch_norm_before_unpadded_conv_and_linear_folds_exactly() -> None:
    net = torch.nn.Sequential(
        torch.nn.BatchNorm2d(3),
        torch.nn.Conv2d(3, 4, 1),
        torch.nn.ReLU(),
        torch.nn.BatchNorm2d(4),
        torch.nn.Conv2d(4, 4, 3, padding=1),  # padded: kept
        torch.nn.Flatten(),
        torch.nn.BatchNorm1d(4 * 5 * 5),
        torch.nn.Linear(100, 3),
    )
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)
    net = net.double().eval()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    folded, pairs = lt.fold_batch_norms(net, x[:1])
    assert sorted(pairs) == [("1", "0"), ("7", "6")]
    torch.testing.assert_close(folded(x), net(x), rtol=1e-10, atol=1e-10)


class _TiedConvs(nn.Module):
    """Two convs sharing one weight, each followed by its own BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.b.weight = self.a.weight
        self.bn_a, self.bn_b = nn.BatchNorm2d(4), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn_a(self.a(x)) + self.bn_b(self.b(x))


class _ReusedConv(nn.Module):
    """One conv called twice, each call followed by its own BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn_a, self.bn_b = nn.BatchNorm2d(3), nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn_b(self.conv(self.bn_a(self.conv(x))))


def _randomize_bn_statistics(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.2)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen))


@pytest.mark.parametrize("make", [_TiedConvs, _ReusedConv])
def test_shared_weights_and_reused_layers_fold_without_changing_outputs(make) -> None:
    # Tied weights once folded both BNs into the one shared weight (max error 0.72 on outputs of magnitude 2.7).
    torch.manual_seed(0)
    model = make().eval()
    _randomize_bn_statistics(model)
    x = torch.randn(4, 3, 8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        expected = model(x)
    folded, pairs = lt.fold_batch_norms(model, x[:1])
    with torch.no_grad():
        assert torch.allclose(folded(x), expected, atol=1e-5), float((folded(x) - expected).abs().max())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the user's model is untouched
    if make is _TiedConvs:
        assert sorted(pairs) == [("a", "bn_a"), ("b", "bn_b")]
