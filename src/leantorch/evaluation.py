"""Running a model over a data set and comparing it with the float model."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .metrics import kl_divergence, sqnr_db, top1_agreement

__all__ = ["model_outputs", "Agreement", "markdown_table", "OutputScore", "sqnr_score", "agreement_score"]


def model_outputs(
    model: nn.Module, data: Iterable[torch.Tensor], progress: bool = True, desc: str = "evaluating"
) -> torch.Tensor:
    """Concatenated outputs of ``model`` (eval mode, no grad) over batches, on the CPU.

    Example:
        >>> model_outputs(nn.Linear(3, 2), [torch.randn(4, 3), torch.randn(1, 3)], progress=False).shape
        torch.Size([5, 2])
    """
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    outs = []
    items = list(data) if not isinstance(data, list) else data
    try:
        with torch.no_grad():
            for batch in tqdm(items, desc=desc, unit="batch", disable=not progress, leave=False):
                outs.append(model(batch.to(device)).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(outs)


@dataclass
class Agreement:
    """How closely outputs follow the float reference."""

    top1: float
    kl: float
    sqnr_db: float

    @classmethod
    def of(cls, reference: torch.Tensor, other: torch.Tensor) -> Agreement:
        """Top-1 agreement, KL divergence and SQNR of ``other`` against ``reference`` logits."""
        return cls(top1_agreement(reference, other), kl_divergence(reference, other), sqnr_db(reference, other))


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Render dict rows (same keys) as a markdown table; floats get 4 significant digits.

    Example:
        >>> print(markdown_table([{"a": 1, "b": 0.5}]))
        | a | b |
        |---|---|
        | 1 | 0.5 |
    """
    keys = list(rows[0])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


class OutputScore:
    """An ``eval_fn`` that scores a model by its outputs on fixed probe batches against a reference's outputs.

    Calling it runs the whole candidate model, like any ``eval_fn``. Sweeps that change one layer at a time
    (``lt.analyze``'s sensitivity, ``lt.compress``'s eval-score table) recognise it: they cache the model's
    activations at each layer and run only the part after the changed layer (:meth:`score_outputs` turns
    those outputs into the same score). A plain function works there too, at the cost of full runs.

    Args:
        reference: the model whose outputs are the yardstick (run once, here).
        probe: the input batches (tensors, one input per model).
        metric: ``metric(reference_outputs, candidate_outputs) -> float``, higher is better.
        name: what the score is, for tables and logs.

    Example:
        >>> net = nn.Linear(3, 2)
        >>> score = OutputScore(net, [torch.randn(4, 3)], metric=lambda ref, out: -float((ref - out).abs().max()))
        >>> score(net)
        -0.0
    """

    def __init__(
        self,
        reference: nn.Module,
        probe: list[torch.Tensor],
        metric: Callable[[torch.Tensor, torch.Tensor], float],
        name: str = "score",
    ) -> None:
        self.probe = list(probe)
        self.metric = metric
        self.name = name
        self.reference_outputs = model_outputs(reference, self.probe, progress=False)

    def __call__(self, model: nn.Module) -> float:
        return self.metric(self.reference_outputs, model_outputs(model, self.probe, progress=False))

    def score_outputs(self, outputs: list[torch.Tensor]) -> float:
        """The score of a model whose outputs on the probe batches (one tensor per batch) are ``outputs``."""
        return self.metric(self.reference_outputs, torch.cat([y.float().cpu() for y in outputs]))


def sqnr_score(model: nn.Module, probe: list[torch.Tensor], cap_db: float = 200.0) -> OutputScore:
    """An ``eval_fn`` scoring a candidate by its output SQNR (dB) against ``model`` on ``probe`` batches.

    A continuous score separates layers even on a few samples, where top-1 agreement ties; identical
    outputs (infinite SQNR) score ``cap_db``.

    Example:
        >>> score = sqnr_score(nn.Linear(3, 2), [torch.randn(4, 3)])
        >>> score(nn.Linear(3, 2)) < 200.0
        True
    """
    return OutputScore(model, probe, lambda ref, out: min(sqnr_db(ref, out), cap_db), name="output SQNR (dB)")


def agreement_score(model: nn.Module, probe: list[torch.Tensor]) -> OutputScore:
    """An ``eval_fn`` scoring a candidate by its top-1 agreement with ``model`` on ``probe`` batches.

    Example:
        >>> net = nn.Linear(3, 2)
        >>> agreement_score(net, [torch.randn(4, 3)])(net)
        1.0
    """
    return OutputScore(model, probe, top1_agreement, name="top-1 agreement")
