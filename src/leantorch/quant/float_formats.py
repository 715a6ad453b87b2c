"""Float formats in the simulation: fp16, bf16 and scaled fp8 (e4m3, e5m2) quantizers.

A quantizer with a ``float_format`` rounds its tensor to that format instead of to an integer grid:

* ``float16`` / ``bfloat16``: a plain cast (``x.to(fp16).to(fp32)``), no calibration; exported as a
  ``Cast → Cast`` pair.
* ``float8_e4m3fn`` / ``float8_e5m2``: scaled, ``s · fp8(clamp(x / s, ±fmax))`` with ``s = max|x| / fmax``
  from calibration (``fmax`` 448 and 57344), per tensor or per channel; exported as ONNX QuantizeLinear /
  DequantizeLinear with a float8 zero point (opset 19+), which saturates as the clamp does.

The :class:`~leantorch.quant.encoding.Encoding` of such a quantizer carries ``float_format``, ``scale`` (1 for the
plain casts), a zero ``offset`` and the format's width as ``bitwidth``. ONNX Runtime computes both forms
bit for bit as torch does.

Example:
    >>> x = torch.tensor([1.0, 1.0 + 2**-11, 3000.0])
    >>> float_fake_cast(x, torch.tensor(1.0), None, "float16").tolist()
    [1.0, 1.0, 3000.0]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from onnx import TensorProto

from ..errors import InvalidOptionError, UnknownLayerError
from ..options import as_names, unknown_layers_message
from .encoding import Encoding

__all__ = [
    "FLOAT_FORMATS",
    "check_float_format",
    "float_encoding",
    "float_fake_cast",
    "float_bitwidth",
    "onnx_float_type",
    "is_scaled",
    "set_float_format",
]

#: name → (torch dtype, bits, largest finite value of a scaled format or None for the plain casts, ONNX type)
FLOAT_FORMATS: dict[str, tuple[torch.dtype, int, float | None, int]] = {
    "float16": (torch.float16, 16, None, TensorProto.FLOAT16),
    "bfloat16": (torch.bfloat16, 16, None, TensorProto.BFLOAT16),
    "float8_e4m3fn": (torch.float8_e4m3fn, 8, 448.0, TensorProto.FLOAT8E4M3FN),
    "float8_e5m2": (torch.float8_e5m2, 8, 57344.0, TensorProto.FLOAT8E5M2),
}
_ALIASES = {
    "fp16": "float16",
    "bf16": "bfloat16",
    "fp8": "float8_e4m3fn",
    "e4m3": "float8_e4m3fn",
    "e5m2": "float8_e5m2",
}


def check_float_format(name: object) -> str:
    """The canonical name of a float format (``fp16``, ``bf16``, ``fp8``/``e4m3``, ``e5m2`` accepted), else
    :class:`InvalidOptionError` listing them.

    Example:
        >>> check_float_format("fp16"), check_float_format("float8_e5m2")
        ('float16', 'float8_e5m2')
    """
    if isinstance(name, str):
        canonical = _ALIASES.get(name.lower(), name.lower())
        if canonical in FLOAT_FORMATS:
            return canonical
    raise InvalidOptionError(
        f"float format {name!r} is not supported: use one of {sorted(FLOAT_FORMATS)} (or fp16, bf16, fp8, e4m3, e5m2)"
    )


def float_bitwidth(name: str) -> int:
    """Bits of a float format.

    Example:
        >>> float_bitwidth("bfloat16"), float_bitwidth("float8_e4m3fn")
        (16, 8)
    """
    return FLOAT_FORMATS[name][1]


def is_scaled(name: str) -> bool:
    """Whether the format is scaled (fp8: needs calibration) rather than a plain cast (fp16, bf16).

    Example:
        >>> is_scaled("float16"), is_scaled("float8_e5m2")
        (False, True)
    """
    return FLOAT_FORMATS[name][2] is not None


def onnx_float_type(name: str) -> int:
    """The ONNX ``TensorProto`` element type of a float format.

    Example:
        >>> onnx_float_type("float16") == TensorProto.FLOAT16
        True
    """
    return FLOAT_FORMATS[name][3]


def float_encoding(lo: torch.Tensor, hi: torch.Tensor, name: str, axis: int | None = None) -> Encoding:
    """The encoding of a float-format quantizer for an observed range (per tensor or per channel): scale
    ``max(|lo|, |hi|) / fmax`` for fp8 (at least the smallest normal float32), 1 for the plain casts.

    Example:
        >>> float(float_encoding(torch.tensor(-2.0), torch.tensor(896.0), "float8_e4m3fn").scale)
        2.0
    """
    _, bits, fmax, _ = FLOAT_FORMATS[name]
    if fmax is None:
        scale = torch.ones_like(lo, dtype=torch.float32)
    else:
        amax = torch.maximum(lo.abs(), hi.abs()).double()
        scale = (amax / fmax).clamp_min(torch.finfo(torch.float32).tiny).to(torch.float32)
    return Encoding(bits, True, scale, torch.zeros_like(scale, dtype=torch.int64), axis, float_format=name)


def float_fake_cast(x: torch.Tensor, scale: torch.Tensor, axis: int | None, name: str) -> torch.Tensor:
    """``x`` rounded to float format ``name`` (scaled by ``scale`` along ``axis`` for fp8, saturating at
    ±fmax as ONNX QuantizeLinear does), back in ``x``'s dtype. The straight-through gradient is 1.

    Example:
        >>> float_fake_cast(torch.tensor([0.3, 1000.0]), torch.tensor(1.0), None, "float8_e4m3fn").tolist()
        [0.3125, 448.0]
    """
    dtype, _, fmax, _ = FLOAT_FORMATS[name]
    if fmax is None:
        rounded = x.to(dtype).to(x.dtype)
    else:
        s = scale.to(device=x.device, dtype=torch.float32)
        if axis is not None:
            shape = [1] * x.dim()
            shape[axis] = -1
            s = s.reshape(shape)
        rounded = ((x.float() / s).clamp(-fmax, fmax).to(dtype).float() * s).to(x.dtype)
    # straight-through: the value of the cast, the gradient of the identity
    return x + (rounded - x).detach() if x.requires_grad else rounded


def set_float_format(
    sim: Any,
    float_format: str | None,
    layers: str | Iterable[str] | None = None,
    weights: bool = True,
    activations: bool = True,
) -> list[str]:
    """Simulate ``layers`` of a QuantSim (all when None) in a float format: their enabled weight and/or activation
    quantizers round to ``float16``, ``bfloat16``, ``float8_e4m3fn`` or ``float8_e5m2`` (None: back to 8-bit
    integers). Returns the quantizers changed. fp8 and integer grids need :meth:`QuantSim.compute_encodings`
    afterwards; fp16/bf16 need no calibration. The export writes Cast pairs (fp16/bf16) or float8 Q/DQ.

    Raises:
        InvalidOptionError: an unknown format; UnknownLayerError: a layer name the sim does not have.

    Example:
        >>> import leantorch as lt
        >>> from torch import nn
        >>> sim = lt.QuantSim(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), torch.randn(1, 4))
        >>> set_float_format(sim, "fp16", layers="0")  # its output is quantized after the ReLU (a supergroup)
        ['0.param_quantizers.weight']
    """
    name = None if float_format is None else check_float_format(float_format)
    all_layers = sim.layers()
    chosen = list(all_layers) if layers is None else as_names("layers", layers)
    unknown = [n for n in chosen if n not in all_layers]
    if unknown:
        raise UnknownLayerError(unknown_layers_message(unknown, list(all_layers)))
    changed = []
    for layer in chosen:
        wrapper = all_layers[layer]
        for qname, q in sorted(wrapper.named_modules()):
            if not (hasattr(q, "set_float_format") and q.enabled and qname):
                continue
            if (q.is_param and weights) or (not q.is_param and activations):
                q.set_float_format(name)
                changed.append(f"{layer}.{qname}")
    return changed
