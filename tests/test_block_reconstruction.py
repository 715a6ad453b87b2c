"""Block reconstruction (BRECQ + QDrop): blocks found from the graph, joint rounding beats layer-wise AdaRound and
round-to-nearest, hardened weights on their grids, learned step sizes used by the sim and by export, linear
cost in depth (the frontier never re-runs a prefix), the input model untouched, typed errors before any work."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import leantorch as lt
from leantorch.models import ResNetSmall
from leantorch.ptq.adaround import adaround
from leantorch.ptq.block_graph import find_blocks
from leantorch.ptq.block_reconstruction import BlockReconstructionConfig, reconstruct
from leantorch.quant.primitives import fake_quantize


class MBConv(nn.Module):
    """Expand 1x1, depthwise 3x3, project 1x1; with a skip connection when ``residual``."""

    def __init__(self, channels: int, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.expand = nn.Conv2d(channels, 2 * channels, 1)
        self.dw = nn.Conv2d(2 * channels, 2 * channels, 3, padding=1, groups=2 * channels)
        self.project = nn.Conv2d(2 * channels, channels, 1)
        self.act1, self.act2 = nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.act2(self.dw(self.act1(self.expand(x)))))
        return x + y if self.residual else y


class MBNet(nn.Module):
    def __init__(self, depth: int = 2, channels: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.blocks = nn.Sequential(*(MBConv(channels, residual=i > 0) for i in range(depth)))
        self.head = nn.Linear(channels, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.blocks(torch.relu(self.stem(x)))
        return self.head(y.mean((2, 3)))


class Layer(nn.Module):
    """A post-LN transformer layer reading an additive attention mask."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.q(x) @ self.k(x).transpose(1, 2) / x.shape[-1] ** 0.5 + mask
        x = self.ln1(x + self.o(torch.softmax(scores, -1) @ self.v(x)))
        return self.ln2(x + self.fc2(torch.relu(self.fc1(x))))


class Encoder(nn.Module):
    def __init__(self, dim: int = 16, depth: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(4, dim)
        self.layers = nn.ModuleList(Layer(dim) for _ in range(depth))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for layer in self.layers:
            x = layer(x, mask)
        return x


def test_blocks_of_a_chain_are_its_layers() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))
    assert [b.layers for b in find_blocks(net, torch.randn(1, 3, 8, 8))] == [("0",), ("2",), ("5",)]


def test_blocks_of_residual_and_plain_mbconv_blocks() -> None:
    """The plain MBConv (no skip: every layer is a cut) is grouped by its module; the residual one is a block by
    its liveness (the skip keeps two values live); the stem and the head stand alone."""
    net = MBNet(depth=3).eval()
    expected = [
        ("stem",),
        ("blocks.0.expand", "blocks.0.dw", "blocks.0.project"),
        ("blocks.1.expand", "blocks.1.dw", "blocks.1.project"),
        ("blocks.2.expand", "blocks.2.dw", "blocks.2.project"),
        ("head",),
    ]
    blocks = find_blocks(net, torch.randn(1, 3, 8, 8))
    assert [b.layers for b in blocks] == expected
    assert blocks[2].output == "blocks_1_add" or blocks[2].output.startswith("add")  # ends at its skip's add
    assert blocks[1].output == "blocks_0_project"
    # Capped at 2 layers: the plain block splits between spans; the residual one cannot, so its layers go alone.
    capped = [b.layers for b in find_blocks(net, torch.randn(1, 3, 8, 8), max_layers=2)]
    assert capped == [
        ("stem",),
        ("blocks.0.expand", "blocks.0.dw"),
        ("blocks.0.project",),
        ("blocks.1.expand",),
        ("blocks.1.dw",),
        ("blocks.1.project",),
        ("blocks.2.expand",),
        ("blocks.2.dw",),
        ("blocks.2.project",),
        ("head",),
    ]
    with pytest.raises(lt.InvalidOptionError, match="max_layers=0"):
        find_blocks(net, torch.randn(1, 3, 8, 8), max_layers=0)


def test_blocks_of_a_transformer_are_its_layers_despite_the_mask() -> None:
    """The mask every layer reads is a model input, not a live value: each layer (attention and MLP sub-layers,
    each ending at a residual LayerNorm) is one block, ending at its second LayerNorm."""
    net = Encoder(depth=2).eval()
    blocks = find_blocks(net, (torch.randn(1, 5, 4), torch.zeros(1, 5, 5)))
    names = ("q", "k", "v", "o", "fc1", "fc2")
    assert [set(b.layers) for b in blocks] == [{"embed"}, *({f"layers.{i}.{n}" for n in names} for i in range(2))]
    assert [b.output for b in blocks[1:]] == ["layers_0_ln2", "layers_1_ln2"]


def _data(n: int = 4, size: int = 16) -> list[torch.Tensor]:
    return [torch.randn(size, 3, 12, 12) for _ in range(n)]


def _sim(model: nn.Module, example: torch.Tensor, **options) -> lt.QuantSim:
    return lt.QuantSim(model, example, param_bw=4, act_bw=8, per_channel=True, param_scheme="mse", **options)


@pytest.mark.slow
def test_reconstruction_beats_adaround_and_round_to_nearest_at_low_bitwidth() -> None:
    """Output MSE against FP32 on held-out inputs, W2A8 per channel, same grids and calibration data, on a small
    residual CNN. Measured: round-to-nearest 9.2e-4, AdaRound (layer-wise, exact moments) 3.5e-4, block
    reconstruction with QDrop 2.5e-4 to 3.3e-4 (seeds 0 and 1, 1 or 2 threads; BRECQ without drop or step
    sizes: 4.1e-4). At W4A8 on such toy models AdaRound's exact objective stays ahead (MBNet: 1.8e-5 vs 3.5e-5)."""
    torch.manual_seed(0)
    net = ResNetSmall(num_classes=10, width=8).eval()
    for bn in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    calib, held_out = [torch.randn(16, 3, 32, 32) for _ in range(4)], torch.randn(64, 3, 32, 32)
    example = calib[0][:1]
    with torch.no_grad():
        reference = net(held_out)
    options = {"param_bw": 2, "act_bw": 8, "per_channel": True, "param_scheme": "mse", "progress": False}

    def error(model: nn.Module, encodings, whole_file: bool) -> float:
        sim = lt.QuantSim(model, example, param_bw=2, act_bw=8, per_channel=True, param_scheme="mse")
        if whole_file:
            sim.load_encodings(encodings, freeze=True)
        elif encodings is not None:
            sim.set_and_freeze_param_encodings(encodings)
        sim.compute_encodings(calib, progress=False)
        with torch.no_grad():
            return float((sim.model(held_out) - reference).pow(2).mean())

    nearest = error(net, None, False)
    rounded, enc = adaround(net, example, calib, path="/tmp", **options)
    layerwise = error(rounded, enc, False)
    rebuilt, enc = reconstruct(net, example, calib, path="/tmp", iterations=300, lr=2e-2, **options)
    joint = error(rebuilt, enc, True)
    assert joint < 0.4 * nearest, (joint, nearest)
    assert joint < layerwise, (joint, layerwise)


def test_hardened_weights_are_on_their_grids_and_learned_step_sizes_are_exported(tmp_path) -> None:
    torch.manual_seed(0)
    net, calib = MBNet(depth=2).eval(), _data(2)
    example = calib[0][:1]
    before = copy.deepcopy(net.state_dict())
    rebuilt, enc = reconstruct(
        net,
        example,
        calib,
        param_bw=4,
        per_channel=True,
        param_scheme="mse",
        iterations=30,
        path=tmp_path,
        progress=False,
        act_lr=1e-2,
    )
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # the input model is untouched
    calibrated = _sim(rebuilt, example)
    calibrated.compute_encodings(calib, progress=False)
    sim = _sim(rebuilt, example)
    assert sim.load_encodings(enc, freeze=True) == []
    for name, wrapper in sim.layers().items():
        quantizer = wrapper.param_quantizers["weight"] if "weight" in wrapper.param_quantizers else None
        if quantizer is None or not quantizer.is_active:
            continue
        weight = wrapper.module.weight.detach()
        e = quantizer.encoding
        on_grid = fake_quantize(weight, e.scale, e.offset, e.bitwidth, e.axis)
        assert float((on_grid - weight).abs().max()) == 0.0, name
    learned = {n: q.encoding.scale for n, q in sim.activation_quantizers().items() if q.is_active}
    assert all(bool((s > 0).all()) for s in learned.values())
    inside = [n for n in learned if n.startswith("blocks.")]
    changed = [n for n in inside if not torch.equal(learned[n], calibrated.activation_quantizers()[n].encoding.scale)]
    assert len(changed) >= len(inside) // 2, (changed, inside)  # LSQ moved the step sizes inside the blocks
    paths = sim.export(tmp_path, "rebuilt", example)
    reloaded = _sim(rebuilt, example)
    reloaded.load_encodings(paths["encodings"])
    for name in changed:
        assert torch.allclose(reloaded.activation_quantizers()[name].encoding.scale, learned[name])


def test_cost_is_linear_in_depth() -> None:
    """Every block's modules run ``iterations`` times plus the same constant (calibration and one pass of each
    frontier), wherever the block is: the prefix of the network is never re-run for a later block."""
    torch.manual_seed(0)
    net, calib = MBNet(depth=4).eval(), _data(2, 4)
    calls: dict[str, int] = {}

    def count(name: str):
        def hook(*_args) -> None:
            calls[name] = calls.get(name, 0) + 1

        return hook

    for i, block in enumerate(net.blocks):
        block.act1.register_forward_hook(count(f"block{i}"))
    totals = {}
    for iterations in (1, 6):
        calls.clear()
        reconstruct(net, calib[0][:1], calib, iterations=iterations, path="/tmp", progress=False)
        totals[iterations] = dict(calls)
    assert len(set(totals[1].values())) == 1 and len(set(totals[6].values())) == 1, totals
    assert all(totals[6][k] - totals[1][k] == 5 for k in totals[1])


def test_works_per_tensor_at_w8a8_and_keeps_outputs_close() -> None:
    torch.manual_seed(0)
    net, calib = MBNet(depth=2).eval(), _data(2)
    example = calib[0][:1]
    rebuilt, enc = reconstruct(
        net, example, calib, param_bw=8, per_channel=False, iterations=20, path="/tmp", progress=False
    )
    sim = lt.QuantSim(rebuilt, example, param_bw=8, per_channel=False)
    sim.load_encodings(enc, freeze=True)
    x = torch.randn(8, 3, 12, 12)
    with torch.no_grad():
        relative = float((sim.model(x) - net(x)).pow(2).mean() / net(x).pow(2).mean())
    assert relative < 1e-3


def test_bad_options_raise_typed_errors_before_any_work() -> None:
    net, calib = MBNet(depth=1).eval(), _data(1)
    with pytest.raises(lt.InvalidOptionError, match="drop_prob"):
        reconstruct(net, calib[0][:1], calib, drop_prob=1.5)
    with pytest.raises(lt.InvalidOptionError, match="blocks='stages'"):
        BlockReconstructionConfig(blocks="stages")
    with pytest.raises(lt.InvalidOptionError, match="iterations"):
        reconstruct(net, calib[0][:1], calib, iterations=0)
    with pytest.raises(lt.CalibrationDataError, match="reconstruct needs calibration data"):
        reconstruct(net, calib[0][:1], None)


def test_auto_quant_reconstruct_stage_is_opt_in_and_keeps_its_step_sizes(tmp_path) -> None:
    torch.manual_seed(0)
    net, calib = MBNet(depth=2).eval(), _data(2)
    scores = iter([1.0, 0.3, 0.4])
    result = lt.auto_quant(
        net,
        calib[0][:1],
        calib,
        lambda m: next(scores),
        stages=["cle", "reconstruct"],
        path=tmp_path,
        progress=False,
        reconstruct_kwargs={"iterations": 5, "act_lr": 1e-2},
        param_bw=4,
        per_channel=True,
        downstream=False,
    )
    assert [s["stage"] for s in result.stages] == ["float", "cle", "reconstruct"]
    saved = lt.QuantSim(result.model, calib[0][:1], param_bw=4, per_channel=True)
    saved.load_encodings(tmp_path / "reconstruct.encodings")
    for name, q in result.sim.activation_quantizers().items():
        if q.is_active:
            assert q.frozen and torch.equal(q.encoding.scale, saved.activation_quantizers()[name].encoding.scale)
    with pytest.raises(lt.InvalidOptionError, match="no reconstruct option 'steps'"):
        lt.auto_quant(net, calib[0][:1], calib, lambda m: 1.0, reconstruct_kwargs={"steps": 3}, progress=False)
