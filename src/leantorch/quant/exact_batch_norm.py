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

__all__ = ["uses_exact_batch_norm", "exact_batch_norm"]

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
    weight = cast("torch.Tensor | None", bn.weight) if weight is None else weight
    bias = cast("torch.Tensor | None", bn.bias) if bias is None else bias
    mean = cast(torch.Tensor, bn.running_mean).double()
    variance = cast(torch.Tensor, bn.running_var).double()
    a = 1.0 / torch.sqrt(variance + float(cast(float, bn.eps)))
    if weight is not None:
        a = a * weight.double()
    c = -mean * a
    if bias is not None:
        c = c + bias.double()
    shape = (1, -1) + (1,) * (x.dim() - 2)
    scale, shift = a.to(x.dtype).reshape(shape), c.to(x.dtype).reshape(shape)
    if torch.onnx.is_in_onnx_export():
        # Rebuilt from Python numbers, they are constants of the trace: the file holds the two float32
        # vectors (not the float64 arithmetic over the BN's buffers, which the exporter only partly folds).
        scale, shift = (torch.tensor(t.tolist(), dtype=x.dtype) for t in (scale, shift))
    return x * scale + shift
