"""The unlabeled data of :func:`leantorch.compress.distill`: samples gathered and checked, a held-out part,
shuffled mini-batches, and random resized crops + flips of image inputs.

Augmentation: a distillation needs no labels, so any input is a training sample, and a random crop of an
image is a new one whose teacher output is computed afresh. The crop is an affine resampling
(``F.affine_grid`` + bilinear ``F.grid_sample``) with a per-sample scale ``s`` (side fraction, area ``s²`` drawn
in ``[min_crop, 1]``), a position inside the image and a sign on the x axis (the flip), so a whole batch is
one call.

Example:
    >>> train, val = split_samples((torch.randn(10, 3, 8, 8),), None, 0.2, torch.Generator().manual_seed(0))
    >>> len(train[0]), len(val[0])
    (8, 2)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from ..batches import check_iterable, model_inputs
from ..errors import TrainingDataError

__all__ = ["gather_samples", "split_samples", "shuffled_batches", "in_batches", "augment_images"]

Samples = tuple[torch.Tensor, ...]  # one tensor per model input, samples along dim 0


def gather_samples(data: Any, num_inputs: int, what: str) -> Samples:
    """All samples of ``data`` (a tensor ``[N, ...]``, or an iterable of batches as calibration takes them),
    concatenated per model input, on the CPU.

    Raises:
        TrainingDataError: not a tensor or an iterable of batches, no sample, batches of different sample
            shapes, or NaN/Inf (naming the batch).

    Example:
        >>> [x.shape for x in gather_samples([torch.zeros(2, 3), (torch.zeros(4, 3), "labels")], 1, "data")]
        [torch.Size([6, 3])]
    """
    if isinstance(data, torch.Tensor):
        batches: list[Samples] = [model_inputs(data, num_inputs, 0, TrainingDataError, what)]
    else:
        check_iterable(data, what, TrainingDataError)
        batches = [model_inputs(b, num_inputs, i, TrainingDataError, f"{what} batch") for i, b in enumerate(data)]
    if not batches or not len(batches[0][0]):
        raise TrainingDataError(f"{what} holds no sample: pass unlabeled input batches (e.g. lt.data.sample_images)")
    try:
        return tuple(torch.cat([b[j].detach().cpu() for b in batches]) for j in range(num_inputs))
    except RuntimeError as exc:
        shapes = sorted({tuple(b[0].shape[1:]) for b in batches})
        raise TrainingDataError(
            f"{what}: batches hold samples of different shapes ({shapes[:4]}); give samples of one shape"
        ) from exc


def split_samples(
    samples: Samples, validation: Samples | None, fraction: float, gen: torch.Generator
) -> tuple[Samples, Samples | None]:
    """``(training samples, held-out samples)``: ``validation`` when given, else a random ``fraction`` of the
    samples (None when the fraction rounds to none)."""
    if validation is not None:
        return samples, validation
    count = len(samples[0])
    held = int(round(fraction * count))
    if held == 0:
        return samples, None
    if held >= count:
        raise TrainingDataError(
            f"validation_fraction={fraction} of {count} sample(s) leaves none to train on: pass more data, "
            "a smaller validation_fraction, or validation=<held-out batches>"
        )
    order = torch.randperm(count, generator=gen)
    return tuple(x[order[held:]] for x in samples), tuple(x[order[:held]] for x in samples)


def shuffled_batches(samples: Samples, batch_size: int, gen: torch.Generator) -> Iterator[Samples]:
    """One epoch: the samples in a random order, in batches of ``batch_size`` (the last one may be smaller).

    Example:
        >>> [len(b[0]) for b in shuffled_batches((torch.arange(5),), 2, torch.Generator().manual_seed(0))]
        [2, 2, 1]
    """
    order = torch.randperm(len(samples[0]), generator=gen)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        yield tuple(x[index] for x in samples)


def in_batches(samples: Samples, batch_size: int) -> Iterable[Samples]:
    """The samples in order, in batches of ``batch_size``.

    Example:
        >>> [b[0].tolist() for b in in_batches((torch.arange(3),), 2)]
        [[0, 1], [2]]
    """
    for start in range(0, len(samples[0]), batch_size):
        yield tuple(x[start : start + batch_size] for x in samples)


def augment_images(x: torch.Tensor, min_crop: float, gen: torch.Generator) -> torch.Tensor:
    """Random resized crops (area in ``[min_crop, 1]``, square in relative units) with a random horizontal flip,
    resampled to the input's size; a tensor that is not a 4-D float batch is returned unchanged.

    Example:
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> torch.equal(augment_images(x, 1.0, torch.Generator().manual_seed(0)).abs().sum(), x.sum())
        True
    """
    if x.dim() != 4 or not x.is_floating_point():
        return x
    n = len(x)
    area = min_crop + (1.0 - min_crop) * torch.rand(n, generator=gen)
    side = area.sqrt()  # side fraction of the crop, the same along both axes
    shift = (1.0 - side)[:, None] * (2.0 * torch.rand(n, 2, generator=gen) - 1.0)  # the crop stays inside the image
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = side * flip, side
    theta[:, :, 2] = shift
    if math.isclose(min_crop, 1.0):  # no crop: an exact flip (grid_sample would interpolate at the same points)
        return torch.where((flip < 0).to(x.device).reshape(n, 1, 1, 1), x.flip(-1), x)
    grid = F.affine_grid(theta.to(device=x.device, dtype=x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
