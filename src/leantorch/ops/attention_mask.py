"""The ``AttentionMask`` op: masked attention scores, with the dtype's lowest finite value where a mask masks.

``-inf`` would turn a fully masked row into NaN; the lowest finite value makes it attend uniformly. The op is a
passthrough (its output is an input score or that one constant, as in a runtime's masked softmax), so the
default config does not quantize it: a quantizer there would have to span ``-3.4e38`` and would zero every
score. The attention decompositions of :mod:`.attention` call :func:`attention_mask`.

Example:
    >>> AttentionMask("causal")(torch.zeros(1, 2, 2))[0, 0, 1].item() < -1e38
    True
"""

from __future__ import annotations

import torch
from torch import fx, nn

from ..errors import ConfigError
from .registry import OpSpec, register
from .rules import integer_derived

__all__ = ["MASK_KINDS", "attention_mask", "AttentionMask", "ATTENTION_MASK", "is_mask_operand"]

#: How :func:`attention_mask` reads a mask: ``"mha"`` (``nn.MultiheadAttention``'s attn_mask: bool True
#: masks, 3-D masks are per batch·head), ``"key_padding"`` (its key_padding_mask, ``(B, S)`` or ``(S,)``),
#: ``"keep"`` (SDPA's attn_mask: bool True takes part), ``"causal"`` (no mask tensor: query i sees keys ≤ i),
#: ``"additive"`` (a float mask added to the scores, as Hugging Face eager attention does: :func:`is_mask_operand`).
MASK_KINDS = ("mha", "key_padding", "keep", "causal", "additive")


def attention_mask(scores: torch.Tensor, mask: torch.Tensor | None, kind: str) -> torch.Tensor:
    """``scores`` (``(..., L, S)``) with masked positions set to the dtype's lowest finite value.

    A bool mask selects the masked positions (True masks, except for ``kind="keep"``); a float mask is added
    and the sum clamped to the lowest finite value, so ``-inf`` entries mask without producing NaN.

    Example:
        >>> s = torch.zeros(1, 2, 2)
        >>> attention_mask(s, torch.tensor([[False, True], [False, False]]), "mha")[0, 0].tolist()
        [0.0, -3.4028234663852886e+38]
        >>> attention_mask(s, None, "causal")[0, 0, 1].item() < -1e38
        True
    """
    lowest = torch.finfo(scores.dtype).min
    if kind == "causal":
        # Top-left aligned, as torch's is_causal: query i attends to keys 0..i.
        keep = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
        return scores.masked_fill(keep.logical_not(), lowest)
    if mask is None or kind not in MASK_KINDS:
        raise ConfigError(f"attention_mask needs a mask tensor and a kind in {MASK_KINDS}, got {kind!r}")
    if kind == "mha" and mask.dim() == 3:
        mask = mask.reshape(scores.shape)  # (B·H, L, S) → (B, H, L, S); unbatched (H, L, S) stays
    elif kind == "key_padding" and mask.dim() == 2:
        mask = mask[:, None, None, :]  # (B, S) → (B, 1, 1, S); unbatched (S,) broadcasts as it is
    if mask.dtype == torch.bool:
        return scores.masked_fill(mask.logical_not() if kind == "keep" else mask, lowest)
    return (scores + mask).clamp_min(lowest)


def is_mask_operand(node: object) -> bool:
    """Whether a traced float value is an attention mask made from integer model inputs only (Hugging Face's
    ``(1 - attention_mask) * finfo.min``; :func:`~leantorch.ops.rules.integer_derived`). Added to the scores it
    is an :class:`AttentionMask` (``"additive"``), not a quantized Add: GPT-Neo's sum of the lowest value and
    the lowest value is ``-inf``, which no quantizer can span.

    Example:
        >>> is_mask_operand(None)
        False
    """
    return integer_derived(node, floating=True)


# Traced as one call (not traced into), so that the rule below can make it an AttentionMask op.
fx.wrap("attention_mask")


class AttentionMask(nn.Module):
    """The op that :func:`attention_mask` calls become: ``forward(scores[, mask])``.

    Example:
        >>> AttentionMask("key_padding")(torch.zeros(1, 1, 1, 2), torch.tensor([[0.0, -1.0]])).tolist()
        [[[[0.0, -1.0]]]]
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind not in MASK_KINDS:
            raise ConfigError(f"AttentionMask kind must be one of {MASK_KINDS}, got {kind!r}")
        self.kind = kind

    def forward(self, scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return attention_mask(scores, mask, self.kind)

    def extra_repr(self) -> str:
        return f"kind={self.kind}"


def _mask_rule(args: tuple, kwargs: dict) -> tuple[nn.Module, tuple] | None:
    scores, mask, kind = (list(args) + [kwargs.get("mask"), kwargs.get("kind")])[:3]
    return AttentionMask(kind), (scores,) if mask is None else (scores, mask)


ATTENTION_MASK = register(
    OpSpec("AttentionMask", (AttentionMask,), passthrough=True, functions=((attention_mask, _mask_rule),))
)
