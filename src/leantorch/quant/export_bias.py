"""Int32 biases in the QDQ export: the float bias of a Conv/Gemm whose input and weight are quantized is stored as
int32 with ``scale = s_input * s_weight`` and a DequantizeLinear, the form ONNX Runtime's integer kernels (and
QNN/TensorRT) expect. The rounding error is below half of that scale, far below one output step.

Example:
    >>> onnx_safe_name("/layer1/conv.bias")
    'layer1_conv_bias'
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["quantize_biases", "onnx_safe_name"]


def onnx_safe_name(name: str) -> str:
    """``name`` as a stem for new node and initializer names (no ``/``, ``.`` or ``:``)."""
    return name.strip("/").replace("/", "_").replace(".", "_").replace(":", "_")


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def quantize_biases(proto: onnx.ModelProto) -> None:
    """Store float biases of Conv/Gemm with quantized input and weight as int32 + DequantizeLinear."""
    graph = proto.graph
    initializers = {init.name: init for init in graph.initializer}
    producers = _producers(graph)
    for node in list(graph.node):
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.input[2] not in initializers:
            continue
        dq_x, dq_w = producers.get(node.input[0]), producers.get(node.input[1])
        if not (dq_x is not None and dq_w is not None and dq_x.op_type == dq_w.op_type == "DequantizeLinear"):
            continue
        if node.op_type == "Gemm" and any(a.name == "transB" and a.i == 0 for a in node.attribute):
            continue
        if any(a.name == "block_size" for a in dq_w.attribute):
            continue  # blockwise weights have no single scale per output channel: the bias stays float
        s_x = _initializer_value(initializers, dq_x.input[1])
        s_w = _initializer_value(initializers, dq_w.input[1])
        if s_x is None or s_w is None or s_x.size != 1:
            continue
        bias_name = node.input[2]
        bias = numpy_helper.to_array(initializers[bias_name]).astype(np.float64)
        scale = (s_x.astype(np.float64).reshape(()) * s_w.astype(np.float64).reshape(-1)) * np.ones_like(bias)
        q = np.clip(np.round(bias / scale), -(2**31), 2**31 - 1).astype(np.int32)
        stem, call = onnx_safe_name(bias_name), 0
        while f"{stem}_int32" in initializers:  # a layer called at several places: one int32 bias per call
            call += 1
            stem = f"{onnx_safe_name(bias_name)}_{call}"
        initializers[f"{stem}_int32"] = numpy_helper.from_array(q, f"{stem}_int32")
        graph.initializer.extend(
            [
                numpy_helper.from_array(q, f"{stem}_int32"),
                numpy_helper.from_array(scale.astype(np.float32), f"{stem}_bias_scale"),
                numpy_helper.from_array(np.zeros_like(q), f"{stem}_bias_zero_point"),
            ]
        )
        dq = helper.make_node(
            "DequantizeLinear",
            [f"{stem}_int32", f"{stem}_bias_scale", f"{stem}_bias_zero_point"],
            [f"{stem}_dequantized"],
            name=f"{stem}_DequantizeLinear",
            axis=0,
        )
        position = list(graph.node).index(node)
        graph.node.insert(position, dq)
        node.input[2] = f"{stem}_dequantized"


def _initializer_value(initializers: dict[str, onnx.TensorProto], name: str) -> np.ndarray | None:
    init = initializers.get(name)
    return None if init is None else numpy_helper.to_array(init)
