"""lt.compress.distill: recovery by distillation from the original model on unlabeled data."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import leantorch as lt
from leantorch.compress import DistillConfig, distill, distill_loss
from leantorch.compress.distill_data import augment_images
from leantorch.errors import (
    InputShapeError,
    InvalidOptionError,
    NonFiniteModelError,
    TrainingDataError,
    TrainingDivergedError,
)
from leantorch.metrics import kl_divergence


def _teacher(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 6)).eval()


def _student(seed: int = 1, hidden: int = 6) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 6))


def _conv_teacher() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _kl(teacher: nn.Module, student: nn.Module, x: torch.Tensor) -> float:
    """KL(teacher ‖ student) in float64 (leantorch.metrics), on data the distillation never saw."""
    with torch.no_grad():
        return kl_divergence(teacher(x), student(x))


def test_distill_loss_is_the_temperature_scaled_kl_in_float64() -> None:
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(16, 10, generator=gen), torch.randn(16, 10, generator=gen)
    temperature = 3.0
    p = torch.softmax(t.double() / temperature, -1)
    reference = (p * (p.log() - torch.log_softmax(s.double() / temperature, -1))).sum(-1).mean() * temperature**2
    assert float(distill_loss(s, t, temperature)) == pytest.approx(float(reference), rel=1e-5)
    # The gradient is the float64 autograd one (written out in the loss, so that equal logits give exactly 0).
    s64 = s.double().requires_grad_()
    p64 = torch.softmax(t.double() / temperature, -1)
    (p64 * (p64.log() - torch.log_softmax(s64 / temperature, -1))).sum(-1).mean().mul(temperature**2).backward()
    s32 = s.clone().requires_grad_()
    distill_loss(s32, t, temperature).backward()
    torch.testing.assert_close(s32.grad.double(), s64.grad, rtol=1e-4, atol=1e-7)
    mse = float(((s.double() - t.double()) ** 2).mean())
    assert float(distill_loss(s, t, temperature, logit_mse=0.5)) == pytest.approx(float(reference) + 0.5 * mse, 1e-5)


def test_distillation_reduces_the_kl_to_the_teacher_by_a_large_factor() -> None:
    teacher, student = _teacher(), _student()
    gen = torch.Generator().manual_seed(1)
    data, unseen = torch.randn(256, 8, generator=gen), torch.randn(256, 8, generator=gen)
    before = _kl(teacher, student, unseen)
    result = distill(student, teacher, data, epochs=20, lr=2e-2, patience=None, progress=False)
    after = _kl(teacher, result.model, unseen)
    assert after < before / 5, (before, after)
    assert result.after is not None and result.before is not None and result.after.kl < result.before.kl / 5
    assert result.stop_reason == "epochs" and result.steps == 20 * 8  # 230 training samples, batches of 32


def test_a_student_equal_to_its_teacher_has_zero_loss_and_keeps_its_weights() -> None:
    teacher = _conv_teacher()
    student = copy.deepcopy(teacher)
    initial = _params(student)
    images = torch.randn(40, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    for mode in ("end_to_end", "layerwise"):
        result = distill(student, teacher, images, epochs=2, batch_size=8, eval_every=2, mode=mode, progress=False)
        assert [row["loss"] for row in result.history] == [0.0] * len(result.history) and result.history
        assert _same(_params(result.model), initial)
        assert result.after is not None and result.after.top1 == 1.0 and result.after.kl == 0.0
    assert result.layers == ["0", "1", "3", "6"]  # every layer with parameters matches its copy


def test_early_stopping_restores_the_best_weights() -> None:
    """The untrained student is the best one (a too-large learning rate only makes it worse): training stops
    after ``patience`` evaluations without improvement and returns the initial weights, bit for bit."""
    teacher = _teacher()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student[2].bias.add_(0.01)  # near the optimum, so that lr=1 steps overshoot
    initial = _params(student)
    data = torch.randn(256, 8, generator=torch.Generator().manual_seed(2))
    result = distill(
        student, teacher, data, epochs=50, lr=1.0, schedule="constant", eval_every=2, patience=3, progress=False
    )
    assert result.stop_reason == "early stopping" and result.best_step == 0 and result.steps == 6
    assert all(row["kl"] > result.before.kl for row in result.history)  # type: ignore[union-attr]
    assert _same(_params(result.model), initial)
    assert result.after == result.before


def test_the_returned_weights_are_those_of_the_best_evaluation() -> None:
    teacher, student = _teacher(), _student()
    data = torch.randn(256, 8, generator=torch.Generator().manual_seed(3))
    validation = [torch.randn(64, 8, generator=torch.Generator().manual_seed(4))]
    # A constant large learning rate: the held-out KL goes down, then wanders.
    result = distill(
        student, teacher, data, validation, epochs=20, lr=0.05, schedule="constant", monitor="kl", eval_every=4,
        patience=None, progress=False,
    )  # fmt: skip
    kls = [row["kl"] for row in result.history]
    best = min(range(len(kls)), key=kls.__getitem__)
    assert kls[-1] > kls[best]  # the case is one where the last weights are not the best
    assert result.best_step == result.history[best]["step"]
    assert _kl(teacher, result.model, validation[0]) == pytest.approx(kls[best], rel=1e-6)


def test_inplace_false_leaves_the_student_untouched_and_inplace_true_trains_it() -> None:
    teacher, student = _teacher(), _student()
    initial = _params(student)
    data = torch.randn(128, 8, generator=torch.Generator().manual_seed(5))
    result = distill(student, teacher, data, epochs=3, lr=1e-2, progress=False)
    assert result.model is not student and _same(_params(student), initial)
    assert not _same(_params(result.model), initial)
    trained = distill(student, teacher, data, epochs=3, lr=1e-2, progress=False, inplace=True)
    assert trained.model is student and _same(_params(student), _params(result.model))  # same seed, same steps


@pytest.mark.slow
def test_layerwise_matches_the_layers_a_compressed_model_keeps() -> None:
    """After spatial SVD + channel pruning, a layer split by SVD keeps its name and a producer whose output
    channels were pruned changes shape: the first is matched, the second is not. The KL goes down."""
    from leantorch.models import ResNetSmall

    torch.manual_seed(0)
    teacher = ResNetSmall(num_classes=5, in_channels=3, width=8).eval()
    with torch.no_grad():
        teacher.fc.weight.mul_(30)  # confident outputs: a random init's are almost uniform
    x = torch.randn(128, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    score = lt.evaluation.sqnr_score(teacher, [x[:16]])
    student, info = lt.compress(
        teacher, x[:1], score, ["spatial_svd", "channel_pruning"], 0.5, calibration=[x[:16]], candidates=4,
        rank_multiple=1, progress=False,
    )  # fmt: skip
    result = distill(student, teacher, x, epochs=4, lr=1e-3, mode="layerwise", patience=None, progress=False)
    svd = [n.split(":")[1] for n in info.ratios if n.startswith("spatial_svd:")]
    shapes: dict[str, dict[str, tuple]] = {"t": {}, "s": {}}
    for key, model in (("t", teacher), ("s", result.model)):
        for name, module in model.named_modules():
            module.register_forward_hook(lambda m, i, o, n=name, k=key: shapes[k].__setitem__(n, tuple(o.shape)))
        model(x[:2])
    # A traced student calls an SVD pair's two layers, not the pair: its output is that of "<name>.1".
    student_shape = {n: shapes["s"].get(n, shapes["s"].get(f"{n}.1")) for n in shapes["t"]}
    pruned = {n for n, shape in student_shape.items() if shape is not None and shapes["t"][n] != shape}
    svd_kept = set(svd) - pruned  # an SVD pair whose second layer's outputs were then pruned changes shape too
    assert svd_kept and pruned
    assert svd_kept <= set(result.layers) and not pruned & set(result.layers)
    assert result.after.kl < 0.8 * result.before.kl  # type: ignore[union-attr]


def test_a_time_budget_stops_training() -> None:
    teacher, student = _teacher(), _student()
    data = torch.randn(256, 8)
    result = distill(student, teacher, data, epochs=None, max_minutes=1e-4, progress=False)
    assert result.stop_reason == "time" and result.steps < 10_000


def test_augmentation_flips_exactly_and_crops_within_the_image_range() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 10, 10, generator=gen)
    flipped = augment_images(x, 1.0, torch.Generator().manual_seed(1))
    each = [torch.equal(f, s) or torch.equal(f, s.flip(-1)) for f, s in zip(flipped, x, strict=True)]
    assert all(each) and 10 < sum(torch.equal(f, s) for f, s in zip(flipped, x, strict=True)) < 54
    cropped = augment_images(x, 0.3, torch.Generator().manual_seed(1))
    # Bilinear resampling inside the image: convex combinations of its pixels, never the same image.
    assert cropped.shape == x.shape and bool((cropped >= x.amin((1, 2, 3), keepdim=True) - 1e-6).all())
    assert bool((cropped <= x.amax((1, 2, 3), keepdim=True) + 1e-6).all()) and not torch.allclose(cropped, x)
    tokens = torch.randint(0, 9, (4, 7))
    assert augment_images(tokens, 0.3, gen) is tokens  # not an image batch: unchanged


@pytest.mark.parametrize(
    "data, error",
    [
        (torch.empty(0, 8), TrainingDataError),
        ([], TrainingDataError),
        (torch.tensor([[float("nan")] * 8] * 4), TrainingDataError),
        ([torch.randn(4, 8), torch.randn(4, 9)], TrainingDataError),
        ({"x": torch.randn(4, 8)}, TrainingDataError),
    ],
)
def test_bad_data_is_refused_before_any_change(data, error) -> None:
    teacher, student = _teacher(), _student()
    initial = _params(student)
    with pytest.raises(error):
        distill(student, teacher, data, inplace=True, progress=False)
    assert _same(_params(student), initial)


def test_bad_models_and_options_are_refused() -> None:
    teacher, data = _teacher(), torch.randn(64, 8)
    wrong = nn.Sequential(nn.Linear(8, 4))
    with pytest.raises(InputShapeError, match=r"\(2, 4\).*\(2, 6\)"):
        distill(wrong, teacher, data, progress=False)
    broken = _student()
    with torch.no_grad():
        broken[0].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteModelError, match="student"):
        distill(broken, teacher, data, progress=False)
    with pytest.raises(InvalidOptionError, match="train the teacher"):
        distill(teacher, teacher, data, inplace=True, progress=False)
    for bad in ({"epochs": None}, {"lr": -1.0}, {"mode": "layer"}, {"validation_fraction": 1.0}, {"epoch": 3}):
        with pytest.raises(InvalidOptionError):
            distill(_student(), teacher, data, progress=False, **bad)
    with pytest.raises(TrainingDataError, match="leaves none"):
        distill(_student(), teacher, torch.randn(1, 8), validation_fraction=0.9, progress=False)
    assert DistillConfig(max_minutes=1.0, epochs=None).max_minutes == 1.0


def test_a_diverging_run_restores_the_best_weights_and_says_so() -> None:
    teacher, student = _teacher(), _student()
    initial = _params(student)
    with pytest.raises(TrainingDivergedError, match="Lower lr"):
        distill(student, teacher, torch.randn(64, 8) * 1e30, lr=1e30, inplace=True, progress=False)
    assert _same(_params(student), initial)


def test_distillation_follows_the_model_device() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    teacher, student = _teacher().cuda(), _student().cuda()
    result = distill(student, teacher, torch.randn(128, 8), epochs=2, lr=1e-2, progress=False)
    assert next(result.model.parameters()).is_cuda and result.after.kl < result.before.kl  # type: ignore[union-attr]
