"""Attention, quantized as the ops it is made of.

:func:`leantorch.prepare` replaces ``nn.MultiheadAttention`` (and ``nn.TransformerEncoderLayer``, whose
fast-path checks cannot be traced) by a decomposition written in plain torch calls, and traces
``F.scaled_dot_product_attention`` as :func:`sdpa_decomposition`. After tracing, every step is a leantorch op
with its own quantizers: the q/k/v and output projections are ``Linear`` layers (weight quantizers), the
score and context products ``MatMul``, the scaling ``Mul``, the normalisation ``Softmax``.

Masks become one ``AttentionMask`` op per mask (:func:`attention_mask`). It writes the lowest finite value of
the dtype into masked scores (``-inf`` would turn a fully masked row into NaN) and is a passthrough op: its
output is either an input score or that one constant, as in a runtime's masked softmax, so the default config
does not quantize it (a quantizer there would have to span ``-3.4e38`` and would zero every score).
A fully masked row therefore attends uniformly instead of giving NaN (torch gives NaN, or 0 in its SDPA
kernels); rows with at least one unmasked key are computed as in torch.

Example:
    >>> from leantorch import prepare
    >>> model = nn.Sequential(nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True)).eval()
    >>> x = torch.randn(2, 5, 8)
    >>> gm = prepare(model, x)
    >>> sorted({type(m).__name__ for m in gm.modules()} & {"Linear", "MatMul", "Mul", "Softmax"})
    ['Linear', 'MatMul', 'Mul', 'Softmax']
    >>> bool((gm(x) - model(x)).abs().max() < 1e-5)
    True
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import TraceError
from .attention_mask import ATTENTION_MASK, MASK_KINDS, AttentionMask, attention_mask
from .registry import OpSpec, register

__all__ = [
    "MASK_KINDS",
    "attention_mask",
    "AttentionMask",
    "MultiheadAttentionDecomposed",
    "TransformerEncoderLayerDecomposed",
    "zero_padded_positions",
    "TransformerEncoderDecomposed",
    "sdpa_decomposition",
    "ATTENTION_MASK",
    "MULTIHEAD_ATTENTION",
    "TRANSFORMER_ENCODER_LAYER",
    "TRANSFORMER_ENCODER",
    "SDPA",
]

# The decompositions below call attention_mask as one traced function (not traced into), so that its rule makes
# it an AttentionMask op; fx.wrap patches the name in this module's globals.
fx.wrap("attention_mask")


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(..., L, heads·d)`` → ``(..., heads, L, d)`` with reshape/transpose only (data movement, so the
    projection's output quantizer is the grid of the matmul's input)."""
    return x.reshape(x.shape[:-1] + (heads, -1)).transpose(-3, -2)


class MultiheadAttentionDecomposed(nn.Module):
    """``nn.MultiheadAttention`` as projections, matmuls, a scaling, masks and a softmax (traced through).

    Same ``forward`` signature and results as the module it is built from (:meth:`from_module`), for batched
    and unbatched inputs, ``batch_first`` either way, bool/float ``attn_mask`` (2-D or 3-D) and
    ``key_padding_mask``, ``need_weights`` (averaged or per head), ``is_causal`` and ``bias=False``.

    Example:
        >>> mha = nn.MultiheadAttention(8, 2).eval()
        >>> x = torch.randn(5, 3, 8)
        >>> out, w = MultiheadAttentionDecomposed.from_module(mha)(x, x, x)
        >>> bool(torch.allclose(out, mha(x, x, x)[0], atol=1e-6)), tuple(w.shape)
        (True, (3, 5, 5))
    """

    lt_traced_through = True

    def __init__(
        self,
        q_proj: nn.Linear,
        k_proj: nn.Linear,
        v_proj: nn.Linear,
        out_proj: nn.Linear,
        num_heads: int,
        batch_first: bool,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = q_proj, k_proj, v_proj, out_proj
        self.num_heads, self.batch_first = num_heads, batch_first
        self.head_dim = q_proj.out_features // num_heads
        self.scale = float(self.head_dim) ** -0.5
        # Dropout of the attention weights acts in training only, as in torch (e.g. during QAT).
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None

    @classmethod
    def from_module(cls, mha: nn.MultiheadAttention) -> MultiheadAttentionDecomposed:
        """Build from ``mha``'s parameters (copies: the projections own their weights).

        Raises:
            TraceError: ``add_bias_kv`` or ``add_zero_attn``, which have no decomposition here.
        """
        for option, used in (("add_bias_kv=True", mha.bias_k is not None), ("add_zero_attn=True", mha.add_zero_attn)):
            if used:
                raise TraceError(
                    f"nn.MultiheadAttention with {option} cannot be quantized as its ops (projections, matmuls, "
                    "softmax): pass leaf_modules=[torch.nn.MultiheadAttention] (or its name) to keep it a float "
                    "layer quantized at its outputs, or build it without that option"
                )
        if mha._qkv_same_embed_dim:
            weights = mha.in_proj_weight.chunk(3)
        else:
            weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
        biases = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None, None, None)
        q, k, v = (_linear(w, b) for w, b in zip(weights, biases))
        out = _linear(mha.out_proj.weight, mha.out_proj.bias)
        return cls(q, k, v, out, mha.num_heads, mha.batch_first, mha.dropout).train(mha.training)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if is_causal and attn_mask is None:  # torch's rule: is_causal is only a hint about attn_mask
            raise TraceError("nn.MultiheadAttention: is_causal=True needs attn_mask (the causal mask itself)")
        if not self.batch_first:
            # (L, B, E) → (B, L, E); an unbatched (L, E) input is unchanged (transpose(0, 0)).
            query, key, value = (t.transpose(0, -2) for t in (query, key, value))
        q = _split_heads(self.q_proj(query), self.num_heads)
        k = _split_heads(self.k_proj(key), self.num_heads)
        v = _split_heads(self.v_proj(value), self.num_heads)
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        if attn_mask is not None:
            scores = attention_mask(scores, attn_mask, "mha")
        if key_padding_mask is not None:
            scores = attention_mask(scores, key_padding_mask, "key_padding")
        weights = F.softmax(scores, dim=-1)
        if self.dropout is not None:
            weights = self.dropout(weights)
        context = torch.matmul(weights, v).transpose(-3, -2)  # (..., L, H, d)
        out = self.out_proj(context.flatten(-2))
        if not self.batch_first:
            out = out.transpose(0, -2)
        if not need_weights:
            return out, None
        return out, weights.mean(dim=-3) if average_attn_weights else weights


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    layer.weight.requires_grad_(weight.requires_grad)
    if bias is not None:
        layer.bias.requires_grad_(bias.requires_grad)
    return layer


class TransformerEncoderLayerDecomposed(nn.Module):
    """``nn.TransformerEncoderLayer``'s reference path (the one torch runs in training), traced through.

    torch's own forward decides between a fused eval kernel and this path with checks on the input
    (``src.dim()``) that fx cannot trace; both compute the same function. The submodules are the layer's own
    (``prepare`` works on a copy), its ``self_attn`` decomposed.

    Example:
        >>> layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True).eval()
        >>> x = torch.randn(2, 5, 8)
        >>> bool(torch.allclose(TransformerEncoderLayerDecomposed(layer)(x), layer(x), atol=1e-5))
        True
    """

    lt_traced_through = True

    def __init__(self, layer: nn.TransformerEncoderLayer) -> None:
        super().__init__()
        self.self_attn = MultiheadAttentionDecomposed.from_module(layer.self_attn)
        self.linear1, self.dropout, self.linear2 = layer.linear1, layer.dropout, layer.linear2
        self.norm_first, self.norm1, self.norm2 = layer.norm_first, layer.norm1, layer.norm2
        self.dropout1, self.dropout2 = layer.dropout1, layer.dropout2
        self.activation = layer.activation  # a module or a function (F.relu, F.gelu): traced either way
        self.train(layer.training)

    def forward(
        self,
        src: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            return x + self._ff_block(self.norm2(x))
        x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal))
        return self.norm2(x + self._ff_block(x))

    def _sa_block(
        self, x: torch.Tensor, mask: torch.Tensor | None, padding: torch.Tensor | None, is_causal: bool
    ) -> torch.Tensor:
        out = self.self_attn(x, x, x, key_padding_mask=padding, need_weights=False, attn_mask=mask, is_causal=is_causal)
        return self.dropout1(out[0])

    def _ff_block(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))


def zero_padded_positions(out: torch.Tensor, padding: torch.Tensor, batch_first: bool, training: bool) -> torch.Tensor:
    """What ``nn.TransformerEncoder``'s nested-tensor inference path returns: ``out`` with the positions its
    ``src_key_padding_mask`` pads set to 0, when torch takes that path (inference without gradients, padding
    only at the end of each sequence); ``out`` unchanged otherwise."""
    padded = padding if padding.dtype == torch.bool else padding != 0
    valid = padded.logical_not()
    left_aligned = bool((valid.cummin(dim=-1).values == valid).all())
    if training or torch.is_grad_enabled() or out.dim() != 3 or not left_aligned:
        return out
    return out.masked_fill((padded if batch_first else padded.t())[..., None], 0.0)


# Kept one call while tracing: it decides at run time, as torch does.
fx.wrap("zero_padded_positions")


class TransformerEncoderDecomposed(nn.Module):
    """``nn.TransformerEncoder`` with its layers decomposed (traced through; torch's forward checks the first
    layer's ``in_proj_weight`` and traced inputs for its fast path). Same results, including the zeros its
    nested-tensor path leaves at padded positions in inference (:func:`zero_padded_positions`).

    Example:
        >>> enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2).eval()
        >>> x = torch.randn(2, 5, 8)
        >>> bool(torch.allclose(TransformerEncoderDecomposed(enc)(x), enc(x), atol=1e-5))
        True
    """

    lt_traced_through = True

    def __init__(self, encoder: nn.TransformerEncoder) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerEncoderLayerDecomposed(m) if isinstance(m, nn.TransformerEncoderLayer) else m
            for m in encoder.layers
        )
        self.norm = encoder.norm
        first = encoder.layers[0]
        self.nested = bool(getattr(encoder, "use_nested_tensor", False)) and bool(first.self_attn.batch_first)
        self.batch_first = bool(first.self_attn.batch_first)
        self.train(encoder.training)

    def forward(
        self,
        src: torch.Tensor,
        mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        is_causal: bool | None = None,
    ) -> torch.Tensor:
        out = src
        for layer in self.layers:
            out = layer(out, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=bool(is_causal))
        if self.nested and mask is None and src_key_padding_mask is not None:
            out = zero_padded_positions(out, src_key_padding_mask, self.batch_first, self.training)
        return out if self.norm is None else self.norm(out)


def sdpa_decomposition(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` in plain torch calls; :func:`leantorch.prepare` traces it instead.

    Raises:
        TraceError: ``dropout_p`` is not 0 (torch's function drops even in eval), or both ``attn_mask`` and
            ``is_causal`` are given. A traced ``is_causal`` (``x.size(-2) > 1``) is decided on the example input,
            like any branch :func:`leantorch.prepare` traces.

    Example:
        >>> q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8)
        >>> out = sdpa_decomposition(q, k, v, is_causal=True)
        >>> bool(torch.allclose(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-6))
        True
    """
    is_causal = bool(is_causal)  # while tracing: the example input's decision (leantorch.example_tracing)
    if isinstance(dropout_p, (fx.Proxy, torch.Tensor)) or dropout_p != 0:
        raise TraceError(
            f"F.scaled_dot_product_attention with dropout_p={dropout_p!r} drops in eval too: pass "
            "dropout_p=(p if self.training else 0.0), or keep the module in leaf_modules=[...]"
        )
    if is_causal and attn_mask is not None:
        raise TraceError("F.scaled_dot_product_attention: pass attn_mask or is_causal=True, not both")
    if enable_gqa:
        key, value = _repeat_heads(key, query), _repeat_heads(value, query)
    # The head dim is only known at run time while tracing: the scale is a traced number then.
    factor: Any = query.size(-1) ** -0.5 if scale is None else scale
    scores = torch.matmul(query, key.transpose(-2, -1)) * factor
    if is_causal:
        scores = attention_mask(scores, None, "causal")
    elif attn_mask is not None:
        scores = attention_mask(scores, attn_mask, "keep")
    return torch.matmul(F.softmax(scores, dim=-1), value)


def _repeat_heads(kv: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Grouped-query attention: each of ``kv``'s heads repeated for its group of query heads
    (``repeat_interleave`` on dim -3), with unsqueeze/expand/reshape only (data movement)."""
    groups = query.size(-3) // kv.size(-3)
    expanded = kv.unsqueeze(-3).expand(kv.shape[:-2] + (groups,) + kv.shape[-2:])
    return expanded.reshape(kv.shape[:-3] + (-1,) + kv.shape[-2:])


MULTIHEAD_ATTENTION = register(
    OpSpec("MultiheadAttention", (nn.MultiheadAttention,), replace=MultiheadAttentionDecomposed.from_module)
)
TRANSFORMER_ENCODER_LAYER = register(
    OpSpec("TransformerEncoderLayer", (nn.TransformerEncoderLayer,), replace=TransformerEncoderLayerDecomposed)
)
# nn.TransformerEncoder is a torch.nn leaf to fx; it is replaced so that its layers are traced into.
TRANSFORMER_ENCODER = register(
    OpSpec("TransformerEncoder", (nn.TransformerEncoder,), replace=TransformerEncoderDecomposed)
)
SDPA = register(
    OpSpec("ScaledDotProductAttention", (), decompositions=((F.scaled_dot_product_attention, sdpa_decomposition),))
)
