"""The ONNX nodes of one quantizer in the QDQ export: ``[Clip →] QuantizeLinear → DequantizeLinear`` for an
encoding, with its container type (int8/uint8 up to 8 bits, int16/uint16 up to 16), zero point and axis.

Example:
    >>> import torch
    >>> from leantorch.quant.encoding import compute_encoding
    >>> enc = compute_encoding(torch.tensor(-1.0), torch.tensor(1.0), 4, symmetric=False)
    >>> nodes, inits = qdq_nodes(enc, "x", "y", stem="x_q0")
    >>> [n.op_type for n in nodes]
    ['Clip', 'QuantizeLinear', 'DequantizeLinear']
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import ExportError
from .encoding import Encoding

__all__ = ["container", "qdq_nodes"]


def container(enc: Encoding, unsigned: bool = False) -> tuple[int, type[np.integer[Any]]]:
    """The ONNX and numpy integer types that hold ``enc``'s grid (signed for a signed grid unless ``unsigned``)."""
    signed = enc.is_signed and not unsigned
    if enc.bitwidth <= 8:
        return (TensorProto.INT8, np.int8) if signed else (TensorProto.UINT8, np.uint8)
    return (TensorProto.INT16, np.int16) if signed else (TensorProto.UINT16, np.uint16)


def qdq_nodes(
    enc: Encoding, x: str, y: str, stem: str, on_grid: bool = False, unsigned: bool = False
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes and initializers computing ``y = DQ(Q([Clip](x)))`` for encoding ``enc``.

    ``on_grid``: ``x`` is already quantized (exported weights), so no clamp is needed.
    ``unsigned``: use an unsigned container even for a signed grid (same values, shifted zero point).
    """
    _, np_type = container(enc, unsigned)
    scale = enc.scale.detach().cpu().numpy().astype(np.float32)
    # Signed containers store q - 2**(bw-1); unsigned ones q with zero_point = -offset.
    shift = 2 ** (enc.bitwidth - 1) if enc.is_signed and not unsigned else 0
    zero_point = (-enc.offset.detach().cpu().numpy() - shift).astype(np_type)
    inits = [numpy_helper.from_array(scale, f"{stem}_scale"), numpy_helper.from_array(zero_point, f"{stem}_zero_point")]
    attrs: dict[str, Any] = {"axis": enc.axis} if enc.axis is not None else {}
    nodes = []
    source = x
    container_bits = 8 if enc.bitwidth <= 8 else 16
    if enc.bitwidth < container_bits and not on_grid:
        lo = enc.min.cpu().numpy().astype(np.float32)
        hi = enc.max.cpu().numpy().astype(np.float32)
        if enc.axis is None:
            inits += [numpy_helper.from_array(lo, f"{stem}_min"), numpy_helper.from_array(hi, f"{stem}_max")]
            nodes.append(
                helper.make_node("Clip", [x, f"{stem}_min", f"{stem}_max"], [f"{stem}_clipped"], name=f"{stem}_Clip")
            )
        else:
            raise ExportError(
                "per-channel activation encodings below 8/16 bits cannot be expressed with "
                "ONNX Clip; use per-tensor activations or a bitwidth of 8 or 16"
            )
        source = f"{stem}_clipped"
    nodes.append(
        helper.make_node(
            "QuantizeLinear",
            [source, f"{stem}_scale", f"{stem}_zero_point"],
            [f"{stem}_quantized"],
            name=f"{stem}_QuantizeLinear",
            **attrs,
        )
    )
    nodes.append(
        helper.make_node(
            "DequantizeLinear",
            [f"{stem}_quantized", f"{stem}_scale", f"{stem}_zero_point"],
            [y],
            name=f"{stem}_DequantizeLinear",
            **attrs,
        )
    )
    return nodes, inits
