"""BatchNorm folding: the folded model computes the same function (float64 check)."""

from __future__ import annotations

import pytest
import torch

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
    assert set(folded.folded_batch_norms) == {layer for layer, _ in pairs}
    assert_unchanged(resnet.float(), {k: v.float() if v.is_floating_point() else v for k, v in before.items()})


@pytest.mark.slow
def test_all_efficientnet_batch_norms_fold(efficientnet) -> None:
    folded, pairs = lt.fold_batch_norms(efficientnet, torch.randn(1, 3, 224, 224))
    assert len(pairs) == 49
    x = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(folded(x), efficientnet(x), rtol=1e-4, atol=1e-4)
