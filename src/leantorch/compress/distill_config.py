"""``DistillConfig`` and ``DistillResult``: the options of :func:`leantorch.compress.distill`, checked once on
construction, and what a distillation run did.

``distill(student, teacher, data, max_minutes=5, lr=3e-4)`` and
``distill(student, teacher, data, options=DistillConfig(max_minutes=5, lr=3e-4))`` are the same call: the
keyword API is a thin layer over this frozen dataclass.

Example:
    >>> DistillConfig(max_minutes=2.5, epochs=None).max_minutes
    2.5
    >>> DistillConfig(mode="layer")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    leantorch.errors.InvalidOptionError: mode='layer': use one of 'end_to_end', 'layerwise'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from ..errors import InvalidOptionError
from ..evaluation import Agreement
from ..options import check_choice, check_count, check_flag, check_fraction, check_positive

__all__ = ["MODES", "MONITORS", "SCHEDULES", "DistillConfig", "DistillResult"]

MODES = ("end_to_end", "layerwise")
MONITORS = ("agreement", "kl")
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class DistillConfig:
    """The options of :func:`leantorch.compress.distill`.

    Attributes:
        epochs: passes over the training part of the data (None: until ``max_minutes`` or early stopping).
        max_minutes: wall-clock budget of the training (None: no budget); at least one of the two is required.
        lr: Adam learning rate (the peak of the cosine schedule).
        temperature: softening of both logits in the KL loss (the loss is scaled by ``temperature**2`` so that
            its gradients keep their size across temperatures, as in Hinton et al.).
        mode: ``"end_to_end"`` (KL on the outputs) or ``"layerwise"`` (plus an MSE between the outputs of the
            layers that the student and the teacher share by name and shape, each normalised by the teacher's
            mean square, weighted by ``layer_weight``).
        layer_weight: weight of the layer-wise term (mode ``"layerwise"``), ≥ 0.
        logit_mse: weight of an extra MSE between the raw logits, ≥ 0 (0: off).
        batch_size: samples per training step.
        validation_fraction: share of the data held out for early stopping when no ``validation`` is given,
            in [0, 1) (0: no hold-out, no early stopping, the last weights are kept).
        patience: evaluations without improvement before stopping (None: never stop early; the best
            evaluated weights are still restored).
        eval_every: training steps between two evaluations on the held-out data (None: one epoch, at most 50).
        monitor: what "best" means: ``"kl"`` (KL divergence to the teacher, the default) or ``"agreement"``
            (top-1 agreement with the teacher, ties broken by the KL). KL by default because it is smooth: on
            EfficientNet-Lite0 at 0.75 MACs (128 held-out crops, benchmarks/compress.py) the held-out KL fell
            at every evaluation, 0.41 -> 0.19 over 100 steps, while the agreement wandered between 0.52
            and 0.63, so its maximum picks noise.
        augment: random resized crops (``min_crop`` of the area and more) and horizontal flips of 4-D image
            inputs, drawn afresh at each step, so that a long run on few images does not overfit them.
        min_crop: smallest crop area, as a fraction of the image, in (0, 1].
        schedule: ``"cosine"`` (the learning rate decays to 0 at the end of the epochs or of the time budget,
            whichever comes first) or ``"constant"``.
        warmup: share of the run (steps or time, as the schedule) over which the learning rate ramps up
            linearly from 0, in [0, 1): Adam's first steps move every weight by about ``lr`` whatever its
            gradient's size, which on a pretrained network costs more agreement than a short ramp does.
        num_inputs: positional inputs of the model (a batch's first ``num_inputs`` tensors; labels are ignored).
        seed: shuffling, hold-out and augmentation are drawn from a generator seeded with it.
        progress: a tqdm progress bar with the ETA, the loss and the held-out agreement.
        inplace: train ``student`` itself instead of a copy.
    """

    epochs: int | None = 5
    max_minutes: float | None = None
    lr: float = 1e-4
    temperature: float = 2.0
    mode: Literal["end_to_end", "layerwise"] = "end_to_end"
    layer_weight: float = 1.0
    logit_mse: float = 0.0
    batch_size: int = 32
    validation_fraction: float = 0.1
    patience: int | None = 5
    eval_every: int | None = None
    monitor: Literal["agreement", "kl"] = "kl"
    augment: bool = True
    min_crop: float = 0.35
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup: float = 0.05
    num_inputs: int = 1
    seed: int = 0
    progress: bool = True
    inplace: bool = False

    def __post_init__(self) -> None:
        if self.epochs is None and self.max_minutes is None:
            raise InvalidOptionError("distill: epochs=None and max_minutes=None would never stop: pass either")
        if self.epochs is not None:
            check_count("epochs", self.epochs)
        if self.max_minutes is not None:
            check_positive("max_minutes", self.max_minutes)
        check_positive("lr", self.lr)
        check_positive("temperature", self.temperature)
        check_choice("mode", self.mode, MODES)
        check_positive("layer_weight", self.layer_weight, allow_zero=True)
        check_positive("logit_mse", self.logit_mse, allow_zero=True)
        check_count("batch_size", self.batch_size)
        if check_fraction("validation_fraction", self.validation_fraction) >= 1.0:
            raise InvalidOptionError(
                f"validation_fraction={self.validation_fraction!r}: pass a fraction in [0, 1) (nothing would train)"
            )
        if self.patience is not None:
            check_count("patience", self.patience)
        if self.eval_every is not None:
            check_count("eval_every", self.eval_every)
        check_choice("monitor", self.monitor, MONITORS)
        check_flag("augment", self.augment)
        check_flag("progress", self.progress)
        check_flag("inplace", self.inplace)
        if check_fraction("min_crop", self.min_crop) <= 0.0:
            raise InvalidOptionError(f"min_crop={self.min_crop!r}: pass a fraction in (0, 1]")
        check_choice("schedule", self.schedule, SCHEDULES)
        if check_fraction("warmup", self.warmup) >= 1.0:
            raise InvalidOptionError(f"warmup={self.warmup!r}: pass a fraction in [0, 1)")
        check_count("num_inputs", self.num_inputs)
        check_count("seed", self.seed, minimum=0)


@dataclass
class DistillResult:
    """What :func:`leantorch.compress.distill` did.

    Attributes:
        model: the trained student (a copy unless ``inplace=True``), holding the best evaluated weights.
        before: agreement with the teacher on the held-out data before training (None without a hold-out).
        after: the same for the returned weights.
        best_step: the training step whose weights were kept (0: the untrained ones were best).
        steps: training steps taken.
        stop_reason: ``"epochs"``, ``"time"`` (``max_minutes`` reached) or ``"early stopping"``.
        seconds: wall time of the whole call.
        history: one row per evaluation: ``step``, ``epoch``, ``seconds``, ``loss`` (mean training loss since
            the previous row), ``agreement`` and ``kl`` on the held-out data.
        layers: the layers matched in ``"layerwise"`` mode (empty otherwise).
    """

    model: nn.Module
    before: Agreement | None
    after: Agreement | None
    best_step: int
    steps: int
    stop_reason: str
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
