"""Activation ranges chosen by their downstream error (issue 15 item 2) on the ImageNet-pretrained EfficientNet-Lite0.

For each configuration the sim is calibrated as usual (256 crops of the built-in photographs, seed 0), then
``lt.downstream_ranges`` re-chooses every activation range against the next layers' output error on
``--batches`` batches; top-1 agreement with FP32 and output SQNR on 1000 held-out crops (seed 1), before and
after, with the time the search took.

Run: ``.venv/bin/python benchmarks/downstream_ranges.py [--batches 2] [--evaluation 1000]``.
"""

from __future__ import annotations

import argparse
import time

import torch

import leantorch as lt
from leantorch.data import batches, sample_images
from leantorch.evaluation import Agreement, markdown_table, model_outputs
from leantorch.models import efficientnet_lite0
from leantorch.ptq.downstream_ranges import downstream_ranges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calibration", type=int, default=256)
    parser.add_argument("--evaluation", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=2, help="calibration batches the search measures errors on")
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
        ("W8A8 per-tensor tf_enhanced, BN folded", folded, dict(scheme="tf_enhanced", per_channel=False)),
        ("W8A8 per-tensor tf_enhanced, CLE", equalized, dict(scheme="tf_enhanced", per_channel=False)),
        ("W8A8 per-tensor minmax, CLE", equalized, dict(scheme="minmax", per_channel=False)),
        ("W8A8 per-channel tf_enhanced, BN folded", folded, dict(scheme="tf_enhanced", per_channel=True)),
    ]
    rows = []
    for label, candidate, kwargs in configs:
        sim = lt.QuantSim(candidate, example, param_bw=8, act_bw=8, **kwargs)
        sim.compute_encodings(calib, progress=False)
        before = Agreement.of(reference, model_outputs(sim.model, evals, desc=label))
        start = time.perf_counter()
        changes = downstream_ranges(sim, calib, num_batches=args.batches)
        seconds = time.perf_counter() - start
        after = Agreement.of(reference, model_outputs(sim.model, evals, desc=label))
        moved = sum(1 for c in changes if c.fraction != 1.0)
        rows.append(
            {
                "configuration": label,
                "top-1 before": round(before.top1, 3),
                "top-1 after": round(after.top1, 3),
                "SQNR before (dB)": round(before.sqnr_db, 2),
                "SQNR after (dB)": round(after.sqnr_db, 2),
                "ranges changed": f"{moved}/{len(changes)}",
                "search (s)": round(seconds, 1),
            }
        )
        print(markdown_table(rows[-1:]), flush=True)
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
