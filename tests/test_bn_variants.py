"""BatchNorm variants fold (issue 10, item 5): timm's BatchNormAct2d, torchvision's FrozenBatchNorm2d, and
BatchNorm1d after Linear, where its channels are the Linear's features (and only there).

timm and torchvision cannot be imported here (CPU torch; torchvision's wheels are CUDA builds), so the two
classes are reproduced with the same structure and forward as their libraries' (timm 1.0
``timm.layers.norm_act.BatchNormAct2d``, torchvision ``ops.misc.FrozenBatchNorm2d``); leantorch recognises
them without importing either library.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import leantorch as lt
from leantorch.ops.norm import FrozenBatchNorm2d as LeantorchFrozenBatchNorm2d

from .conftest import run_onnx


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's: a BatchNorm2d whose forward calls F.batch_norm, then ``drop`` and ``act``."""

    def __init__(self, num_features: int, act_layer: type[nn.Module] = nn.ReLU) -> None:
        super().__init__(num_features)
        self.drop = nn.Identity()
        self.act = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        x = F.batch_norm(
            x,
            self.running_mean if not self.training or self.track_running_stats else None,
            self.running_var if not self.training or self.track_running_stats else None,
            self.weight,
            self.bias,
            bn_training,
            0.1,
            self.eps,
        )
        return self.act(self.drop(x))


class FrozenBatchNorm2d(nn.Module):
    """torchvision's: BN statistics and affine as buffers, forward written out."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight.reshape(1, -1, 1, 1), self.bias.reshape(1, -1, 1, 1)
        rv, rm = self.running_var.reshape(1, -1, 1, 1), self.running_mean.reshape(1, -1, 1, 1)
        scale = w * (rv + self.eps).rsqrt()
        return x * scale + (b - rm * scale)


def _randomise(bn: nn.Module) -> nn.Module:
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean"):
            getattr(bn, name).normal_()
        bn.running_var.uniform_(0.5, 2.0)
    return bn


def _net(norm: type[nn.Module], **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        _randomise(norm(8, **kwargs)),
        nn.ReLU(),
        nn.Conv2d(8, 4, 3, bias=False),
        _randomise(norm(4, **kwargs)),
    ).eval()


@pytest.mark.parametrize(
    "norm,kwargs",
    [(BatchNormAct2d, {}), (BatchNormAct2d, {"act_layer": nn.SiLU}), (FrozenBatchNorm2d, {})],
    ids=["bn-act-relu", "bn-act-silu", "frozen"],
)
def test_batch_norm_variants_fold_into_the_conv_before_them(norm: type[nn.Module], kwargs: dict) -> None:
    model = _net(norm, **kwargs)
    x = torch.randn(4, 3, 12, 12)
    folded, pairs = lt.fold_batch_norms(model, x)
    assert [conv for conv, _ in pairs] == ["0", "3"]
    with torch.no_grad():
        reference = model.double()(x.double())
        got = folded(x)
    assert torch.allclose(got.double(), reference, atol=1e-5, rtol=1e-5)
    left = [m for m in folded.modules() if isinstance(m, (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d))]
    assert left == []  # and the activations of BatchNormAct2d are still there (the allclose above)


def test_a_frozen_batch_norm_stays_frozen_in_the_sim_in_training_mode() -> None:
    model = _net(FrozenBatchNorm2d)
    x = torch.randn(4, 3, 12, 12)
    sim = lt.QuantSim(model, x[:1])
    bn = sim.layers()["1"].module
    assert isinstance(bn, LeantorchFrozenBatchNorm2d)
    for q in sim.quantizers().values():
        q.enabled = False
    sim.model.train()
    with torch.no_grad():
        assert torch.allclose(sim.model(x), model(x), atol=1e-5)  # running statistics, not the batch's
    assert not any(p.requires_grad for p in bn.parameters())
    assert isinstance(model[1], FrozenBatchNorm2d)  # the user's model is untouched


def test_batch_norm_act_exports_and_matches_onnx_runtime(tmp_path) -> None:

    model = _net(BatchNormAct2d)
    data = [torch.randn(8, 3, 12, 12) for _ in range(2)]
    sim = lt.QuantSim(lt.fold_batch_norms(model, data[0][:1])[0], data[0][:1], per_channel=True)
    sim.compute_encodings(data, progress=False)
    files = sim.export(tmp_path, "model")
    x = torch.randn(4, 3, 12, 12)
    got = run_onnx(files["onnx"], x)
    with torch.no_grad():
        want = sim.model(x).numpy()
    step = float(sim.layers()["3"].output_quantizers[0].scale)
    assert abs(got - want).max() <= step * 1.001


class _LinearBatchNorm1d(nn.Module):
    def __init__(self, features: int, bn_channels: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(8, features)
        self.bn = _randomise(nn.BatchNorm1d(bn_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(x))


def test_batch_norm_1d_after_linear_folds_on_2d_values() -> None:
    model = _LinearBatchNorm1d(8, 8).eval()
    x = torch.randn(16, 8)
    folded, pairs = lt.fold_batch_norms(model, x)
    assert pairs == [("fc", "bn")]
    with torch.no_grad():
        assert torch.allclose(folded(x).double(), model.double()(x.double()), atol=1e-5)


@pytest.mark.parametrize("bn_channels", [8, 5], ids=["same-size", "other-size"])
def test_batch_norm_1d_over_another_axis_than_the_linear_features_is_left_alone(bn_channels: int) -> None:
    # (N, C, L) values: BatchNorm1d normalises C (dim 1), the Linear mixes L (the last dim). Folding would be
    # wrong even when C == L; it used to give a silently wrong model (same size) or a shape error.
    model = _LinearBatchNorm1d(8, bn_channels).eval()
    x = torch.randn(4, bn_channels, 8)
    folded, pairs = lt.fold_batch_norms(model, x)
    assert pairs == []
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-6)
