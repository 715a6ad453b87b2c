"""Recovery after compression: distillation from the original model on unlabeled data.

A compressed model (``lt.compress``) loses agreement with its original; a short fine-tune that makes it imitate
the original's outputs recovers much of it, and needs no labels: the teacher labels whatever images are given,
so the built-in photograph crops (``lt.data.sample_images``) are enough.

Loss (per sample, averaged over the batch), with student logits ``s``, teacher logits ``t``, temperature ``T``:
``T² · KL(softmax(t/T) ‖ softmax(s/T))`` (Hinton et al.: the ``T²`` keeps the gradients' size across ``T``)
``+ logit_mse · mean((s − t)²)``; in ``"layerwise"`` mode ``+ layer_weight · mean_l ‖s_l − t_l‖² / ‖t_l‖²`` over the
layers the two models share by name and shape (:mod:`.distill_layers`). Adam, learning rate on a cosine decay
to 0 over the epochs or the time budget. Every ``eval_every`` steps the student is scored against the teacher on
held-out samples; the best weights are kept and restored at the end (early stopping after ``patience``
evaluations without improvement).

Example:
    >>> teacher = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    >>> student = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 4))
    >>> result = distill(student, teacher, torch.randn(256, 8), epochs=20, lr=1e-2, progress=False)
    >>> result.after.kl < result.before.kl, result.model is not student
    (True, True)
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import InputShapeError, InvalidOptionError, NonFiniteModelError, TrainingDivergedError
from ..evaluation import Agreement
from ..options import with_overrides
from .distill_config import DistillConfig, DistillResult
from .distill_data import Samples, augment_images, gather_samples, in_batches, shuffled_batches, split_samples
from .distill_layers import LayerMatcher

__all__ = ["DistillConfig", "DistillResult", "distill", "distill_loss"]

log = logging.getLogger(__name__)


def distill_loss(
    student_out: torch.Tensor, teacher_out: torch.Tensor, temperature: float = 2.0, logit_mse: float = 0.0
) -> torch.Tensor:
    """``T² · KL(softmax(t/T) ‖ softmax(s/T))`` (classes on the last axis, mean over the rest), plus
    ``logit_mse`` times the MSE between the logits.

    Example:
        >>> t = torch.tensor([[2.0, 0.0]])
        >>> float(distill_loss(t, t)), round(float(distill_loss(torch.zeros(1, 2), t, temperature=1.0)), 4)
        (0.0, 0.3278)
    """
    loss = _SoftTargetKL.apply(student_out / temperature, teacher_out / temperature) * temperature**2
    if logit_mse:
        loss = loss + logit_mse * F.mse_loss(student_out, teacher_out)
    return loss


class _SoftTargetKL(torch.autograd.Function):
    """``mean KL(softmax(t) ‖ softmax(s))`` over all but the last axis, with the gradient ``softmax(s) − softmax(t)``
    (per row, over the row count) written out.

    Why not autograd's: log-softmax's backward is ``g − softmax(s)·Σg``, and ``Σ softmax(t)`` is 1 only up to
    rounding, so a student equal to its teacher would get rounding-level gradients, which Adam (scale-free)
    turns into steps of the full learning rate. Here both softmaxes are ``exp`` of bitwise-equal log-softmaxes,
    so equal logits give a zero gradient exactly.
    """

    @staticmethod
    def forward(ctx: Any, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        log_s, log_t = F.log_softmax(student, dim=-1), F.log_softmax(teacher, dim=-1)
        p_t = log_t.exp()
        ctx.rows = max(student.numel() // max(student.shape[-1], 1), 1)
        ctx.save_for_backward(log_s, p_t)
        return (p_t * (log_t - log_s)).sum() / ctx.rows

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        log_s, p_t = ctx.saved_tensors
        return grad * (log_s.exp() - p_t) / ctx.rows, None


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: Any,
    validation: Any = None,
    options: DistillConfig | None = None,
    **overrides: Any,
) -> DistillResult:
    """Train ``student`` to reproduce ``teacher``'s outputs on unlabeled ``data``; returns a :class:`DistillResult`
    whose ``model`` holds the best weights found (a copy of ``student`` unless ``inplace=True``).

    The options are those of :class:`~leantorch.compress.distill_config.DistillConfig` (``epochs``,
    ``max_minutes``, ``lr``, ``temperature``, ``mode``, ``patience``, ``augment``, ``progress``, ``inplace`` ...):
    pass one as ``options``, or its fields as keywords (applied on top).

    Args:
        student: the model to train, e.g. ``lt.compress``'s output; its outputs must have the teacher's shape.
        teacher: the reference, e.g. the original model; frozen (no gradients, eval mode), never modified.
        data: unlabeled inputs: a tensor ``[N, ...]`` or an iterable of batches (a tensor, or a tuple/list whose
            first ``num_inputs`` items are the inputs; labels after them are ignored).
        validation: held-out batches scoring early stopping (default: ``validation_fraction`` of ``data``).

    The student runs in eval mode throughout: BatchNorm keeps its running statistics (a few hundred crops of
    a dozen photographs estimate ImageNet's statistics badly, and moving them shifts every later layer while the
    weights are still adapting) and dropout stays off, so the loss is that of the deployed function and a
    student equal to its teacher has loss 0.

    Raises:
        InvalidOptionError: an option out of range; ``inplace=True`` with ``student is teacher``; a student
            without trainable parameters.
        TrainingDataError: ``data``/``validation`` is empty, not batches, of mixed sample shapes, holds NaN/Inf,
            or the hold-out leaves nothing to train on.
        InputShapeError: the student's and the teacher's outputs are not tensors of the same shape.
        NonFiniteModelError: the teacher's or the student's outputs hold NaN/Inf before training.
        TrainingDivergedError: the loss became NaN/Inf (lower ``lr``); the best weights so far are restored.

    All checks run before any weight changes.

    Example:
        >>> teacher = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> result = distill(nn.Linear(4, 3), teacher, torch.randn(64, 4), epochs=2, progress=False)
        >>> result.steps, result.stop_reason
        (4, 'epochs')
    """
    cfg = with_overrides(DistillConfig, options, overrides, "distill")
    if cfg.inplace and student is teacher:
        raise InvalidOptionError("distill: inplace=True with student is teacher would train the teacher; pass a copy")
    if not any(p.requires_grad for p in student.parameters()):
        raise InvalidOptionError("distill: the student has no parameter with requires_grad=True; nothing to train")
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    held = gather_samples(validation, cfg.num_inputs, "validation") if validation is not None else None
    train, val = split_samples(gather_samples(data, cfg.num_inputs, "data"), held, cfg.validation_fraction, gen)
    teacher_mode, student_mode = teacher.training, student.training
    teacher.eval()
    try:
        _check_outputs(student, teacher, tuple(x[:2] for x in train))
        model = student if cfg.inplace else _channels_last(copy.deepcopy(student), teacher)
        model.eval()  # why eval mode: see the docstring (BatchNorm statistics, dropout)
        reference = _outputs(teacher, val, cfg.batch_size) if val is not None else None
        matcher = LayerMatcher(model, teacher) if cfg.mode == "layerwise" else None
        try:
            result = _train(model, teacher, train, val, reference, matcher, cfg, gen, start)
        finally:
            if matcher is not None:
                matcher.close()
        model.train(student_mode)
    finally:
        teacher.train(teacher_mode)
    result.seconds = time.perf_counter() - start
    return result


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _channels_last(model: nn.Module, teacher: nn.Module) -> nn.Module:
    """The copy in the channels-last layout when the teacher is (``lt.data.channels_last``): PyTorch's CPU
    convolutions, depthwise ones above all, run their forward and backward 2-3x faster on NHWC tensors. Only then,
    because the layouts sum in different orders: a student equal to its teacher would otherwise differ from
    it by rounding. Batches follow the layout of each model's first conv weight (:func:`_layout`)."""
    if _layout(teacher) == torch.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _layout(model: nn.Module) -> torch.memory_format:
    """Channels-last when the model's first 4-D weight is stored so, else contiguous."""
    weight = next((p for p in model.parameters() if p.dim() == 4), None)
    nhwc = weight is not None and weight.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if nhwc and not weight.is_contiguous() else torch.contiguous_format


def _to(batch: Samples, device: torch.device, layout: torch.memory_format) -> list[torch.Tensor]:
    return [x.to(device).contiguous(memory_format=layout) if x.dim() == 4 else x.to(device) for x in batch]


def _outputs(model: nn.Module, samples: Samples, batch_size: int) -> torch.Tensor:
    device, layout = _device(model), _layout(model)
    with torch.no_grad():
        return torch.cat(
            [model(*_to(batch, device, layout)).float().cpu() for batch in in_batches(samples, batch_size)]
        )


def _check_outputs(student: nn.Module, teacher: nn.Module, batch: Samples) -> None:
    """The two models run on a couple of samples and give finite tensors of one shape, before any training."""
    was = student.training
    student.eval()
    try:
        with torch.no_grad():
            s = student(*(x.to(_device(student)) for x in batch))
            t = teacher(*(x.to(_device(teacher)) for x in batch))
    finally:
        student.train(was)
    if not isinstance(s, torch.Tensor) or not isinstance(t, torch.Tensor) or s.shape != t.shape:
        shapes = [tuple(o.shape) if isinstance(o, torch.Tensor) else type(o).__name__ for o in (s, t)]
        raise InputShapeError(
            f"distill: the student outputs {shapes[0]} and the teacher {shapes[1]} on the same inputs; both must "
            "output one logits tensor of the same shape (pass the original model as the teacher)"
        )
    for name, out in (("teacher", t), ("student", s)):
        if not torch.isfinite(out).all():
            raise NonFiniteModelError(f"distill: the {name}'s outputs hold NaN/Inf on the first samples of data")


def _steps(train: Samples, cfg: DistillConfig, gen: torch.Generator) -> Iterator[tuple[int, Samples]]:
    """(epoch, batch) for every training step: ``epochs`` passes, or endlessly (a time budget stops them)."""
    for epoch in range(cfg.epochs) if cfg.epochs is not None else itertools.count():
        for batch in shuffled_batches(train, cfg.batch_size, gen):
            yield epoch, batch


def _score_key(score: Agreement, monitor: str) -> tuple[float, ...]:
    """Larger is better: (agreement, -KL) or (-KL,)."""
    return (score.top1, -score.kl) if monitor == "agreement" else (-score.kl,)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class _Evaluator:
    """Scores the student on the held-out samples against the teacher's outputs on them."""

    def __init__(self, model: nn.Module, val: Samples, reference: torch.Tensor, batch_size: int) -> None:
        self.model, self.val, self.reference, self.batch_size = model, val, reference, batch_size

    def __call__(self, matcher: LayerMatcher | None) -> Agreement:
        if matcher is not None:
            matcher.active = False  # evaluation passes are not training targets
        try:
            return Agreement.of(self.reference, _outputs(self.model, self.val, self.batch_size))
        finally:
            if matcher is not None:
                matcher.active = True


def _train(
    model: nn.Module,
    teacher: nn.Module,
    train: Samples,
    val: Samples | None,
    reference: torch.Tensor | None,
    matcher: LayerMatcher | None,
    cfg: DistillConfig,
    gen: torch.Generator,
    start: float,
) -> DistillResult:
    where = ((_device(model), _layout(model)), (_device(teacher), _layout(teacher)))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    per_epoch = math.ceil(len(train[0]) / cfg.batch_size)
    total = cfg.epochs * per_epoch if cfg.epochs is not None else None
    budget = 60.0 * cfg.max_minutes if cfg.max_minutes is not None else None
    eval_every = cfg.eval_every or min(per_epoch, 50)
    evaluate = _Evaluator(model, val, reference, cfg.batch_size) if val is not None and reference is not None else None
    before = evaluate(matcher) if evaluate is not None else None
    best, best_score, best_step, stale, step, epoch = _snapshot(model), before, 0, 0, 0, 0
    history: list[dict[str, Any]] = []
    losses: list[float] = []
    reason, train_start = "epochs", time.perf_counter()
    bar = tqdm(total=total, desc="distilling", unit="step", disable=not cfg.progress, leave=False)
    try:
        for epoch, batch in _steps(train, cfg, gen):
            elapsed = time.perf_counter() - train_start
            if budget is not None and elapsed >= budget:
                reason = "time"
                break
            done = max(step / total if total else 0.0, elapsed / budget if budget else 0.0)
            for group in opt.param_groups:
                group["lr"] = _learning_rate(cfg, done)
            loss = _train_step(model, teacher, batch, cfg, opt, matcher, gen, where)
            if not math.isfinite(loss):
                model.load_state_dict(best)
                raise TrainingDivergedError(
                    f"distill: the loss became {loss} at step {step + 1}; the best weights so far (step {best_step}) "
                    f"were restored. Lower lr (now {cfg.lr})."
                )
            step += 1
            losses.append(loss)
            _advance(bar, step, total, budget, time.perf_counter() - train_start)
            if evaluate is None or step % eval_every:
                continue
            score = evaluate(matcher)
            history.append(_row(step, epoch, time.perf_counter() - start, losses, score))
            bar.set_postfix(loss=f"{history[-1]['loss']:.4f}", agreement=f"{score.top1:.3f}")
            log.info(
                "distill step %d: loss %.4f, agreement %.4f, KL %.4f", step, history[-1]["loss"], score.top1, score.kl
            )
            if best_score is None or _score_key(score, cfg.monitor) > _score_key(best_score, cfg.monitor):
                best, best_score, best_step, stale = _snapshot(model), score, step, 0
            else:
                stale += 1
                if cfg.patience is not None and stale >= cfg.patience:
                    reason = "early stopping"
                    break
    finally:
        bar.close()
    if evaluate is not None and losses and (not history or history[-1]["step"] != step):
        score = evaluate(matcher)
        history.append(_row(step, epoch, time.perf_counter() - start, losses, score))
        if best_score is None or _score_key(score, cfg.monitor) > _score_key(best_score, cfg.monitor):
            best, best_score, best_step = _snapshot(model), score, step
    if evaluate is None:
        best_step = step  # nothing to compare with: the last weights are kept
    model.load_state_dict(best)
    layers = list(matcher.names or []) if matcher is not None else []
    return DistillResult(model, before, best_score, best_step, step, reason, 0.0, history, layers)


def _learning_rate(cfg: DistillConfig, done: float) -> float:
    """The learning rate when a fraction ``done`` of the run (steps or time) is behind: linear warm-up, then
    cosine decay to 0 (or constant)."""
    done = min(done, 1.0)
    if done < cfg.warmup:
        return cfg.lr * (done + 1e-3) / cfg.warmup  # never exactly 0: the first step still moves
    if cfg.schedule == "constant":
        return cfg.lr
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (done - cfg.warmup) / (1.0 - cfg.warmup)))


def _row(step: int, epoch: int, seconds: float, losses: list[float], score: Agreement) -> dict[str, Any]:
    """One history row; ``loss`` is the mean training loss since the previous row (``losses`` is emptied)."""
    row = {"step": step, "epoch": epoch, "seconds": seconds, "loss": sum(losses) / max(len(losses), 1)}
    losses.clear()
    return {**row, "agreement": score.top1, "kl": score.kl}


def _advance(bar: Any, step: int, total: int | None, budget: float | None, elapsed: float) -> None:
    """One step on the bar; with a time budget the total becomes the steps that the budget still allows, so
    that tqdm's ETA counts down to the end of the budget."""
    if budget is not None:
        expected = step + int(max(budget - elapsed, 0.0) / (elapsed / step))
        bar.total = min(total, expected) if total is not None else expected
    bar.update(1)


def _train_step(
    model: nn.Module,
    teacher: nn.Module,
    batch: Samples,
    cfg: DistillConfig,
    opt: torch.optim.Optimizer,
    matcher: LayerMatcher | None,
    gen: torch.Generator,
    where: tuple[tuple[torch.device, torch.memory_format], tuple[torch.device, torch.memory_format]],
) -> float:
    """One Adam step on one (augmented) batch; returns the loss (the step is skipped when it is not finite).
    ``where``: (device, memory layout) of the student's inputs, then of the teacher's."""
    if cfg.augment:
        batch = tuple(augment_images(x, cfg.min_crop, gen) for x in batch)
    (device, layout), (teacher_device, teacher_layout) = where
    with torch.no_grad():
        target = teacher(*_to(batch, teacher_device, teacher_layout)).float().to(device)
    out = model(*_to(batch, device, layout))
    loss = distill_loss(out.float(), target, cfg.temperature, cfg.logit_mse)
    if matcher is not None:
        loss = loss + cfg.layer_weight * matcher.loss().to(device)
    value = float(loss.detach())
    if not math.isfinite(value):
        return value
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return value
