"""Agreement of a quantized/compressed model's outputs with the float model's outputs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["top1_agreement", "kl_divergence", "sqnr_db", "sqnr_db_from_sums"]


def top1_agreement(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Fraction of samples whose arg-max class is the same in both logits tensors ``[N, classes]``.

    Example:
        >>> top1_agreement(torch.tensor([[1., 0.], [0., 1.]]), torch.tensor([[2., 0.], [1., 0.]]))
        0.5
    """
    return float((reference.argmax(-1) == other.argmax(-1)).double().mean())


def kl_divergence(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Mean KL(softmax(reference) ‖ softmax(other)) over samples, in nats.

    Example:
        >>> kl_divergence(torch.tensor([[1., 2.]]), torch.tensor([[1., 2.]]))
        0.0
    """
    log_p = F.log_softmax(reference.double(), dim=-1)
    log_q = F.log_softmax(other.double(), dim=-1)
    return float((log_p.exp() * (log_p - log_q)).sum(-1).mean().clamp(min=0.0))


def sqnr_db(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10·log10(Σ ref² / Σ (ref − other)²)`` in dB (inf if equal).

    Example:
        >>> round(sqnr_db(torch.tensor([1.0, -1.0]), torch.tensor([1.1, -0.9])), 2)
        20.0
    """
    noise = float((reference.double() - other.double()).pow(2).sum())
    signal = float(reference.double().pow(2).sum())
    return sqnr_db_from_sums(signal, noise)


def sqnr_db_from_sums(signal: float, noise: float) -> float:
    """``10·log10(signal / noise)`` in dB from accumulated sums of squares (inf if there is no noise).

    Example:
        >>> sqnr_db_from_sums(100.0, 1.0)
        20.0
    """
    return math.inf if noise == 0.0 else 10.0 * math.log10(signal / noise)
