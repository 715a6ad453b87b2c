"""`leantorch demo`: quantize the pretrained EfficientNet-Lite0 and report agreement with FP32."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from .analysis import AnalysisReport, analyze
from .data import batches, channels_last, sample_images
from .evaluation import Agreement, markdown_table, model_outputs, sqnr_score
from .models import efficientnet_lite0
from .options import check_count
from .ptq.bias_correction import bias_correction
from .ptq.bn_fold import fold_batch_norms
from .ptq.cle import equalize
from .quant.sim import QuantSim
from .staging import staged_outputs

__all__ = ["EXPORT_NAME", "run_demo", "analysis_report"]

log = logging.getLogger(__name__)

#: File name prefix of the demo's export.
EXPORT_NAME = "efficientnet_lite0_w8a8"


def run_demo(
    out: str | Path = "out", calibration: int = 128, evaluation: int = 256, batch_size: int = 32, progress: bool = True
) -> list[dict[str, Any]]:
    """Quantize EfficientNet-Lite0 (W8A8) on sample-image crops, print a table, export to ``out``.

    Calibration and evaluation crops use disjoint seeds (0 and 1). Returns the table rows. The files
    (``efficientnet_lite0_w8a8.{onnx,encodings,pth}``, ``report.html``) appear in ``out`` only when the
    whole demo succeeded; an ``out`` that cannot be written is reported before any work.

    Example:
        >>> rows = run_demo("out", calibration=32, evaluation=64)  # doctest: +SKIP
    """
    for name, count in {"calibration": calibration, "evaluation": evaluation, "batch_size": batch_size}.items():
        check_count(name, count)
    with staged_outputs() as staging:
        staged = staging.directory(out)
        rows = _run(staged, calibration, evaluation, batch_size, progress)
    final = Path(out)
    print(f"\nexported: {', '.join(str(final / f'{EXPORT_NAME}.{ext}') for ext in ('onnx', 'encodings', 'pth'))}")
    print(f"analysis of the naive W8A8 per-tensor model: {final / 'report.html'}")
    return rows


def _run(out: Path, calibration: int, evaluation: int, batch_size: int, progress: bool) -> list[dict[str, Any]]:
    """The demo, writing into ``out`` (a staging directory)."""
    model, calib_images = channels_last(efficientnet_lite0(), sample_images(calibration, seed=0))
    calib = batches(calib_images, batch_size)
    evals = batches(channels_last(model, sample_images(evaluation, seed=1))[1], batch_size)
    reference = model_outputs(model, evals, progress, desc="FP32")
    rows = [_row("FP32", Agreement.of(reference, reference), 0.0)]
    example = calib[0][:1]
    start = time.perf_counter()
    folded, pairs = fold_batch_norms(model, example)
    fold_seconds = time.perf_counter() - start
    log.info("folded %d batch norms", len(pairs))
    start = time.perf_counter()
    # Analytical bias correction needs no data and takes about a second; the empirical one is in
    # benchmarks/ptq_efficientnet.py.
    corrected = bias_correction(equalize(model, example), example, method="analytical", progress=progress)
    cle_seconds = time.perf_counter() - start
    variants = (
        ("W8A8 per-tensor minmax, BN folded (naive)", folded, fold_seconds, {"scheme": "minmax"}),
        ("W8A8 per-tensor tf_enhanced + CLE + bias correction", corrected, cle_seconds, {}),
        ("W8A8 per-channel tf_enhanced, BN folded", folded, fold_seconds, {"per_channel": True}),
    )
    sims = []
    for label, candidate, seconds_before, options in variants:
        start = time.perf_counter()
        sim = QuantSim(candidate, example, param_bw=8, act_bw=8, **options)
        sim.compute_encodings(calib, progress=progress)
        seconds = seconds_before + time.perf_counter() - start
        rows.append(
            _row(label, Agreement.of(reference, model_outputs(sim.model, evals, progress, desc=label)), seconds)
        )
        sims.append(sim)
    naive, best = sims[0], sims[-1]
    # uint8 weights (same grid): ONNX Runtime's default u8s8 kernels saturate on x86 CPUs without VNNI.
    files = best.export(out, EXPORT_NAME, unsigned_weights=True)
    session = ort.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
    ort_out = torch.from_numpy(np.concatenate([session.run(None, {"input": b.contiguous().numpy()})[0] for b in evals]))
    rows.append(
        _row("W8A8 per-channel, ONNX Runtime (exported QDQ, uint8 weights)", Agreement.of(reference, ort_out), 0.0)
    )
    print(
        f"EfficientNet-Lite0, {calibration} calibration / {evaluation} evaluation crops of the "
        "scikit-image photographs (disjoint seeds); agreement with the FP32 model:\n"
    )
    print(markdown_table(rows))
    report = analysis_report(model, naive, calib, probe=evals[0][:8], progress=progress)
    report.add_equalization(folded, equalize(model, example))
    report.to_html(out / "report.html")
    return rows


def analysis_report(
    model: torch.nn.Module, sim: QuantSim, calib: list[torch.Tensor], probe: torch.Tensor, progress: bool = True
) -> AnalysisReport:
    """``lt.analyze`` of ``sim`` scored by output SQNR against FP32 on ``probe``, sensitivity over the
    conv/linear layers (what the demo can afford on a CPU)."""
    weighted = [
        name for name, layer in sim.layers().items() if layer.op_type in ("Conv", "Linear") and layer.repeat_of is None
    ]
    return analyze(sim, sqnr_score(model, [probe]), calib[:1], layers=weighted, progress=progress)


def _row(label: str, agreement: Agreement, seconds: float) -> dict[str, Any]:
    return {
        "model": label,
        "top-1 agreement": agreement.top1,
        "KL divergence": agreement.kl,
        "output SQNR (dB)": agreement.sqnr_db,
        "technique + calibration time (s)": seconds,
    }
