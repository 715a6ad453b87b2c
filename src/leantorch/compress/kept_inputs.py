"""The module channel pruning's candidates run in place of a layer: the pruned conv on the kept input channels."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["KeptInputs"]


class KeptInputs(nn.Module):
    """``conv(x[:, kept])``: a pruned conv acting on the full-width input of the unpruned model.

    Example:
        >>> conv = nn.Conv2d(4, 2, 1)
        >>> x = torch.randn(1, 4, 3, 3)
        >>> small = nn.Conv2d(2, 2, 1); small.weight.data = conv.weight.data[:, [0, 2]]; small.bias = conv.bias
        >>> layer = KeptInputs(torch.tensor([0, 2]), small)
        >>> torch.allclose(layer(x), conv(x * torch.tensor([1., 0., 1., 0.])[:, None, None]), atol=1e-6)
        True
    """

    def __init__(self, kept: torch.Tensor, conv: nn.Conv2d) -> None:
        super().__init__()
        self.register_buffer("kept", kept)
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.index_select(1, self.kept.to(x.device)))
