"""Low-rank layer decompositions: weight SVD and spatial SVD (truncated SVD of a reshaped weight).

**Weight SVD** (as in AIMET; Zhang et al., 2016): a conv with weight ``(n_out, n_in, kh, kw)`` becomes a
``1×1`` conv ``n_in → r`` followed by a ``kh×kw`` conv ``r → n_out`` that keeps the original stride,
padding, dilation and bias. The weight is read as a matrix ``M[i, (o, y, x)]`` (``n_in × n_out·kh·kw``) and
factored as ``M ≈ Aᵀ B`` with ``A = √S Uᵀ`` (the 1×1 conv) and ``B = √S Vᵀ`` (the spatial conv).
Why this form and not the mirror (``kh×kw`` conv ``n_in → r`` then 1×1 ``r → n_out``): a bias-free 1×1 map
commutes with zero padding, so the split is exact with any padding, and it matches AIMET's layout so that
ranks and ratios compare one to one. Its cost: for a strided conv the 1×1 part runs at input resolution.
A Linear ``(out, in)`` becomes Linear ``in → r`` (no bias) then Linear ``r → out``.

**Spatial SVD** (Jaderberg et al., 2014): a ``kh×kw`` conv becomes a ``kh×1`` conv ``n_in → r`` then a
``1×kw`` conv ``r → n_out``; the weight is read as ``M[(i, y), (o, x)]`` (``n_in·kh × n_out·kw``). Stride,
padding and dilation are split by axis: the vertical conv takes the height components, the horizontal conv
the width components and the bias. Exact at full rank: zero columns stay zero through the bias-free
vertical conv.

Both need ``groups == 1`` and zero padding; :func:`decomposable` says which layers qualify.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .cost import LayerCost

__all__ = ["decomposable", "full_rank", "macs_per_rank", "rank_for_ratio", "weight_svd", "spatial_svd"]


def decomposable(module: nn.Module, scheme: str) -> bool:
    """Whether ``module`` can be decomposed by ``scheme`` (``"weight_svd"`` or ``"spatial_svd"``).

    Example:
        >>> decomposable(nn.Conv2d(8, 8, 3), "spatial_svd"), decomposable(nn.Conv2d(8, 8, 1), "spatial_svd")
        (True, False)
    """
    if type(module) is nn.Linear:
        return scheme == "weight_svd" and min(module.in_features, module.out_features) > 1
    if type(module) is not nn.Conv2d or module.groups != 1 or module.padding_mode != "zeros":
        return False
    if isinstance(module.padding, str):
        return False  # "same"/"valid" strings cannot be split per axis
    if scheme == "spatial_svd":
        return module.kernel_size[0] > 1 and module.kernel_size[1] > 1
    return min(module.in_channels, module.out_channels) > 1


def full_rank(module: nn.Module, scheme: str) -> int:
    """Largest useful rank: the smaller side of the reshaped weight matrix."""
    if isinstance(module, nn.Linear):
        return min(module.in_features, module.out_features)
    n_out, n_in, kh, kw = module.weight.shape
    return min(n_in, n_out * kh * kw) if scheme == "weight_svd" else min(n_in * kh, n_out * kw)


def macs_per_rank(module: nn.Module, scheme: str, layer: LayerCost) -> int:
    """MACs per sample of the decomposed pair, per unit of rank (the pair's MACs are linear in the rank)."""
    if isinstance(module, nn.Linear):
        rows = math.prod(layer.output_shape[:-1]) if len(layer.output_shape) > 1 else 1
        return rows * (module.in_features + module.out_features)
    n_out, n_in, kh, kw = module.weight.shape
    _, h_in, w_in = layer.input_shape
    _, h_out, w_out = layer.output_shape
    if scheme == "weight_svd":
        return n_in * h_in * w_in + n_out * kh * kw * h_out * w_out
    return n_in * kh * h_out * w_in + n_out * kw * h_out * w_out


def rank_for_ratio(module: nn.Module, scheme: str, layer: LayerCost, ratio: float, multiple: int = 1) -> int:
    """Rank whose decomposed MACs are at most ``ratio`` of the layer's, rounded up to ``multiple``,
    within ``[1, full rank]``.

    Example:
        >>> conv = nn.Conv2d(16, 16, 3, padding=1)
        >>> layer = LayerCost("c", "Conv2d", 16 * 16 * 9 * 64, 0, (16, 8, 8), (16, 8, 8))
        >>> rank_for_ratio(conv, "spatial_svd", layer, 0.5)
        12
    """
    rank = max(1, math.floor(ratio * layer.macs / macs_per_rank(module, scheme, layer)))
    if multiple > 1:
        rank = math.ceil(rank / multiple) * multiple
    return min(rank, full_rank(module, scheme))


def _factor(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``matrix ≈ left @ right`` with ``left = U_r √S_r`` and ``right = √S_r V_rᵀ`` (float64 SVD)."""
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def weight_svd(module: nn.Module, rank: int) -> nn.Sequential:
    """Decompose a Conv2d or Linear into two layers of rank ``rank`` (see the module docstring).

    Example:
        >>> conv = nn.Conv2d(4, 6, 3, padding=1).double()
        >>> pair = weight_svd(conv, rank=4)
        >>> x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
        >>> torch.allclose(pair(x), conv(x))
        True
    """
    w = module.weight.detach()
    dtype, device = w.dtype, w.device
    has_bias = module.bias is not None
    if isinstance(module, nn.Linear):
        left, right = _factor(w, rank)  # (out, r), (r, in)
        first = nn.Linear(module.in_features, rank, bias=False)
        second = nn.Linear(rank, module.out_features, bias=has_bias)
        first.weight.data = right.to(dtype)
        second.weight.data = left.to(dtype)
    else:
        n_out, n_in, kh, kw = w.shape
        matrix = w.permute(1, 0, 2, 3).reshape(n_in, n_out * kh * kw)
        left, right = _factor(matrix, rank)  # (n_in, r), (r, n_out·kh·kw)
        first = nn.Conv2d(n_in, rank, 1, bias=False)
        second = nn.Conv2d(
            rank, n_out, module.kernel_size, module.stride, module.padding, module.dilation, bias=has_bias
        )
        first.weight.data = left.t().reshape(rank, n_in, 1, 1).to(dtype)
        second.weight.data = right.reshape(rank, n_out, kh, kw).permute(1, 0, 2, 3).contiguous().to(dtype)
    if has_bias:
        second.bias.data = module.bias.detach().clone()
    return nn.Sequential(first, second).to(device)


def spatial_svd(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    """Decompose a ``kh×kw`` Conv2d into ``kh×1`` then ``1×kw`` convs of rank ``rank``.

    Example:
        >>> conv = nn.Conv2d(3, 5, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2)).double()
        >>> pair = spatial_svd(conv, rank=min(3 * 3, 5 * 5))
        >>> x = torch.randn(2, 3, 9, 11, dtype=torch.float64)
        >>> torch.allclose(pair(x), conv(x))
        True
    """
    w = conv.weight.detach()
    n_out, n_in, kh, kw = w.shape
    matrix = w.permute(1, 2, 0, 3).reshape(n_in * kh, n_out * kw)  # rows (i, y), columns (o, x)
    left, right = _factor(matrix, rank)  # (n_in·kh, r), (r, n_out·kw)
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
    vertical = nn.Conv2d(n_in, rank, (kh, 1), (sh, 1), (ph, 0), (dh, 1), bias=False)
    horizontal = nn.Conv2d(rank, n_out, (1, kw), (1, sw), (0, pw), (1, dw), bias=conv.bias is not None)
    vertical.weight.data = left.reshape(n_in, kh, rank).permute(2, 0, 1).reshape(rank, n_in, kh, 1).to(w.dtype)
    horizontal.weight.data = right.reshape(rank, n_out, kw).permute(1, 0, 2).reshape(n_out, rank, 1, kw).to(w.dtype)
    if conv.bias is not None:
        horizontal.bias.data = conv.bias.detach().clone()
    return nn.Sequential(vertical, horizontal).to(w.device)
