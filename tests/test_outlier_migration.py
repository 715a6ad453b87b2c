"""lt.migrate_outliers: exact in float, and a better W8A8 SQNR on a pre-LN transformer with an outlier channel."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import leantorch as lt
from leantorch.ptq.outlier_migration import migration_pairs


class _Block(nn.Module):
    """A pre-LN transformer block: LayerNorm → q/k/v → attention, LayerNorm → MLP; residuals on the inputs."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.norm1(x)
        q, k, v = (p(h).reshape(b, n, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        attention = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
        x = x + self.out((attention @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(torch.relu(self.fc1(self.norm2(x))))


def _model_with_outliers() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(_Block(), _Block(), nn.LayerNorm(32), nn.Linear(32, 10)).eval()
    # Outlier channels, as trained transformers grow them: large in the LayerNorm outputs, with small weights
    # where they are read, so that the function stays well conditioned and only the activation range suffers.
    with torch.no_grad():
        for block in (model[0], model[1]):
            for norm, readers in ((block.norm1, (block.q, block.k, block.v)), (block.norm2, (block.fc1,))):
                norm.weight[[3, 17]] = 60.0
                for linear in readers:
                    linear.weight[:, [3, 17]] /= 60.0
        model[2].weight[[3, 17]] = 60.0
        model[3].weight[:, [3, 17]] /= 60.0
    return model


def _data(seed: int, count: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 12, 32, generator=g) for _ in range(count)]


def _sqnr(model: nn.Module, calibration: list[torch.Tensor], held_out: torch.Tensor) -> float:
    sim = lt.QuantSim(model, calibration[0], per_channel=True)
    sim.compute_encodings(calibration, progress=False)
    with torch.no_grad():
        want, got = model(held_out), sim.model(held_out)
    return float(10 * torch.log10(want.pow(2).sum() / (want - got).pow(2).sum()))


def test_float_output_is_unchanged_and_the_user_model_is_not_modified() -> None:
    model = _model_with_outliers()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calibration = _data(0, 4)
    migrated = lt.migrate_outliers(model, calibration[0], calibration)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    held_out = _data(1, 1)[0]
    with torch.no_grad():
        want, got = model(held_out), migrated(held_out)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max().clamp_min(1.0)
    # Every LayerNorm feeds only Linear layers here (pre-LN): all five are smoothed, outliers flattened.
    assert len(migration_pairs(migrated)) == 5
    assert float(migrated.get_submodule("0.norm1").weight.detach().abs().max()) < 60.0


def test_w8a8_sqnr_improves_on_a_transformer_with_outlier_channels() -> None:
    model = _model_with_outliers()
    calibration, held_out = _data(0, 4), _data(1, 1)[0]
    plain = _sqnr(model, calibration, held_out)
    migrated = _sqnr(lt.migrate_outliers(model, calibration[0], calibration), calibration, held_out)
    assert migrated > plain + 3.0, (plain, migrated)


def test_alpha_half_balances_each_channels_activation_and_weight_maxima() -> None:
    model = _model_with_outliers()
    calibration = _data(0, 4)
    migrated = lt.migrate_outliers(model, calibration[0], calibration, alpha=0.5)
    block = migrated.get_submodule("0")
    seen: list[torch.Tensor] = []
    handle = migrated.get_submodule("0.norm1").register_forward_hook(
        lambda m, a, out: seen.append(out.detach().abs().reshape(-1, 32).amax(0))
    )
    with torch.no_grad():
        for x in calibration:
            migrated(x)
    handle.remove()
    act_max = torch.stack(seen).amax(0)
    weight_max = torch.stack([p.weight.detach().abs().amax(0) for p in (block.q, block.k, block.v)]).amax(0)
    # s = sqrt(max|x| / max|W|): afterwards both maxima are sqrt(max|x| * max|W|), channel by channel.
    assert torch.allclose(act_max, weight_max, rtol=1e-4)


def test_a_layernorm_whose_output_is_also_the_residual_is_left_alone() -> None:
    class PostLN(nn.Module):  # the LayerNorm's output is also the residual: its scaling could not be undone
        def __init__(self) -> None:
            super().__init__()
            self.norm, self.fc = nn.LayerNorm(8), nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.norm(x)
            return h + self.fc(h)

    torch.manual_seed(0)
    data = [torch.randn(4, 8) for _ in range(2)]
    assert migration_pairs(lt.prepare(PostLN().eval(), data[0])) == {}
    migrated = lt.migrate_outliers(PostLN().eval(), data[0], data)
    assert torch.equal(migrated.get_submodule("norm").weight, torch.ones(8))


def test_tied_linear_weight_is_untied_before_scaling() -> None:
    torch.manual_seed(0)
    embed, norm, head = nn.Embedding(20, 8), nn.LayerNorm(8), nn.Linear(8, 20, bias=False)
    head.weight = embed.weight  # an LM head tied to the embedding

    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.norm, self.head = embed, norm, head

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.norm(self.embed(ids)))

    with torch.no_grad():
        norm.weight[2] = 30.0
    model = LM().eval()
    ids = [torch.randint(0, 20, (4, 6)) for _ in range(2)]
    migrated = lt.migrate_outliers(model, ids[0], ids)
    with torch.no_grad():
        assert torch.allclose(migrated(ids[1]), model(ids[1]), atol=1e-5)


def test_bad_options_and_data_are_typed_errors() -> None:
    model, x = nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 2)).eval(), torch.randn(2, 4)
    with pytest.raises(lt.InvalidOptionError, match="alpha=1.5"):
        lt.migrate_outliers(model, x, [x], alpha=1.5)
    with pytest.raises(lt.InvalidOptionError, match="num_batches=0"):
        lt.migrate_outliers(model, x, [x], num_batches=0)
    with pytest.raises(lt.InvalidOptionError, match="unknown option"):
        lt.migrate_outliers(model, x, [x], strength=0.5)
    with pytest.raises(lt.CalibrationDataError, match="no batch"):
        lt.migrate_outliers(model, x, [])
    with pytest.raises(lt.CalibrationDataError):
        lt.migrate_outliers(model, x, x)  # a single tensor, not an iterable of batches
    with pytest.raises(lt.InvalidOptionError):
        lt.migrate_outliers(model, x, [x], options=lt.GptqConfig())
