"""The ONNX marker of a quantizer: fake quantization in torch, a ``leantorch::Quantize`` node in the export."""

from __future__ import annotations

import torch

from .blocks import from_block_rows, to_block_rows
from .float_formats import float_fake_cast
from .primitives import fake_quantize

__all__ = ["OnnxQuantizeMarker"]


class OnnxQuantizeMarker(torch.autograd.Function):
    """Fake quantization in torch; a ``leantorch::Quantize(index)`` node in a TorchScript ONNX export.

    :mod:`.export` replaces every marker by [Clip →] QuantizeLinear → DequantizeLinear built from quantizer
    ``index``'s encoding (torch's own export of fake-quant ops only knows 8-bit ranges).
    """

    @staticmethod
    def forward(ctx, x, scale, offset, bitwidth, axis, index, kind=(None, None, None)):  # type: ignore[no-untyped-def]
        block_size, block_axis, float_format = kind
        if float_format is not None:
            return float_fake_cast(x, scale, axis, float_format)
        if block_size is None:
            return fake_quantize(x, scale, offset, bitwidth, axis)
        rows = to_block_rows(x, axis, block_axis, block_size)
        out = fake_quantize(rows, scale.reshape(-1), offset.reshape(-1), bitwidth, 0)
        return from_block_rows(out, x.shape, axis, block_axis, block_size)

    @staticmethod
    def symbolic(g, x, scale, offset, bitwidth, axis, index, kind=(None, None, None)):  # type: ignore[no-untyped-def]
        out = g.op("leantorch::Quantize", x, index_i=index)
        out.setType(x.type())  # same shape and dtype as the input: lets the exporter infer shapes
        return out
