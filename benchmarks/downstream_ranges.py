"""Activation ranges chosen by their downstream error (issue 15 item 2) on the ImageNet-pretrained EfficientNet-Lite0.

Each configuration is calibrated on 256 crops of the built-in photographs (seed 0) with scheme ``minmax``,
``tf_enhanced`` and ``downstream`` (minmax statistics, then every activation range re-chosen against the next
weighted layers' output error on the first two batches); top-1 agreement with FP32 and output SQNR on
held-out crops (seed 1), and the calibration time.

Run: ``.venv/bin/python benchmarks/downstream_ranges.py [--evaluation 1000]``.
"""

from __future__ import annotations

import argparse
import time

import torch

import leantorch as lt
from leantorch.data import batches, sample_images
from leantorch.evaluation import Agreement, markdown_table, model_outputs
from leantorch.models import efficientnet_lite0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calibration", type=int, default=256)
    parser.add_argument("--evaluation", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--only", nargs="*", default=None, help="configurations to run (substrings of their labels)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = efficientnet_lite0()
    calib = batches(sample_images(args.calibration, seed=0), args.batch_size)
    evals = batches(sample_images(args.evaluation, seed=1), args.batch_size)
    example = calib[0][:1]
    reference = model_outputs(model, evals, desc="FP32")
    folded, _ = lt.fold_batch_norms(model, example)
    equalized = lt.equalize(model, example)
    configs = [
        ("W8A8 per-tensor, CLE", equalized, False),
        ("W8A8 per-tensor, BN folded", folded, False),
        ("W8A8 per-channel, BN folded", folded, True),
    ]
    rows = []
    for label, candidate, per_channel in configs:
        if args.only and not any(part in label for part in args.only):
            continue
        for scheme in ("minmax", "tf_enhanced", "downstream"):
            sim = lt.QuantSim(candidate, example, param_bw=8, act_bw=8, scheme=scheme, per_channel=per_channel)
            start = time.perf_counter()
            sim.compute_encodings(calib, progress=False)
            seconds = time.perf_counter() - start
            score = Agreement.of(reference, model_outputs(sim.model, evals, desc=f"{label} {scheme}"))
            rows.append(
                {
                    "configuration": label,
                    "scheme": scheme,
                    "top-1 agreement": round(score.top1, 3),
                    "SQNR (dB)": round(score.sqnr_db, 2),
                    "calibration (s)": round(seconds, 1),
                }
            )
            print(markdown_table(rows[-1:]), flush=True)
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
