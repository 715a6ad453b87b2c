"""Inference BatchNorm in the sim is ``x * a + c``, which ONNX Runtime reproduces bit for bit (issue 10, item 6)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import leantorch as lt
from leantorch.quant.exact_batch_norm import exact_batch_norm, uses_exact_batch_norm

from .conftest import run_onnx


def _bn(kind: type[nn.Module], channels: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    bn = kind(channels)
    with torch.no_grad():
        bn.weight.normal_()
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(1e-4, 1e-2)  # small variances: BN scales its input up, as in random-init nets
    return bn.eval()


@pytest.mark.parametrize(
    "kind,shape",
    [
        (nn.BatchNorm1d, (8, 6)),
        (nn.BatchNorm1d, (8, 6, 5)),
        (nn.BatchNorm2d, (4, 6, 5, 5)),
        (nn.BatchNorm3d, (2, 6, 3, 3, 3)),
    ],
)
def test_exact_batch_norm_is_batch_norm_to_float32_rounding(kind: type[nn.Module], shape: tuple[int, ...]) -> None:
    bn = _bn(kind, 6)
    x = torch.randn(shape)
    view = (1, -1) + (1,) * (len(shape) - 2)
    bn.requires_grad_(False)
    reference = (x.double() - bn.running_mean.double().view(view)) / torch.sqrt(
        bn.running_var.double().view(view) + bn.eps
    ) * bn.weight.double().view(view) + bn.bias.double().view(view)
    with torch.no_grad():
        got = exact_batch_norm(x, bn)
    assert got.dtype == torch.float32
    # one rounding in a, one in c, one in the multiply, one in the add: a few ulps of the output's magnitude
    assert torch.allclose(got.double(), reference, rtol=1e-6, atol=1e-6 * float(reference.abs().max()))


def test_only_plain_batch_norms_with_running_statistics_take_the_exact_form() -> None:
    class BatchNormThenRelu(nn.BatchNorm2d):  # a subclass with its own forward (like timm's BatchNormAct2d)
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(super().forward(x))

    assert uses_exact_batch_norm(nn.BatchNorm2d(3).eval())
    assert not uses_exact_batch_norm(nn.BatchNorm2d(3).train())
    assert not uses_exact_batch_norm(nn.BatchNorm2d(3, track_running_stats=False).eval())
    assert not uses_exact_batch_norm(BatchNormThenRelu(3).eval())


class _ConvBnNet(nn.Module):
    """Unfolded conv → BN → ReLU6 blocks: BN amplifies its input (small running variances)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(8 if i else 3, 8, 3, padding=1), _bn(nn.BatchNorm2d, 8, seed=i), nn.ReLU6()]
        self.body = nn.Sequential(*layers)
        self.bn1d = _bn(nn.BatchNorm1d, 8, seed=9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1d(self.body(x).mean((2, 3)))


def test_an_unfolded_batch_norm_exports_so_onnx_runtime_matches_the_sim_bit_for_bit(tmp_path) -> None:
    model = _ConvBnNet().eval()
    data = [torch.randn(8, 3, 12, 12) for _ in range(2)]
    sim = lt.QuantSim(model, data[0][:1], per_channel=True)
    sim.compute_encodings(data, progress=False)
    x = torch.randn(16, 3, 12, 12)
    with torch.no_grad():
        want = sim.model(x).numpy()
        float_out = model(x)
    files = sim.export(tmp_path, "model")
    got = run_onnx(files["onnx"], x)
    ops = [n.op_type for n in onnx.load(str(files["onnx"])).graph.node]
    assert "BatchNormalization" not in ops and ops.count("Mul") >= 5 and ops.count("Add") >= 5
    step = float(sim.layers()["bn1d"].output_quantizers[0].scale)
    # Convs may still round a sum differently from torch; the BNs no longer do.
    assert np.abs(got - want).max() <= step * 1.001
    assert np.mean(got == want) >= 0.99
    # The quantizers off, the sim is the float model.
    for q in sim.quantizers().values():
        q.enabled = False
    with torch.no_grad():
        assert torch.allclose(sim.model(x), float_out, atol=1e-4, rtol=1e-4)


def test_batch_norm_alone_is_bit_exact_in_onnx_runtime(tmp_path) -> None:
    model = nn.Sequential(_bn(nn.BatchNorm2d, 16)).eval()
    data = [torch.randn(8, 16, 10, 10) * 0.05 for _ in range(2)]
    sim = lt.QuantSim(model, data[0][:1], act_bw=16)
    sim.compute_encodings(data, progress=False)
    x = torch.randn(32, 16, 10, 10) * 0.05
    files = sim.export(tmp_path, "model")
    got = run_onnx(files["onnx"], x)
    with torch.no_grad():
        want = sim.model(x).numpy()
    assert np.array_equal(got, want)  # only elementwise IEEE operations on both sides


def test_training_mode_batch_norm_still_uses_batch_statistics() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    x = torch.randn(8, 3, 8, 8)
    sim = lt.QuantSim(model, x[:1])
    for q in sim.quantizers().values():
        q.enabled = False
    sim.model.train()
    out = sim.model(x).detach()  # batch statistics: each channel's mean over the batch is BN's bias
    assert torch.allclose(out.mean((0, 2, 3)), model[1].bias.detach(), atol=1e-5)
