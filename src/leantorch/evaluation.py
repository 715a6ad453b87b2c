"""Running a model over a data set and comparing it with the float model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .metrics import kl_divergence, sqnr_db, top1_agreement


def model_outputs(model: nn.Module, data: Iterable[torch.Tensor], progress: bool = True,
                  desc: str = "evaluating") -> torch.Tensor:
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
    def of(cls, reference: torch.Tensor, other: torch.Tensor) -> "Agreement":
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


def sqnr_score(model: nn.Module, probe: list[torch.Tensor], cap_db: float = 200.0) -> Callable[[nn.Module], float]:
    """An ``eval_fn`` scoring a candidate by its output SQNR (dB) against ``model`` on ``probe`` batches.

    A continuous score separates layers even on a few samples, where top-1 agreement ties; identical
    outputs (infinite SQNR) score ``cap_db``.

    Example:
        >>> score = sqnr_score(nn.Linear(3, 2), [torch.randn(4, 3)])
        >>> score(nn.Linear(3, 2)) < 200.0
        True
    """
    reference = model_outputs(model, probe, progress=False)

    def score(candidate: nn.Module) -> float:
        return min(sqnr_db(reference, model_outputs(candidate, probe, progress=False)), cap_db)

    return score
