"""``leantorch compress --refit`` and ``--recover MINUTES``: least-squares re-fit of every layer and distillation
from the original model, after compression.

Its own module because ``cli_args`` (which adds the options) and ``cli_compress`` (which runs them) import
each other's neighbours, and ``cli_args`` is near its size limit.

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> add_recover_options(parser)
    >>> args = parser.parse_args(["--recover", "2.5"])
    >>> args.recover, args.recover_samples, args.recover_mode, args.refit
    (2.5, 256, 'end_to_end', False)
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import torch
from torch import nn

from .cli_types import positive_float, positive_int
from .compress.distill import distill
from .compress.distill_config import MODES
from .compress.refit import refit_layers

__all__ = ["RECOVER_SAMPLES", "add_recover_options", "recovery_samples", "refit", "recover"]

log = logging.getLogger(__name__)

#: extra --data samples loaded for the recovery when --recover is given (the calibration samples train too)
RECOVER_SAMPLES = 256


def add_recover_options(p: argparse.ArgumentParser) -> None:
    """``--refit``, ``--recover MINUTES`` and its settings, on the ``compress`` parser."""
    p.add_argument(
        "--refit",
        action="store_true",
        help="after compressing (before --recover and --quantize), re-fit every conv/linear layer in turn by "
        "least squares to the original model's outputs on the --data samples (the calibration ones and "
        "--recover-samples more): no labels, seconds to a minute on a CPU; on EfficientNet-Lite0 at 0.75 MACs it "
        "lifts top-1 agreement with the original from 0.72 to 0.80",
    )
    p.add_argument(
        "--recover",
        type=positive_float,
        metavar="MINUTES",
        help="after compressing (and before --quantize), recover accuracy by distillation from the original "
        "model for at most MINUTES of wall time: no labels needed, the original labels the --data samples "
        "(the --num-samples calibration samples and --recover-samples more, with random crops and flips of "
        "images), early stopping on a held-out tenth of them; prints top-1 agreement on the --eval-samples "
        "before and after, and writes the recovered model",
    )
    p.add_argument(
        "--recover-samples",
        type=positive_int,
        default=RECOVER_SAMPLES,
        help=f"extra --data samples for --refit/--recover, loaded after the others (default {RECOVER_SAMPLES}; a "
        "smaller --data just gives fewer)",
    )
    p.add_argument(
        "--recover-lr", type=positive_float, default=1e-4, help="Adam learning rate of --recover (default 1e-4)"
    )
    p.add_argument(
        "--recover-mode",
        choices=MODES,
        default="end_to_end",
        help="end_to_end: KL between the softened outputs; layerwise: plus an MSE between the outputs of the "
        "layers that compression kept (default end_to_end)",
    )


def recovery_samples(args: argparse.Namespace) -> int:
    """How many more --data samples to load for ``--refit``/``--recover`` (0 without them).

    Example:
        >>> recovery_samples(argparse.Namespace(recover=None, refit=False, recover_samples=256))
        0
    """
    return args.recover_samples if args.recover is not None or args.refit else 0


def refit(
    original: nn.Module, compressed: nn.Module, train: torch.Tensor, score: Any, args: argparse.Namespace
) -> tuple[nn.Module, dict[str, Any]]:
    """``compressed`` with every layer re-fitted to ``original``'s outputs on ``train``
    (:func:`~leantorch.compress.refit.refit_layers`); returns it and a summary (agreement before/after from
    ``score``, layers, seconds), also printed.

    Example:
        >>> teacher = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> args = argparse.Namespace(no_progress=True)
        >>> model, summary = refit(teacher, nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)),
        ...                        torch.randn(64, 4), lambda m: 1.0, args)  # doctest: +ELLIPSIS
        re-fit: 2 layers in ... s, top-1 agreement on the held-out samples 1.0000 -> 1.0000
    """
    before = score(compressed)
    result = refit_layers(compressed, original, train, progress=not args.no_progress)
    after = score(result.model)
    for name, reason in result.skipped.items():
        log.info("re-fit skipped %s: %s", name, reason)
    print(
        f"re-fit: {len(result.refitted)} layers in {result.seconds:.0f} s, top-1 agreement on the held-out samples "
        f"{before:.4f} -> {after:.4f}"
    )
    return result.model, {
        "top-1 agreement before re-fit": before,
        "top-1 agreement after re-fit": after,
        "re-fit seconds": result.seconds,
    }


def recover(
    original: nn.Module,
    compressed: nn.Module,
    train: torch.Tensor,
    score: Any,
    args: argparse.Namespace,
) -> tuple[nn.Module, dict[str, Any]]:
    """``compressed`` distilled from ``original`` on ``train`` for ``args.recover`` minutes; returns the recovered
    model and a summary (agreement before/after from ``score``, steps, seconds), also printed.

    Example:
        >>> teacher = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> args = argparse.Namespace(recover=0.001, recover_lr=1e-3, recover_mode="end_to_end", batch_size=8,
        ...                           no_progress=True)
        >>> score = lambda m: 1.0
        >>> model, summary = recover(teacher, nn.Linear(4, 3), torch.randn(32, 4), score, args)  # doctest: +ELLIPSIS
        recovery: ... steps in ... s (...), top-1 agreement on the held-out samples 1.0000 -> 1.0000
    """
    before = score(compressed)
    result = distill(
        compressed,
        original,
        train,
        epochs=None,
        max_minutes=args.recover,
        lr=args.recover_lr,
        mode=args.recover_mode,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    after = score(result.model)
    print(
        f"recovery: {result.steps} steps in {result.seconds:.0f} s ({result.stop_reason}; best step "
        f"{result.best_step}), top-1 agreement on the held-out samples {before:.4f} -> {after:.4f}"
    )
    return result.model, {
        "top-1 agreement before recovery": before,
        "top-1 agreement after recovery": after,
        "recovery steps": result.steps,
        "recovery seconds": result.seconds,
    }
