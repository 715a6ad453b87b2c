"""ONNX Runtime latency of models side by side: a compressed (or quantized) model against its original.

MACs predict speed only roughly: a runtime fuses ops, memory traffic matters as much as arithmetic, and a
rank or a channel count off a multiple of the vector width wastes lanes. So the compression flows report the
latency ONNX Runtime measures on the exported files next to the MAC ratio.

Method: one ``InferenceSession`` per model (graph optimizations on, ``threads`` intra-op threads), a warm-up
run per batch size, then ``repeats`` rounds in which every model runs once, in turn, on the same random input.
The median per model is reported: alternating the models makes a load change on the machine hit all of them
alike, so the *ratios* stay meaningful on a busy machine even when the absolute times do not.

Example:
    >>> from torch import nn
    >>> rows = compare_latency({"wide": nn.Linear(64, 64), "narrow": nn.Linear(64, 8)}, torch.zeros(1, 64),
    ...                        batch_sizes=(1,), repeats=3)
    >>> [(r["model"], r["batch"]) for r in rows]
    [('wide', 1), ('narrow', 1)]
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InvalidOptionError
from ..options import check_count

__all__ = ["compare_latency", "export_float_onnx", "interleaved_medians"]


def export_float_onnx(model: nn.Module, example_input: torch.Tensor, path: str | Path) -> Path:
    """``model`` as a float ONNX file (opset 17) with a dynamic batch axis: input ``input``, output ``output``.

    Example:
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as d:
        ...     export_float_onnx(nn.Linear(4, 2), torch.zeros(1, 4), pathlib.Path(d) / "m.onnx").suffix
        '.onnx'
    """
    path = Path(path)
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer warnings
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example_input,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )
    return path


def interleaved_medians(fns: Mapping[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, timed in alternation (one call each per round) after one warm-up call.

    Example:
        >>> sorted(interleaved_medians({"a": lambda: None, "b": lambda: sum(range(100))}, repeats=3))
        ['a', 'b']
    """
    for fn in fns.values():
        fn()  # warm-up: allocations, kernel selection, weight pre-packing
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def compare_latency(
    models: Mapping[str, nn.Module | str | Path],
    example_input: torch.Tensor,
    batch_sizes: Sequence[int] = (1, 32),
    repeats: int = 20,
    threads: int | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """ONNX Runtime latency of each model at each batch size, and its ratio to the first model's.

    Args:
        models: name → a float ``nn.Module`` (exported to ONNX here) or the path of an ONNX file with a dynamic
            batch axis (e.g. the QDQ model of ``sim.export``). The first entry is the baseline of the ratios.
        example_input: one input batch; only its shape past the batch axis is used (the timed input is random).
        batch_sizes: batch sizes to time; repeats: timed rounds per batch size (the median is reported).
        threads: ONNX Runtime intra-op threads (default: ``torch.get_num_threads()``).

    Returns:
        One row per (model, batch size), batch sizes outer: ``model``, ``batch``, ``ms`` (median milliseconds per
        batch), ``ms per sample`` and ``latency ratio`` (``ms`` over the baseline's at the same batch size).

    Raises:
        InvalidOptionError: no models, a bad batch size / repeat / thread count, or a path that does not exist.
    """
    import onnxruntime as ort  # a core dependency, imported here so that `import leantorch` stays light

    if not models:
        raise InvalidOptionError("compare_latency needs at least one model (the first one is the baseline)")
    batch_sizes = [check_count("batch_sizes[]", b) for b in batch_sizes]
    repeats = check_count("repeats", repeats)
    threads = check_count("threads", threads if threads is not None else torch.get_num_threads())
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    gen = torch.Generator().manual_seed(seed)
    with tempfile.TemporaryDirectory() as scratch:
        sessions = {}
        for name, model in models.items():
            path = _onnx_file(name, model, example_input, Path(scratch))
            sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        rows = []
        for batch in batch_sizes:
            x = torch.randn((batch, *example_input.shape[1:]), generator=gen).float().numpy()
            runs = {name: _runner(session, x) for name, session in sessions.items()}
            medians = interleaved_medians(runs, repeats)
            base = medians[next(iter(models))]
            rows += [
                {
                    "model": name,
                    "batch": batch,
                    "ms": 1e3 * seconds,
                    "ms per sample": 1e3 * seconds / batch,
                    "latency ratio": seconds / base,
                }
                for name, seconds in medians.items()
            ]
    return rows


def _onnx_file(name: str, model: nn.Module | str | Path, example_input: torch.Tensor, scratch: Path) -> Path:
    if isinstance(model, nn.Module):
        was_training = model.training
        model.eval()
        try:
            example = example_input[:1].to(next((p.device for p in model.parameters()), torch.device("cpu")))
            return export_float_onnx(model, example, scratch / f"model{len(list(scratch.iterdir()))}.onnx")
        finally:
            model.train(was_training)
    path = Path(model)
    if not path.is_file():
        raise InvalidOptionError(
            f"compare_latency: model {name!r} is {str(model)!r}, which is not an ONNX file; pass "
            "an nn.Module or the path of an exported .onnx"
        )
    return path


def _runner(session: Any, x: Any) -> Callable[[], Any]:
    feed = {session.get_inputs()[0].name: x}
    return lambda: session.run(None, feed)
