"""prepare(): tracing, functional ops as modules, equality with the original, clear trace errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import leantorch as lt
from leantorch.graph import call_sites, op_type
from leantorch.ops import Add, MatMul

from .conftest import assert_unchanged, state_snapshot


def _types(gm) -> list[str]:
    return [op_type(m) for _, m in call_sites(gm)]


def test_resnet_traced_equals_original_and_adds_become_modules(resnet) -> None:
    x = torch.randn(4, 3, 32, 32)
    before = state_snapshot(resnet)
    gm = lt.prepare(resnet, x[:1])
    for _ in range(3):
        x = torch.randn(4, 3, 32, 32)
        torch.testing.assert_close(gm(x), resnet(x), rtol=1e-5, atol=1e-6)
    assert _types(gm).count("Add") == 3 and _types(gm).count("ReLU") == 7  # F.relu calls became modules
    assert_unchanged(resnet, before)
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(gm.parameters(), resnet.parameters()))


def test_transformer_block_attention_matmuls_softmax_layernorm_gelu(transformer) -> None:
    gm = lt.prepare(transformer, torch.randn(1, 6, 16))
    x = torch.randn(3, 6, 16)
    torch.testing.assert_close(gm(x), transformer(x), rtol=1e-5, atol=1e-6)
    types = _types(gm)
    assert types.count("MatMul") == 4 and types.count("Softmax") == 2 and types.count("GELU") == 2
    assert types.count("LayerNorm") == 5 and types.count("Add") == 4


@pytest.mark.slow
def test_efficientnet_convs_are_seen_and_activations_split_per_call_site(efficientnet) -> None:
    gm = lt.prepare(efficientnet, torch.randn(1, 3, 224, 224))
    x = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(gm(x), efficientnet(x), rtol=1e-4, atol=1e-4)
    types = _types(gm)
    assert types.count("Conv") == 49 and types.count("BatchNorm") == 49
    relu6_targets = [n.target for n, m in call_sites(gm) if op_type(m) == "ReLU6"]
    assert len(relu6_targets) == len(set(relu6_targets)) == 33  # one module per call site


def test_functional_ops_become_modules() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            y = F.relu6(self.conv(x))
            z = torch.cat([y, torch.sigmoid(y) * y], dim=1)
            z = F.interpolate(z, scale_factor=2.0, mode="nearest")
            return torch.flatten(z.mean((2, 3), keepdim=True), 1) + x.size(1)

    net = Net().eval()
    gm = lt.prepare(net, torch.randn(1, 3, 8, 8))
    assert set(_types(gm)) >= {"Conv", "ReLU6", "Concat", "Sigmoid", "Mul", "Interpolate", "Mean", "Flatten", "Add"}
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(gm(x), net(x))


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            return x * 2
        return x


class HasBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.branch = DataDependent()

    def forward(self, x):
        return self.branch(self.conv(x))


def test_untraceable_model_names_module_line_and_fix() -> None:
    with pytest.raises(lt.TraceError) as info:
        lt.prepare(HasBranch(), torch.randn(1, 3, 4, 4))
    message = str(info.value)
    assert "branch" in message and "DataDependent" in message
    assert "test_prepare.py" in message and "if x.sum() > 0" in message
    assert "leaf_modules=" in message


def test_leaf_modules_fix_works() -> None:
    model = HasBranch().eval()
    gm = lt.prepare(model, torch.randn(1, 3, 4, 4), leaf_modules=[DataDependent])
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(gm(x), model(x))
    assert "Unknown" in _types(gm)


def test_wrong_example_input_shape_is_a_clear_error(resnet) -> None:
    with pytest.raises(lt.InputShapeError, match="example input"):
        lt.prepare(resnet, torch.randn(1, 5, 32, 32))


def test_op_modules_are_not_retraced() -> None:
    gm = lt.prepare(nn.Sequential(nn.Linear(4, 4)), torch.randn(1, 4))
    again = lt.prepare(gm, torch.randn(1, 4))
    assert [type(m) for _, m in call_sites(again)] == [nn.Linear]
    assert Add and MatMul  # the op modules exist as public building blocks


def _conv_bn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda m: m[0].weight.data.view(-1)[:3].fill_(float("nan")), r"0\.weight has 3 NaN values"),
        (lambda m: m[0].bias.data.view(-1)[:2].fill_(float("inf")), r"0\.bias has 2 Inf values"),
        (lambda m: m[1].running_var.data.view(-1)[:1].fill_(float("nan")), r"1\.running_var has 1 NaN value\b"),
        (lambda m: m[1].running_mean.data.view(-1)[:1].fill_(-float("inf")), r"1\.running_mean has 1 Inf value\b"),
    ],
)
def test_non_finite_weights_and_statistics_are_named(corrupt, message: str) -> None:
    model = _conv_bn()
    corrupt(model)
    before = state_snapshot(model)
    with pytest.raises(lt.NonFiniteModelError, match=f"{message}.*reload the checkpoint"):
        lt.prepare(model, torch.randn(1, 3, 8, 8))
    with pytest.raises(lt.NonFiniteModelError, match=message):  # everything built on prepare says the same
        lt.QuantSim(model, torch.randn(1, 3, 8, 8))
    for name, value in model.state_dict().items():  # unchanged, NaN included (torch.equal says NaN != NaN)
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, equal_nan=True)


def test_non_finite_example_input_is_named_not_blamed_on_tracing() -> None:
    model = _conv_bn()
    x = torch.randn(1, 3, 8, 8)
    x[0, 1, 2, 3] = float("nan")
    x[0, 0, 0, 0] = float("inf")
    # The Inf is not named: an input may hold -inf on purpose (an attention mask)
    with pytest.raises(lt.NonFiniteModelError, match=r"example input 0 \(shape \(1, 3, 8, 8\)\) has 1 NaN value: "):
        lt.prepare(model, x)


class Masked(nn.Module):
    """An attention-like model with a -inf mask buffer (legitimate) and an integer buffer."""

    def __init__(self, nan_in_forward: bool = False) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.register_buffer("mask", torch.full((4, 4), -float("inf")).triu(1))
        self.register_buffer("steps", torch.tensor(7))
        self.nan_in_forward = nan_in_forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = torch.softmax(self.proj(x) @ x.transpose(-1, -2) + self.mask, dim=-1)
        return scores.sqrt() - 1 if not self.nan_in_forward else (scores - 2).sqrt()


def test_inf_masks_are_allowed_but_nan_outputs_are_named() -> None:
    x = torch.randn(1, 4, 4)
    model = Masked()
    torch.testing.assert_close(lt.prepare(model, x)(x), model(x))
    with pytest.raises(lt.NonFiniteModelError, match=r"output on the example input has 16 NaN value.*Fix that op"):
        lt.prepare(Masked(nan_in_forward=True), x)


@pytest.mark.parametrize(
    "model,message",
    [
        (lambda x: x * 2, "model must be a torch.nn.Module, got function"),
        (nn.Linear, r"got type .*create an instance first: Linear\(...\)"),
        ({"weight": torch.ones(2, 2)}, "got dict .*state dict.*load_state_dict"),
    ],
)
def test_a_model_that_is_not_a_module_is_named_once_in_prepare(model, message: str) -> None:
    x = torch.randn(1, 2)
    for build in (lt.prepare, lt.QuantSim, lt.compress.cost):  # QuantSim and the cost model share the check
        with pytest.raises(lt.InvalidOptionError, match=message):
            build(model, x)


@pytest.mark.parametrize(
    "example,message",
    [
        ([1, 2, 3], "example input 0 is int 1, not a tensor"),
        (None, "example input 0 is NoneType None, not a tensor"),
        ((), "the example input is empty"),
    ],
)
def test_an_example_input_that_is_not_tensors_is_named_before_the_data(example, message: str) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    data = [torch.randn(2, 3, 8, 8)]
    # Entry points that check calibration batches against the number of inputs name the example input first.
    for call in (
        lambda: lt.prepare(model, example),
        lambda: lt.QuantSim(model, example),
        lambda: lt.bias_correction(model, example, data, progress=False),
        lambda: lt.compress.cost(model, example),
    ):
        with pytest.raises(lt.InputShapeError, match=message):
            call()


class _MaskedLinear(nn.Module):
    """forward(x, mask): an additive attention mask (-inf above the diagonal) as a model input."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 5)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.fc(x) + mask, dim=-1)


def test_an_inf_attention_mask_input_is_accepted_and_nan_input_refused() -> None:
    model, x = _MaskedLinear().eval(), torch.randn(5, 5)
    mask = nn.Transformer.generate_square_subsequent_mask(5)
    assert torch.isinf(mask).any()
    gm = lt.prepare(model, (x, mask))
    assert torch.allclose(gm(x, mask), model(x, mask))
    lt.QuantSim(model, (x, mask), param_bw=8, act_bw=8)
    lt.fold_batch_norms(model, (x, mask))
    lt.equalize(model, (x, mask))
    lt.compress.cost(model, (x, mask))
    with pytest.raises(lt.NonFiniteModelError, match="example input 1 .* NaN"):
        lt.prepare(model, (x, torch.full((5, 5), float("nan"))))


def test_a_dtype_mismatch_is_reported_as_dtype_not_shape() -> None:
    with pytest.raises(
        lt.InputShapeError, match="dtype: its parameters are torch.float32 on cpu, input 0 is torch.float64"
    ):
        lt.prepare(nn.Linear(3, 2), torch.randn(1, 3, dtype=torch.float64))
    with pytest.raises(lt.InputShapeError, match="of the shape the model expects"):
        lt.prepare(nn.Linear(3, 2), torch.randn(1, 4))


def test_a_prepared_and_a_quantized_model_pickle() -> None:
    """Ray workers, torch.save and multiprocessing pickle models: string annotations (``from __future__
    import annotations``) and leantorch's tracer used to make that fail."""
    import pickle

    from leantorch.models import ResNetSmall

    model = ResNetSmall(num_classes=10, width=8).eval()
    x = torch.randn(2, 3, 32, 32)
    sim = lt.QuantSim(model, x[:1], param_bw=4)
    sim.compute_encodings([x], progress=False)
    for gm in (lt.prepare(model, x[:1]), sim.model):
        with torch.no_grad():
            assert torch.equal(pickle.loads(pickle.dumps(gm))(x), gm(x))
