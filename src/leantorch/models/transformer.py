"""A pre-norm transformer encoder block written out with explicit matmuls (as in ViT/BERT code)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TransformerEncoderBlock", "TransformerClassifier"]


class TransformerEncoderBlock(nn.Module):
    """LayerNorm → multi-head self-attention (q·kᵀ matmul, softmax, ·v matmul) → residual add,
    LayerNorm → Linear → GELU → Linear → residual add.

    Example:
        >>> TransformerEncoderBlock(dim=32, heads=4)(torch.randn(2, 5, 32)).shape
        torch.Size([2, 5, 32])
    """

    def __init__(self, dim: int = 64, heads: int = 4, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        attn = F.softmax(scores, dim=-1)
        context = torch.matmul(attn, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(context)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TransformerClassifier(nn.Module):
    """Token embedding of a sequence of feature vectors, encoder blocks, mean pooling, linear head.

    Example:
        >>> TransformerClassifier(in_features=8, num_classes=3, dim=32)(torch.randn(2, 6, 8)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self, in_features: int = 16, num_classes: int = 10, dim: int = 64, depth: int = 2, heads: int = 4
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(in_features, dim)
        self.blocks = nn.Sequential(*[TransformerEncoderBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.embed(x))
        return self.head(self.norm(x).mean(dim=1))
