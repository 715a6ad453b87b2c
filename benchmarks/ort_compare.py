"""ONNX Runtime vs ``sim.model``, quantizer by quantizer (issue 10, item 6).

End to end, the exported QDQ model and the simulation can drift apart even when every operation is exported
right: torch and ONNX Runtime sum a Conv/MatMul in different orders, so about one value in 10^5 lands on the
other side of a rounding boundary of the next quantizer (one step), and deep nets can amplify that step. To
tell an export fault from that drift, :func:`compare_per_quantizer` feeds every quantizer of the sim the
values ONNX Runtime computed for its inputs ("same inputs"): each quantizer's deviation is then its own
(the operations between the previous quantizers and it), and an exact export keeps it within one step.

Used by ``benchmarks/coverage.py``; on its own: ``.venv/bin/python benchmarks/ort_compare.py`` checks a small
conv net.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from leantorch.quant.quantizer import Quantizer

__all__ = ["compare_per_quantizer", "run_onnx"]

_DEQUANTIZE_NAME = re.compile(r"_q(\d+)_DequantizeLinear$")


def run_onnx(path: str | Path, inputs: tuple[torch.Tensor, ...], fused: bool = False, extra: list[str] | None = None):
    """Outputs of the ONNX file at ``path`` on ``inputs`` (graph optimizations off unless ``fused``), as a
    dict by tensor name; ``extra`` intermediate tensors are made outputs too."""
    proto = onnx.load(str(path))
    present = {o.name for o in proto.graph.output}
    for name in extra or []:
        if name not in present:
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if fused else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), inputs)}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def _steps(diff: np.ndarray, scale: torch.Tensor, axis: int | None) -> np.ndarray:
    step = scale.detach().cpu().double().numpy()
    if step.size > 1 and axis is not None and diff.ndim > axis:
        shape = [1] * diff.ndim
        shape[axis] = -1
        step = step.reshape(shape)
    else:
        step = np.float64(step.max())
    return diff / step


def compare_per_quantizer(sim: Any, onnx_path: str | Path, inputs: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    """Each activation quantizer's deviation from ONNX Runtime, in its own steps, on the same inputs.

    Returns ``max_steps`` (the largest over quantizers), ``worst`` (its name), ``flipped`` (values one or more
    steps apart, over all quantizers), ``values`` (compared), ``quantizers`` (compared) and ``skipped``
    (quantizers called more than once per forward, e.g. inside an RNN's time loop, or whose ONNX tensor is
    missing or shaped otherwise).
    """
    proto = onnx.load(str(onnx_path))
    tensor_of: dict[int, list[str]] = {}
    for node in proto.graph.node:
        match = _DEQUANTIZE_NAME.search(node.name) if node.op_type == "DequantizeLinear" else None
        if match:
            tensor_of.setdefault(int(match.group(1)), []).append(node.output[0])
    reference = run_onnx(onnx_path, inputs, extra=[t for ts in tensor_of.values() for t in ts])
    active = [(n, q) for n, q in sim.model.named_modules() if isinstance(q, Quantizer) and q.is_active]
    calls: dict[int, int] = {}
    result: dict[str, Any] = {"max_steps": 0.0, "worst": None, "flipped": 0, "values": 0, "quantizers": 0}
    skipped: list[str] = []

    def hook(index: int, name: str, q: Quantizer, out: torch.Tensor) -> torch.Tensor | None:
        calls[index] = calls.get(index, 0) + 1
        tensors = tensor_of.get(index, [])
        if len(tensors) != 1 or calls[index] > 1:
            skipped.append(name)
            return None
        theirs = reference[tensors[0]]
        if theirs.shape != tuple(out.shape):
            skipped.append(name)
            return None
        steps = np.abs(_steps(out.detach().cpu().double().numpy() - theirs, q.scale, q.axis))
        worst = float(steps.max()) if steps.size else 0.0
        result["values"] += steps.size
        result["quantizers"] += 1
        result["flipped"] += int((steps > 0.5).sum())
        if worst > result["max_steps"]:
            result["max_steps"], result["worst"] = worst, name
        # the next layers start from ONNX Runtime's values, so each quantizer is judged on its own operations
        return torch.from_numpy(theirs).to(out.device, out.dtype)

    handles = [
        q.register_forward_hook(lambda m, a, out, i=i, n=n, q=q: hook(i, n, q, out))
        for i, (n, q) in enumerate(active)
        if not q.is_param
    ]
    try:
        with torch.no_grad():
            sim.model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    result["max_steps"] = round(result["max_steps"], 3)
    result["skipped"] = sorted(set(skipped))
    return result


if __name__ == "__main__":
    import tempfile

    from torch import nn

    import leantorch as lt

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    data = [torch.randn(8, 3, 16, 16) for _ in range(2)]
    sim = lt.QuantSim(model, data[0][:1], per_channel=True)
    sim.compute_encodings(data, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        files = sim.export(tmp, "model")
        print(compare_per_quantizer(sim, files["onnx"], (torch.randn(4, 3, 16, 16),)))
