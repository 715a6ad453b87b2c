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
from .float_formats import is_scaled, onnx_float_type

__all__ = ["container", "qdq_nodes", "needs_opset_21"]


def needs_opset_21(quantizer: Any) -> bool:
    """Whether a quantizer's Q/DQ exist only from opset 21 on: 16-bit, blockwise or float8 (19+) ones.

    Example:
        >>> from leantorch.quant.quantizer import Quantizer
        >>> needs_opset_21(Quantizer(bitwidth=8)), needs_opset_21(Quantizer(bitwidth=16))
        (False, True)
    """
    return quantizer.bitwidth > 8 or quantizer.is_blockwise or quantizer.float_format is not None


def container(enc: Encoding, unsigned: bool = False) -> tuple[int, type[np.integer[Any]]]:
    """The ONNX and numpy integer types that hold ``enc``'s grid (signed for a signed grid unless ``unsigned``):
    int4/uint4 for blockwise weights of up to 4 bits (the export is at opset 21 then), else 8 or 16 bits."""
    signed = enc.is_signed and not unsigned
    if enc.is_blockwise and enc.bitwidth <= 4:
        return (TensorProto.INT4, np.int8) if signed else (TensorProto.UINT4, np.uint8)
    if enc.bitwidth <= 8:
        return (TensorProto.INT8, np.int8) if signed else (TensorProto.UINT8, np.uint8)
    return (TensorProto.INT16, np.int16) if signed else (TensorProto.UINT16, np.uint16)


def qdq_nodes(
    enc: Encoding,
    x: str,
    y: str,
    stem: str,
    on_grid: bool = False,
    unsigned: bool = False,
    shape: tuple[int, ...] | None = None,
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes and initializers computing ``y = DQ(Q([Clip](x)))`` for encoding ``enc``.

    ``on_grid``: ``x`` is already quantized (exported weights), so no clamp is needed.
    ``unsigned``: use an unsigned container even for a signed grid (same values, shifted zero point).
    ``shape``: the shape of ``x``, needed for a blockwise encoding (opset 21's blocked QuantizeLinear wants
    its scale at the rank of ``x``: the block scales, repeated over a conv's kernel positions).
    """
    if enc.float_format is not None:
        return _float_nodes(enc, x, y, stem)
    onnx_type, np_type = container(enc, unsigned)
    scale = enc.scale.detach().cpu().numpy().astype(np.float32)
    # Signed containers store q - 2**(bw-1); unsigned ones q with zero_point = -offset.
    shift = 2 ** (enc.bitwidth - 1) if enc.is_signed and not unsigned else 0
    zero_point = (-enc.offset.detach().cpu().numpy() - shift).astype(np_type)
    attrs: dict[str, Any] = {"axis": enc.axis} if enc.axis is not None else {}
    if enc.is_blockwise:
        if shape is None or not on_grid:
            raise ExportError(f"{x}: blockwise encodings are for weights (initializers of known shape)")
        scale, zero_point = (_at_rank(v, enc, shape) for v in (scale, zero_point))
        attrs = {"axis": enc.block_axis, "block_size": enc.block_size}
    inits = [
        numpy_helper.from_array(scale, f"{stem}_scale"),
        helper.make_tensor(f"{stem}_zero_point", onnx_type, zero_point.shape, zero_point.flatten().tolist())
        if onnx_type in (TensorProto.INT4, TensorProto.UINT4)
        else numpy_helper.from_array(zero_point, f"{stem}_zero_point"),
    ]
    nodes = []
    source = x
    container_bits = 4 if onnx_type in (TensorProto.INT4, TensorProto.UINT4) else 8 if enc.bitwidth <= 8 else 16
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


def _at_rank(values: np.ndarray, enc: Encoding, shape: tuple[int, ...]) -> np.ndarray:
    """Block values ``(C, n_blocks)`` laid out at the rank of the weight: channels on ``enc.axis``, blocks on
    ``enc.block_axis``, repeated along every other axis (ONNX blocked quantization's scale shape)."""
    assert enc.axis is not None and enc.block_axis is not None
    axis, block_axis = enc.axis % len(shape), enc.block_axis % len(shape)
    placed = values if axis < block_axis else values.T
    view = [1] * len(shape)
    view[axis], view[block_axis] = values.shape[0], values.shape[1]
    full = list(shape)
    full[block_axis] = values.shape[1]
    return np.ascontiguousarray(np.broadcast_to(placed.reshape(view), full))


def _float_nodes(enc: Encoding, x: str, y: str, stem: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """A float format: ``Cast → Cast`` for fp16/bf16; float8 QuantizeLinear/DequantizeLinear (saturating, opset 19+)
    with the encoding's scales for fp8."""
    assert enc.float_format is not None
    onnx_type = onnx_float_type(enc.float_format)
    if not is_scaled(enc.float_format):
        return [
            helper.make_node("Cast", [x], [f"{stem}_cast"], to=onnx_type, name=f"{stem}_Cast"),
            helper.make_node("Cast", [f"{stem}_cast"], [y], to=TensorProto.FLOAT, name=f"{stem}_CastBack"),
        ], []
    scale = enc.scale.detach().cpu().numpy().astype(np.float32)
    zero = helper.make_tensor(f"{stem}_zero_point", onnx_type, scale.shape, [0.0] * scale.size)
    attrs: dict[str, Any] = {"axis": enc.axis} if enc.axis is not None else {}
    inputs = [f"{stem}_scale", f"{stem}_zero_point"]
    nodes = [
        helper.make_node("QuantizeLinear", [x, *inputs], [f"{stem}_quantized"], name=f"{stem}_QuantizeLinear", **attrs),
        helper.make_node(
            "DequantizeLinear", [f"{stem}_quantized", *inputs], [y], name=f"{stem}_DequantizeLinear", **attrs
        ),
    ]
    return nodes, [numpy_helper.from_array(scale, f"{stem}_scale"), zero]
