"""An inference BatchNorm that ONNX Runtime reproduces bit for bit: ``y = x * a + c``.

torch's eval BatchNorm kernel and ONNX Runtime's ``BatchNormalization`` both compute an affine map per
channel, but with different float32 formulas (and, in torch, fused multiply-adds): about 30% of the outputs
differ in the last bit. Where such a value sits next to a rounding boundary of the next quantizer, the sim
and the exported model land one step apart, and deep mobile nets amplify one step into tens at the output.

Here the per-channel ``a = γ / sqrt(σ² + ε)`` and ``c = β - μ·a`` are formed in float64 (each operation
correctly rounded, so every machine and the ONNX exporter's constant folding get the same float32 values)
and applied as one float32 multiply and one float32 add: IEEE operations that torch and ONNX Runtime round
identically. The QDQ export therefore holds ``Mul`` and ``Add`` where torch would write
``BatchNormalization``; graph optimizers fuse them into the preceding conv just the same.

Example:
    >>> bn = nn.BatchNorm2d(3).eval()
    >>> x = torch.randn(2, 3, 4, 4)
    >>> torch.allclose(exact_batch_norm(x, bn), bn(x), atol=1e-6)
    True
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

__all__ = ["uses_exact_batch_norm", "exact_batch_norm", "batch_norm_affine"]

_PLAIN_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def uses_exact_batch_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a plain BatchNorm (exact type: subclasses may do more in ``forward``) that normalises
    with its running statistics, which :func:`exact_batch_norm` then computes.

    Example:
        >>> uses_exact_batch_norm(nn.BatchNorm2d(3).eval()), uses_exact_batch_norm(nn.BatchNorm2d(3).train())
        (True, False)
    """
    return (
        (type(module) in _PLAIN_BATCH_NORMS or getattr(type(module), "lt_plain_batch_norm", False))
        and not module.training
        and getattr(module, "running_mean", None) is not None
        and getattr(module, "running_var", None) is not None
    )


def batch_norm_affine(
    bn: nn.Module, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, c)`` in float64 with ``bn(x) = a·x + c`` per channel in eval mode (what BN folding folds and
    :func:`exact_batch_norm` applies); ``weight``/``bias`` replace ``bn``'s own.

    Example:
        >>> bn = nn.BatchNorm1d(2, eps=0.0).eval()
        >>> [t.tolist() for t in batch_norm_affine(bn, bias=torch.tensor([1.0, 2.0]))]
        [[1.0, 1.0], [1.0, 2.0]]
    """
    weight = cast("torch.Tensor | None", bn.weight) if weight is None else weight
    bias = cast("torch.Tensor | None", bn.bias) if bias is None else bias
    mean = cast(torch.Tensor, bn.running_mean).double()
    std = torch.sqrt(cast(torch.Tensor, bn.running_var).double() + float(cast(float, bn.eps)))
    a = weight.double() / std if weight is not None else 1.0 / std
    c = bias.double() - mean * a if bias is not None else -mean * a
    return a, c


def exact_batch_norm(
    x: torch.Tensor, bn: nn.Module, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``bn(x)`` in eval mode as ``x * a + c`` (module docstring); ``weight``/``bias`` replace ``bn``'s own
    (quantized versions of them).

    Example:
        >>> bn = nn.BatchNorm1d(4).eval()
        >>> exact_batch_norm(torch.ones(2, 4), bn).shape
        torch.Size([2, 4])
    """
    a, c = batch_norm_affine(bn, weight, bias)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    scale, shift = a.to(x.dtype).reshape(shape), c.to(x.dtype).reshape(shape)
    if torch.onnx.is_in_onnx_export():
        # Rebuilt from Python numbers, they are constants of the trace: the file holds the two float32
        # vectors (not the float64 arithmetic over the BN's buffers, which the exporter only partly folds).
        scale, shift = (torch.tensor(t.tolist(), dtype=x.dtype) for t in (scale, shift))
    return x * scale + shift
