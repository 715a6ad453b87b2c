"""Modules that stand in for functional ops (``x + y``, ``torch.cat``, ``F.interpolate`` ...).

:func:`leantorch.prepare` replaces such calls in the traced graph by these modules so that each call site
can carry its own quantizers, exactly like a ``nn.Conv2d``.

Example:
    >>> Add()(torch.ones(2), 2.0).tolist()
    [3.0, 3.0]
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Add", "Sub", "Mul", "Div", "MatMul", "Cat", "Interpolate", "Mean", "Pad", "BoundedReLU"]


class Add(nn.Module):
    """``a + b`` (residual connections)."""

    def forward(self, a: Any, b: Any) -> torch.Tensor:
        return a + b


class Sub(nn.Module):
    """``a - b``."""

    def forward(self, a: Any, b: Any) -> torch.Tensor:
        return a - b


class Mul(nn.Module):
    """``a * b`` (e.g. squeeze-and-excitation gating)."""

    def forward(self, a: Any, b: Any) -> torch.Tensor:
        return a * b


class Div(nn.Module):
    """``a / b``."""

    def forward(self, a: Any, b: Any) -> torch.Tensor:
        return a / b


class MatMul(nn.Module):
    """``a @ b`` (attention scores and context)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b)


class Cat(nn.Module):
    """``torch.cat(tensors, dim)``; the tensors are passed as separate arguments."""

    def __init__(self, dim: int = 0) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        # torch.cat skips empty 1-D tensors among higher-rank ones (a key/value cache's placeholder before the
        # first step); ONNX Concat refuses them, so they are left out here, as torch leaves them out.
        kept = [t for t in tensors if not (t.dim() == 1 and t.shape[0] == 0)]
        return torch.cat(kept or list(tensors), dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Interpolate(nn.Module):
    """``F.interpolate`` with fixed arguments."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.kwargs = kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.kwargs.items())


class Mean(nn.Module):
    """``x.mean(dim, keepdim)``."""

    def __init__(self, dim: Any = None, keepdim: bool = False) -> None:
        super().__init__()
        self.dim, self.keepdim = dim, keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dim is None:
            return x.mean()
        return x.mean(self.dim, keepdim=self.keepdim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, keepdim={self.keepdim}"


class Pad(nn.Module):
    """``F.pad`` with fixed arguments (values come from the input grid, plus the constant)."""

    def __init__(self, pad: Any, mode: str = "constant", value: float | None = None) -> None:
        super().__init__()
        self.pad, self.mode, self.value = tuple(pad), mode, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pad, mode=self.mode, value=self.value)

    def extra_repr(self) -> str:
        return f"pad={self.pad}, mode={self.mode}"


class BoundedReLU(nn.Module):
    """``min(max(x, 0), upper[c])`` with a bound per channel (along dim 1, or the last dim for 2-D input).

    A ReLU6 whose input channels were divided by ``s`` becomes ``BoundedReLU(6 / s)`` — the same function,
    which lets cross-layer equalization scale through ReLU6 exactly.
    """

    upper: torch.Tensor  # a buffer (registered in __init__)

    def __init__(self, upper: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("upper", upper.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1] * x.dim()
        shape[1 if x.dim() > 2 else -1] = -1
        return torch.minimum(torch.relu(x), self.upper.reshape(shape).to(x.dtype))

    def extra_repr(self) -> str:
        return f"channels={self.upper.numel()}"
