"""lt.compress.refit_layers: sequential least-squares re-fit of a compressed model's layers to the original's outputs.

The solutions are checked against float64 least squares computed here independently (numpy's lstsq on the
explicit design matrix), and the sweep's effect against a compressed model's output error."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import leantorch as lt
from leantorch.compress import refit_layers
from leantorch.compress.layer_least_squares import kept_channels
from leantorch.errors import CalibrationDataError, InvalidOptionError


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _lstsq(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[W | b] (outputs × inputs+1) minimising ‖[x, 1]·[W | b]ᵀ − y‖², in float64."""
    design = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    return np.linalg.lstsq(design, y, rcond=None)[0].T


def _mse(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a(x).double() - b(x).double()).pow(2).mean())


def test_linear_layer_matches_float64_least_squares() -> None:
    """A student with other first-layer weights and another activation: its first layer is fitted back to the
    teacher's, and its second becomes the exact least-squares map from the student's (ReLU) features to the
    teacher's outputs (tiny ridge)."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 4)).eval()
    student = copy.deepcopy(teacher)
    student[1] = nn.ReLU()
    with torch.no_grad():
        student[0].weight.add_(0.3 * torch.randn_like(student[0].weight))
    x = torch.randn(400, 6)
    result = refit_layers(student, teacher, x, ridge=1e-10, progress=False)
    assert result.refitted == ["0", "2"]
    # layer 0 is refitted first (inputs identical, weights not): it recovers the teacher's layer exactly
    fitted = result.model.get_submodule("0")
    assert torch.allclose(fitted.weight, teacher[0].weight, atol=1e-4)
    # layer 2: float64 reference from the refitted first layer's features to the teacher's outputs
    with torch.no_grad():
        hidden = torch.relu(fitted(x)).double().numpy()
        target = teacher[2](teacher[1](teacher[0](x))).double().numpy()
    expected = _lstsq(hidden, target)
    second = result.model.get_submodule("2")
    got = torch.cat([second.weight, second.bias[:, None]], 1).detach().double().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_depthwise_and_conv1d_solutions_match_float64_least_squares() -> None:
    """Per-channel systems of a depthwise conv and the patch system of a Conv1d equal lstsq on the unfolded
    inputs; a conv without bias gains one."""
    torch.manual_seed(1)
    dw = nn.Conv2d(3, 3, 3, padding=1, groups=3, bias=False)
    x = torch.randn(6, 3, 7, 7)
    target = dw(x).detach() * 1.5 + 0.25  # not reachable by the conv's own weights: a bias and a scale
    teacher, student = nn.Sequential(nn.Identity(), dw).eval(), copy.deepcopy(nn.Sequential(nn.Identity(), dw))
    with torch.no_grad():
        teacher[1].weight.mul_(1.5)
        teacher[1].bias = nn.Parameter(torch.full((3,), 0.25))
        student[1].weight.mul_(0.5)
    result = refit_layers(student, teacher, [x], ridge=1e-10, progress=False)
    fitted = result.model.get_submodule("1")
    patches = torch.nn.functional.unfold(x, 3, padding=1).reshape(6, 3, 9, 49)
    for c in range(3):
        rows = patches[:, c].permute(0, 2, 1).reshape(-1, 9).double().numpy()
        expected = _lstsq(rows, target[:, c].reshape(-1, 1).double().numpy())[0]
        got = torch.cat([fitted.weight[c].flatten(), fitted.bias[c : c + 1]]).detach().double().numpy()
        np.testing.assert_allclose(got, expected, atol=1e-5)

    conv = nn.Conv1d(4, 5, 3, padding=1)
    seq = torch.randn(8, 4, 16)
    teacher1 = nn.Sequential(conv).eval()
    student1 = copy.deepcopy(teacher1)
    with torch.no_grad():
        student1[0].weight.mul_(-1.0)
    fitted1 = refit_layers(student1, teacher1, seq, ridge=1e-10, samples_per_image=10_000, progress=False).model
    assert torch.allclose(fitted1.get_submodule("0").weight, conv.weight, atol=1e-4)
    assert torch.allclose(fitted1.get_submodule("0").bias, conv.bias, atol=1e-4)


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 24, 1),
        nn.ReLU(),
        nn.Conv2d(24, 24, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(24, 10),
    ).eval()


def _warm(model: nn.Module) -> nn.Module:
    """BatchNorm statistics from random data, so that the BNs are not identities."""
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(16, 3, 12, 12))
    return model.eval()


def test_refit_recovers_a_channel_pruned_model_and_leaves_both_models_unchanged() -> None:
    original = _warm(_cnn())
    x = torch.randn(4, 3, 12, 12)
    calibration = [torch.randn(32, 3, 12, 12) for _ in range(2)]
    compressed, _ = lt.compress(
        original, x, lambda m: 0.0, "channel_pruning", ratios={"6": 0.5}, calibration=calibration, progress=False
    )
    before_original, before_compressed = _state(original), _state(compressed)
    data, held_out = torch.randn(256, 3, 12, 12), torch.randn(128, 3, 12, 12)
    result = refit_layers(compressed, original, data, progress=False)
    assert _same(_state(original), before_original) and _same(_state(compressed), before_compressed)
    assert result.model is not compressed
    # the pruned producer (first conv, its depthwise conv) is fitted on its kept channels; every later layer too
    assert {"0", "3", "6", "8", "11"} <= set(result.refitted), result.skipped
    assert _mse(result.model, original, held_out) < 0.5 * _mse(compressed, original, held_out)


def test_inplace_writes_the_weights_into_the_given_model() -> None:
    torch.manual_seed(2)
    teacher = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    student = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(300, 5)
    copy_result = refit_layers(student, teacher, x, progress=False)
    result = refit_layers(student, teacher, x, progress=False, inplace=True)
    assert result.model is student
    assert torch.allclose(student(x), copy_result.model(x), atol=1e-6)


def test_kept_channels_finds_pruned_rows_in_order() -> None:
    w = torch.randn(10, 4, 3, 3)
    assert kept_channels(w[[1, 4, 9]], w).tolist() == [1, 4, 9]
    assert kept_channels(w[[4, 1]], w) is None  # not in order: not pruning
    assert kept_channels(w[[1, 4]] + 1e-3, w) is None  # re-fitted rows are not the originals


def test_skipped_layers_say_why() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)
            self.grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.grouped(self.conv(self.conv(x)))

    torch.manual_seed(3)
    teacher = Shared().eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(0.9)
    result = refit_layers(student, teacher, torch.randn(8, 4, 6, 6), progress=False)
    assert "2 places" in result.skipped["conv"] and "grouped" in result.skipped["grouped"]
    assert result.refitted == []


def test_bad_inputs_raise_before_any_change() -> None:
    teacher = nn.Sequential(nn.Linear(3, 2)).eval()
    student = copy.deepcopy(teacher)
    state = _state(student)
    bad = torch.randn(10, 3)
    bad[4, 1] = float("nan")
    with pytest.raises(CalibrationDataError, match="NaN"):
        refit_layers(student, teacher, bad, progress=False, inplace=True)
    with pytest.raises(CalibrationDataError, match="no sample"):
        refit_layers(student, teacher, [], progress=False)
    with pytest.raises(InvalidOptionError, match="ridge"):
        refit_layers(student, teacher, torch.randn(4, 3), ridge=0.0, progress=False)
    with pytest.raises(CalibrationDataError, match="iterable"):
        refit_layers(student, teacher, 3, progress=False)
    assert _same(_state(student), state)


def test_max_samples_limits_the_data_used() -> None:
    """Only the first max_samples samples count: appending wild samples after them changes nothing."""
    torch.manual_seed(4)
    teacher = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)).eval()
    student = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)).eval()
    x = torch.randn(64, 4)
    short = refit_layers(student, teacher, x, max_samples=64, progress=False).model
    longer = refit_layers(student, teacher, torch.cat([x, 100 * torch.randn(64, 4)]), max_samples=64, progress=False)
    assert _same(_state(short), _state(longer.model))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_refit_on_cuda_follows_the_model() -> None:
    original = _warm(_cnn()).cuda()
    student = copy.deepcopy(original)
    with torch.no_grad():
        student[6].weight.mul_(0.8)
    x = torch.randn(64, 3, 12, 12, device="cuda")
    result = refit_layers(student, original, x, progress=False)
    assert next(result.model.parameters()).is_cuda
    assert _mse(result.model, original, x) < 0.1 * _mse(student, original, x)


def test_sampled_patches_equal_unfold_at_those_positions() -> None:
    """Patches gathered at a few output positions are unfold's columns there (stride, padding, dilation)."""
    from leantorch.compress.layer_least_squares import layer_rows

    torch.manual_seed(5)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=2, dilation=2)
    x = torch.randn(2, 3, 11, 11)
    y = conv(x).detach()
    positions = y.shape[2] * y.shape[3]
    gen = torch.Generator().manual_seed(0)
    (rows, targets), *_ = layer_rows(conv, x, y, 7, gen)
    keep = torch.randperm(positions, generator=torch.Generator().manual_seed(0))[:7]
    full = torch.nn.functional.unfold(x, 3, dilation=2, padding=2, stride=2)[..., keep]
    torch.testing.assert_close(rows, full.transpose(1, 2).reshape(-1, 27))
    torch.testing.assert_close(targets, y.flatten(2)[..., keep].transpose(1, 2).reshape(-1, 4))


def test_fit_bias_false_keeps_the_bias_and_fits_the_weights_to_the_rest() -> None:
    """With fit_bias=False the bias stays and the weights are lstsq without intercept on Y − b (float64)."""
    torch.manual_seed(6)
    teacher = nn.Sequential(nn.Linear(5, 3)).eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student[0].weight.mul_(0.5)
        student[0].bias.add_(0.3)
    x = torch.randn(200, 5)
    result = refit_layers(student, teacher, x, ridge=1e-10, fit_bias=False, progress=False)
    fitted = result.model.get_submodule("0")
    assert torch.equal(fitted.bias, student[0].bias)
    with torch.no_grad():
        target = (teacher(x) - student[0].bias).double().numpy()
    expected = np.linalg.lstsq(x.double().numpy(), target, rcond=None)[0].T
    np.testing.assert_allclose(fitted.weight.detach().double().numpy(), expected, atol=1e-5)


def test_transformer_layers_with_sequence_inputs_are_refitted() -> None:
    """nn.TransformerEncoder (attention decomposed by prepare, Linear layers on [batch, tokens, features]): every
    projection is re-fitted and the held-out output error of a perturbed copy falls at least tenfold."""
    torch.manual_seed(7)
    teacher = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), 1).eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            if p.dim() == 2:
                p.add_(0.05 * torch.randn_like(p))
    result = refit_layers(student, teacher, torch.randn(256, 6, 16), progress=False)
    assert len(result.refitted) == 6, result.skipped  # q, k, v, out projections and the two FFN layers
    held_out = torch.randn(64, 6, 16)
    assert _mse(result.model, teacher, held_out) < 0.1 * _mse(student, teacher, held_out)
