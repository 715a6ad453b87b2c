"""`leantorch demo`: quantize the pretrained EfficientNet-Lite0 and report agreement with FP32."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from .data import batches, sample_images
from .evaluation import Agreement, markdown_table, model_outputs
from .models import efficientnet_lite0
from .ptq.bn_fold import fold_batch_norms
from .quant.sim import QuantSim

log = logging.getLogger(__name__)


def run_demo(out: str | Path = "out", calibration: int = 128, evaluation: int = 256, batch_size: int = 32,
             progress: bool = True) -> list[dict[str, Any]]:
    """Quantize EfficientNet-Lite0 (W8A8) on sample-image crops, print a table, export to ``out``.

    Calibration and evaluation crops use disjoint seeds (0 and 1). Returns the table rows.

    Example:
        >>> rows = run_demo("out", calibration=32, evaluation=64)  # doctest: +SKIP
    """
    model = efficientnet_lite0()
    calib = batches(sample_images(calibration, seed=0), batch_size)
    evals = batches(sample_images(evaluation, seed=1), batch_size)
    reference = model_outputs(model, evals, progress, desc="FP32")
    rows = [_row("FP32", Agreement.of(reference, reference), 0.0)]
    folded, pairs = fold_batch_norms(model, calib[0][:1])
    log.info("folded %d batch norms", len(pairs))
    best = None
    for label, per_channel in (("W8A8 per-tensor, BN folded", False), ("W8A8 per-channel, BN folded", True)):
        start = time.perf_counter()
        sim = QuantSim(folded, calib[0][:1], param_bw=8, act_bw=8, scheme="tf_enhanced", per_channel=per_channel)
        sim.compute_encodings(calib, progress=progress)
        seconds = time.perf_counter() - start
        rows.append(_row(label, Agreement.of(reference, model_outputs(sim.model, evals, progress, desc=label)),
                         seconds))
        best = sim
    assert best is not None
    files = best.export(out, "efficientnet_lite0_w8a8")
    session = ort.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
    ort_out = torch.from_numpy(np.concatenate([session.run(None, {"input": b.numpy()})[0] for b in evals]))
    rows.append(_row("W8A8 per-channel, ONNX Runtime (exported QDQ)", Agreement.of(reference, ort_out), 0.0))
    print(f"EfficientNet-Lite0, {calibration} calibration / {evaluation} evaluation crops of the "
          "scikit-image photographs (disjoint seeds); agreement with the FP32 model:\n")
    print(markdown_table(rows))
    print(f"\nexported: {', '.join(str(p) for p in files.values())}")
    return rows


def _row(label: str, agreement: Agreement, seconds: float) -> dict[str, Any]:
    return {"model": label, "top-1 agreement": agreement.top1, "KL divergence": agreement.kl,
            "output SQNR (dB)": agreement.sqnr_db, "calibration time (s)": seconds}
