"""timm's constructs, reproduced in plain torch (CI cannot install timm: it imports torchvision): each small model
traces as given, has every Conv/Linear weight quantized, and its export runs in ONNX Runtime within one output step
of the simulation, measured by the same harness as ``benchmarks/coverage.py``'s timm group.

- Swin: window attention on a token grid padded to a multiple of the window with sizes computed from the traced
  shape, a cyclic shift (``torch.roll``) with its attention mask, a relative-position bias gathered by an index
  buffer, and the crop back;
- LeViT: attention biases served from a per-device cache dict in eval, Linear + BatchNorm1d on flattened tokens,
  hard-swish, and the distilled head ``(head(x) + head_dist(x)) / 2``;
- ConvNeXt / EfficientFormer / GhostNet: depthwise 7x7 conv, channels-last LayerNorm MLP with a LayerScale
  ``x.mul(gamma)``, the pooling token mixer ``pool(x) - x``, a Ghost module (``cat`` of a conv and a cheap
  depthwise conv, sliced to the output width) and ``F.dropout(x, p, training=self.training)`` before the head;
- MobileViT: feature maps unfolded into patches and folded back with reshapes/transposes of traced sizes, a
  transformer layer on the patches, and the local/global fusion ``cat`` + conv.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import leantorch as lt

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "coverage.py"
if "coverage_benchmark" not in sys.modules:  # shared with tests/test_coverage.py
    _SPEC = importlib.util.spec_from_file_location("coverage_benchmark", _PATH)
    assert _SPEC is not None and _SPEC.loader is not None
    sys.modules["coverage_benchmark"] = importlib.util.module_from_spec(_SPEC)  # dataclasses look it up by name
    _SPEC.loader.exec_module(sys.modules["coverage_benchmark"])
coverage = sys.modules["coverage_benchmark"]


class SwinLike(nn.Module):
    """Patch embedding, one shifted-window attention block (padded grid), mean pool, head."""

    def __init__(self, dim: int = 16, window: int = 4, shift: int = 2, heads: int = 2) -> None:
        super().__init__()
        self.window, self.shift, self.heads = window, shift, heads
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 10)
        self.bias_table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads) * 0.5)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + window - 1
        self.register_buffer("bias_index", rel[..., 0] * (2 * window - 1) + rel[..., 1], persistent=False)

    def _mask(self, hp: int, wp: int) -> torch.Tensor:
        # Which shifted-window region each token came from: tokens of different regions must not attend.
        region = torch.zeros(hp, wp)
        cuts = (slice(0, -self.window), slice(-self.window, -self.shift), slice(-self.shift, None))
        for k, (a, b) in enumerate((a, b) for a in cuts for b in cuts):
            region[a, b] = k
        windows = region.view(hp // self.window, self.window, wp // self.window, self.window)
        windows = windows.permute(0, 2, 1, 3).reshape(-1, self.window**2)
        return (windows[:, None, :] != windows[:, :, None]).float() * -100.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).permute(0, 2, 3, 1)  # B, H, W, C
        b, h, w, c = x.shape
        shortcut = x
        x = self.norm(x)
        pad_h, pad_w = (self.window - h % self.window) % self.window, (self.window - w % self.window) % self.window
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # sizes from the traced shape
        hp, wp = h + pad_h, w + pad_w
        x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        n = self.window**2
        x = x.view(b, hp // self.window, self.window, wp // self.window, self.window, c)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, n, c)
        q, k, v = self.qkv(x).reshape(-1, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)
        attn = attn + self.bias_table[self.bias_index.view(-1)].view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        windows = attn.shape[0] // b
        mask = self._mask(hp, wp).to(attn.dtype)
        attn = attn.view(b, windows, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
        x = (attn.view(-1, self.heads, n, n).softmax(dim=-1) @ v).transpose(1, 2).reshape(-1, n, c)
        x = self.proj(x).view(b, hp // self.window, wp // self.window, self.window, self.window, c)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))[:, :h, :w, :].contiguous()
        return self.head((shortcut + x).mean(dim=(1, 2)))


class LeViTLike(nn.Module):
    """Conv stem, attention with cached biases, Linear+BatchNorm1d MLP, distilled head."""

    def __init__(self, dim: int = 16, res: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dim, 3, 2, 1), nn.BatchNorm2d(dim), nn.Hardswish())
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.qkv_bn = nn.BatchNorm1d(3 * dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.head, self.head_dist = nn.Linear(dim, 10), nn.Linear(dim, 10)
        points = [(i, j) for i in range(res) for j in range(res)]
        offsets = {(abs(a[0] - b[0]), abs(a[1] - b[1])) for a in points for b in points}
        index = {o: k for k, o in enumerate(sorted(offsets))}
        idxs = [[index[(abs(a[0] - b[0]), abs(a[1] - b[1]))] for b in points] for a in points]
        self.attention_biases = nn.Parameter(torch.randn(len(index)))
        self.register_buffer("attention_bias_idxs", torch.tensor(idxs), persistent=False)
        self.attention_bias_cache: dict[str, torch.Tensor] = {}

    def biases(self, device: torch.device) -> torch.Tensor:
        if self.training:
            return self.attention_biases[self.attention_bias_idxs]
        key = str(device)  # timm caches the gathered biases per device in eval
        if key not in self.attention_bias_cache:
            self.attention_bias_cache[key] = self.attention_biases[self.attention_bias_idxs]
        return self.attention_bias_cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).flatten(2).transpose(1, 2)  # B, N, C
        b, n, c = x.shape
        qkv = self.qkv_bn(self.qkv(x).flatten(0, 1)).reshape(b, n, 3 * c)
        q, k, v = qkv.split(c, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * c**-0.5 + self.biases(x.device)
        x = x + attn.softmax(dim=-1) @ v
        x = x + self.fc2(F.hardswish(self.fc1(x)))
        x = x.mean(1)
        if self.training:
            return self.head(x), self.head_dist(x)
        return (self.head(x) + self.head_dist(x)) / 2


class ConvNeXtGhostLike(nn.Module):
    """ConvNeXt block with LayerScale, pooling token mixer, Ghost module, functional dropout before the head."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, stride=4)
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.rand(dim) + 0.5)
        self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.primary = nn.Sequential(nn.Conv2d(dim, 12, 1, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.cheap = nn.Sequential(nn.Conv2d(12, 12, 3, padding=1, groups=12, bias=False), nn.BatchNorm2d(12))
        self.out_chs, self.drop_rate = 20, 0.2
        self.head = nn.Linear(20, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(F.gelu(self.fc1(self.norm(y)))).permute(0, 3, 1, 2)
        x = x + y.mul(self.gamma.reshape(1, -1, 1, 1))
        x = x + (self.pool(x) - x)
        a = self.primary(x)
        x = torch.cat([a, self.cheap(a)], dim=1)[:, : self.out_chs, :, :]
        x = F.dropout(x.mean((2, 3)), p=self.drop_rate, training=self.training)
        return self.head(x)


class MobileViTLike(nn.Module):
    """Local conv, unfold into 2x2 patches, a transformer MLP on the patches, fold back, fuse with the input."""

    def __init__(self, dim: int = 16, patch: int = 2) -> None:
        super().__init__()
        self.patch = patch
        self.stem = nn.Sequential(nn.Conv2d(3, dim, 3, 2, 1), nn.BatchNorm2d(dim), nn.SiLU())
        self.local = nn.Conv2d(dim, dim, 3, padding=1)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim))
        self.proj = nn.Conv2d(dim, dim, 1)
        self.fuse = nn.Conv2d(2 * dim, dim, 3, padding=1)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        shortcut = x
        x = self.local(x)
        b, c, h, w = x.shape
        ph = pw = self.patch
        new_h, new_w = -(-h // ph) * ph, -(-w // pw) * pw
        if new_h != h or new_w != w:  # a branch on a shape: decided by the example
            x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
        nh, nw = new_h // ph, new_w // pw
        x = x.reshape(b * c * nh, ph, nw, pw).transpose(1, 2).reshape(b, c, nh * nw, ph * pw)
        x = x.transpose(1, 3).reshape(b * ph * pw, nh * nw, c)
        x = x + self.mlp(self.norm(x))
        x = x.contiguous().view(b, ph * pw, nh * nw, c).transpose(1, 3).reshape(b * c * nh, nw, ph, pw)
        x = x.transpose(1, 2).reshape(b, c, nh * ph, nw * pw)
        x = self.fuse(torch.cat([shortcut, self.proj(x)], dim=1))
        return self.head(x.mean((2, 3)))


# LeViT's output is ``(a + b) / 2``: its quantizer's step is about half the sum's, so one step flipped in the sum
# (ONNX Runtime and torch may round a tie differently anywhere upstream) reads as two output steps.
MODELS = [(SwinLike, 40, 1.0), (LeViTLike, 8, 2.0), (ConvNeXtGhostLike, 32, 1.0), (MobileViTLike, 20, 1.0)]


@pytest.mark.parametrize("cls,size,steps", MODELS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_timm_construct_traces_quantizes_and_matches_onnx_runtime(
    cls: type[nn.Module], size: int, steps: float
) -> None:
    data = coverage._images(3, size)
    spec = coverage.Spec(cls.__name__, "timm-like", coverage._seeded(cls, data), data)
    row: dict = {"model": spec.name}
    coverage._measure(spec, row)
    assert row["errors"] == [], row["errors"]
    assert row["traced"] == "yes"
    assert row["weights_quantized"] == 100.0, row.get("float_layers")
    assert row["export"] == "ok"
    assert row["ort_steps"] is not None and row["ort_steps"] <= steps, row
    assert row["ort_same_inputs"]["max_steps"] <= 1.0  # each quantizer, fed ONNX Runtime's inputs


def test_item_assignment_on_a_traced_tensor_is_kept_in_the_graph() -> None:
    # timm's Swin with strict_img_size=False builds its shift mask in forward: zeros of the traced size, then
    # region numbers written in with `mask[:, a:b, c:d, :] = k`. The write must run on every call, in order.
    class Masked(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mask = torch.zeros((1, x.shape[1], x.shape[2]), dtype=x.dtype)
            mask[:, : x.shape[1] // 2, :] = 1.0
            mask[:, :, -1:] = 2.0
            return x * mask

    model, x = Masked(), torch.randn(2, 4, 6)
    gm = lt.prepare(model, x)
    other = torch.randn(3, 6, 5)  # another size: the mask follows it
    assert torch.equal(gm(other), model(other))


def test_item_assignment_of_input_values_makes_the_tensor_depend_on_the_input() -> None:
    # A tensor written with the input's values is no longer static: a branch on it is refused, not frozen.
    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            buf = torch.zeros(x.shape[0])
            buf[0] = x[0, 0]
            return x * 2 if buf.sum() > 0 else x

    with pytest.raises(lt.TraceError):
        lt.prepare(Branchy(), torch.ones(2, 3))


def test_in_place_methods_whose_result_is_unused_stay_in_the_graph() -> None:
    # timm's LayerScale(inplace=True) style: `x.mul_(gamma)`, the tensor then read through its old name. fx's
    # dead-code elimination counts a call_method as pure; dropped, the model computed something else.
    class InPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.gamma = nn.Parameter(torch.rand(4, 1, 1) + 0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            y.mul_(self.gamma)
            y.add_(x)
            return torch.relu(y)

    model, x = InPlace().eval(), torch.randn(2, 4, 8, 8)
    gm = lt.prepare(model, x)
    other = torch.randn(3, 4, 8, 8)
    assert torch.equal(gm(other), model(other))
    assert [n.target for n in gm.graph.nodes if n.op == "call_method"] == ["mul_", "add_"]


class StdConv(nn.Conv2d):
    """timm's ScaledStdConv2d / transformers' BiT conv: the weight standardised by ``F.batch_norm`` each forward."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.gain = nn.Parameter(torch.rand(self.out_channels, 1, 1, 1) + 0.5)
        self.scale = 0.7

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = F.batch_norm(
            self.weight.reshape(1, self.out_channels, -1),
            None,
            None,
            weight=(self.gain * self.scale).view(-1),
            training=True,
            momentum=0.0,
            eps=1e-6,
        ).reshape_as(self.weight)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def test_weight_standardised_convs_are_folded_into_quantized_convs() -> None:
    # NF-Nets, ResNetV2-BiT and transformers' BiT compute their conv weight from parameters in every forward: the
    # value is folded into an nn.Conv2d of the same name (else the conv stayed float: 52% of NF-RegNet-B0 weights).
    model = nn.Sequential(StdConv(3, 8, 3, padding=1), nn.ReLU(), StdConv(8, 4, 3, bias=False)).eval()
    x = torch.randn(2, 3, 10, 10)
    gm = lt.prepare(model, x)
    assert [type(gm.get_submodule(n)) for n in ("0", "2")] == [nn.Conv2d, nn.Conv2d]
    other = torch.randn(3, 3, 12, 12)
    assert torch.allclose(gm(other), model(other), atol=1e-6)
    sim = lt.QuantSim(model, x, per_channel=True)
    assert all(sim.layers()[n].param_quantizers["weight"].is_active for n in ("0", "2"))


def test_a_bias_computed_from_parameters_is_folded() -> None:
    # BEiT/EVA: F.linear(x, self.qkv.weight, torch.cat((q_bias, zeros_like(v_bias), v_bias))); the qkv stayed float.
    class QKV(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(8, 24, bias=False)
            self.q_bias, self.v_bias = nn.Parameter(torch.randn(8)), nn.Parameter(torch.randn(8))
            self.register_buffer("k_bias", torch.zeros(8), persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.linear(x, self.qkv.weight, torch.cat((self.q_bias, self.k_bias, self.v_bias)))

    model, x = QKV().eval(), torch.randn(2, 5, 8)
    gm = lt.prepare(model, x)
    assert type(gm.get_submodule("qkv")) is nn.Linear and gm.get_submodule("qkv").bias is not None
    assert torch.equal(gm(x), model(x))
    assert lt.QuantSim(model, x).layers()["qkv"].param_quantizers["weight"].is_active
