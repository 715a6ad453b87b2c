"""The activation part of :func:`leantorch.analyze`: per-layer output SQNR of the quantized model against FP32, and
the min/max and histogram of what each activation quantizer sees (with its encoding range), in three passes
over the calibration batches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..batches import run_batch
from ..metrics import sqnr_db_from_sums
from ..quant.quantizer import Quantizer
from ..quant.sim import QuantSim
from .report import ActivationStats

__all__ = ["activation_analysis", "enable_quantizers"]


def enable_quantizers(configured: dict[Quantizer, bool], keep: Callable[[Quantizer], bool]) -> None:
    """Enable the quantizers the config enabled (``configured``) for which ``keep`` holds; disable the others."""
    for q, enabled in configured.items():
        q.enabled = enabled and keep(q)


def activation_analysis(
    sim: QuantSim, configured: dict[Quantizer, bool], data: list[tuple], bins: int, progress: bool
) -> tuple[dict[str, float], dict[str, ActivationStats]]:
    """Per-layer output SQNR (quantized vs FP32) and histograms of what each activation quantizer sees.

    Three passes: FP32 and quantized in step (SQNR, activation min/max), then histograms over the
    union of the observed and the encoding ranges.
    """
    wrappers = sim.layers()
    watched = {n: q for n, q in sim.activation_quantizers().items() if configured[q] and q.is_active}
    noise = {n: 0.0 for n in wrappers}
    signal = {n: 0.0 for n in wrappers}
    lo: dict[str, torch.Tensor] = {}
    hi: dict[str, torch.Tensor] = {}
    bar = tqdm(total=2 * len(data), desc="per-layer SQNR and ranges", unit="pass", disable=not progress, leave=False)
    for index, batch in enumerate(data):
        inputs = _on_device(sim, batch)
        enable_quantizers(configured, lambda q: False)
        with _capture_outputs(wrappers) as reference:
            _run(sim, inputs, index)
        enable_quantizers(configured, lambda q: True)
        with _capture_outputs(wrappers) as quantized, _observe_inputs(watched, _min_max(lo, hi)):
            _run(sim, inputs, index)
        for name, ref in reference.items():
            out = quantized.get(name)
            if out is not None and out.shape == ref.shape:
                # float32 squares with torch's cascade summation (relative error ~1e-7, plenty for dB): a
                # float64 copy of every activation made this loop cost more than the passes themselves.
                ref32 = ref.float()
                signal[name] += float(ref32.square().sum())
                noise[name] += float((ref32 - out.float()).square().sum())
        bar.update(2)
    bar.close()
    counts = {n: torch.zeros(bins, dtype=torch.float64) for n in lo}
    edges = {}
    for n, q in watched.items():
        if n in lo:
            enc = q.encoding
            lower = min(float(lo[n]), float(enc.min.min()))
            upper = max(float(hi[n]), float(enc.max.max()))
            edges[n] = (lower, upper if upper > lower else lower + 1e-6)
    enable_quantizers(configured, lambda q: True)
    with _observe_inputs(watched, _histogram(counts, edges, bins)):
        for index, batch in enumerate(
            tqdm(data, desc="activation histograms", unit="batch", disable=not progress, leave=False)
        ):
            _run(sim, _on_device(sim, batch), index)
    sqnr = {n: sqnr_db_from_sums(signal[n], noise[n]) for n in wrappers if signal[n] > 0}
    stats = {}
    for n in counts:
        enc = watched[n].encoding
        stats[n] = ActivationStats(
            name=n,
            min=float(lo[n]),
            max=float(hi[n]),
            encoding_min=float(enc.min.min()),
            encoding_max=float(enc.max.max()),
            bitwidth=enc.bitwidth,
            counts=counts[n].tolist(),
            edges=torch.linspace(*edges[n], bins + 1).tolist(),
        )
    return sqnr, stats


def _on_device(sim: QuantSim, inputs: tuple) -> tuple:
    return tuple(x.to(sim.device) for x in inputs)


def _run(sim: QuantSim, inputs: tuple, index: int) -> None:
    was_training = sim.model.training
    sim.model.eval()
    try:
        with torch.no_grad():
            run_batch(sim.model, inputs, index, example_shapes=[tuple(x.shape) for x in sim.example_input])
    finally:
        sim.model.train(was_training)


@contextlib.contextmanager
def _capture_outputs(wrappers: dict[str, nn.Module]) -> Iterator[dict[str, torch.Tensor]]:
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in wrappers.items():

        def hook(_m: nn.Module, _i: tuple, out: Any, name: str = name) -> None:
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                captured[name] = out.detach().cpu()

        handles.append(module.register_forward_hook(hook))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def _observe_inputs(quantizers: dict[str, Quantizer], observe: Callable[[str, torch.Tensor], None]) -> Iterator[None]:
    """Call ``observe(name, x)`` with the tensor entering each quantizer."""
    handles = [
        q.register_forward_pre_hook(lambda _m, args, name=name: observe(name, args[0].detach()))
        for name, q in quantizers.items()
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _min_max(lo: dict[str, torch.Tensor], hi: dict[str, torch.Tensor]) -> Callable[[str, torch.Tensor], None]:
    def observe(name: str, x: torch.Tensor) -> None:
        mn, mx = torch.aminmax(x.float())
        lo[name] = torch.minimum(lo[name], mn.cpu()) if name in lo else mn.cpu()
        hi[name] = torch.maximum(hi[name], mx.cpu()) if name in hi else mx.cpu()

    return observe


def _histogram(
    counts: dict[str, torch.Tensor], edges: dict[str, tuple[float, float]], bins: int
) -> Callable[[str, torch.Tensor], None]:
    def observe(name: str, x: torch.Tensor) -> None:
        if name in edges:
            lower, upper = edges[name]
            counts[name] += torch.histc(x.float(), bins, lower, upper).double().cpu()

    return observe
