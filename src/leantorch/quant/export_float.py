"""The ``onnx_float`` export format: a float ONNX model plus the encodings file, as AIMET exports and as QNN/SNPE
converters take them (``--quantization_overrides``): the runtime's converter inserts the quantization itself.

It is the QDQ export with every quantization pair taken out again (:func:`strip_qdq`): each
``[Clip →] QuantizeLinear → DequantizeLinear`` becomes an ``Identity`` (so every tensor name the encodings file
uses stays in the graph), and an int32 bias with its ``DequantizeLinear`` becomes the float bias it stands
for. Weights stay on their quantization grids (re-quantizing them with the file's encodings is exact), so
running the float file equals ``sim.model`` with activation quantization off.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["strip_qdq"]


def strip_qdq(proto: onnx.ModelProto) -> None:
    """Replace every QuantizeLinear/DequantizeLinear pair of ``proto`` (with the Clip before it) by an Identity,
    and every dequantized int32 initializer by its float value; in place.

    Example:
        >>> q = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"])
        >>> dq = helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["y"])
        >>> graph = helper.make_graph([q, dq], "g", [helper.make_tensor_value_info("x", 1, [1])],
        ...     [helper.make_tensor_value_info("y", 1, [1])],
        ...     [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.uint8(0), "z")])
        >>> model = helper.make_model(graph)
        >>> strip_qdq(model)
        >>> [(n.op_type, list(n.input), list(n.output)) for n in model.graph.node], len(model.graph.initializer)
        ([('Identity', ['x'], ['y'])], 0)
    """
    graph = proto.graph
    initializers = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    removed: set[int] = set()
    replacements: dict[int, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        source = producers.get(node.input[0])
        if source is not None and source.op_type == "QuantizeLinear" and consumers.get(source.output[0]) == 1:
            x = source.input[0]
            clip = producers.get(x)
            # The Clip of a sub-8-bit quantizer belongs to the pair (its only user is the QuantizeLinear).
            if clip is not None and clip.op_type == "Clip" and consumers.get(clip.output[0]) == 1:
                if clip.name.endswith("_Clip"):
                    removed.add(id(clip))
                    x = clip.input[0]
            removed.add(id(source))
            replacements[id(node)] = [helper.make_node("Identity", [x], [node.output[0]], name=f"{node.name}_Identity")]
        elif node.input[0] in initializers and node.input[1] in initializers:
            # A constant (an int32 bias): its float value as an initializer of the same output name.
            value = _dequantized(node, initializers)
            graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
            replacements[id(node)] = []
    kept: list[onnx.NodeProto] = []
    for node in graph.node:
        if id(node) in removed:
            continue
        kept.extend(replacements.get(id(node), [node]))
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    still = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(still)


def _dequantized(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> np.ndarray:
    """``(q - zero_point) * scale`` of a DequantizeLinear on initializers (per tensor or along ``axis``)."""
    q = numpy_helper.to_array(initializers[node.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float64)
    zero = (
        numpy_helper.to_array(initializers[node.input[2]]).astype(np.float64)
        if len(node.input) > 2 and node.input[2]
        else np.zeros_like(scale)
    )
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    if scale.ndim == 1 and q.ndim > 0:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((q - zero) * scale).astype(np.float32)
