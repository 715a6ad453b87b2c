"""Empirical bias correction time on EfficientNet-Lite0, against the cost of the passes it cannot avoid.

Bias correction needs (1) a calibrated sim (one calibration pass), (2) the float model's per-channel output
means (one float pass) and (3) each layer's output in the partially corrected sim. (3) used to re-run the
sim up to every layer (O(depth²)); it now advances the data once through the sim (``ptq/frontier.py``).
The table prints the whole correction and, for scale, one calibration pass and one sim forward pass on the
same data. Run: ``.venv/bin/python benchmarks/bias_correction_speed.py [--samples 128]``.
"""

from __future__ import annotations

import argparse
import time

import torch

import leantorch as lt
from leantorch.data import batches, sample_images
from leantorch.evaluation import markdown_table
from leantorch.models import efficientnet_lite0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = efficientnet_lite0()
    data = batches(sample_images(args.samples, seed=0), args.batch_size)
    x = data[0][:1]
    equalized = lt.equalize(model, x)

    start = time.perf_counter()
    sim = lt.QuantSim(equalized, x)
    sim.compute_encodings(data, progress=False)
    calibration = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        for batch in data:
            sim.model(batch)
    forward = time.perf_counter() - start
    start = time.perf_counter()
    lt.bias_correction(equalized, x, data, method="empirical", num_samples=args.samples, progress=False)
    correction = time.perf_counter() - start

    print(
        f"EfficientNet-Lite0, {args.samples} samples, W8A8 per-tensor tf_enhanced, {torch.get_num_threads()} threads\n"
    )
    print(
        markdown_table(
            [
                {
                    "step": "QuantSim + calibration (tf_enhanced)",
                    "seconds": calibration,
                    "× one sim pass": calibration / forward,
                },
                {"step": "one sim forward pass", "seconds": forward, "× one sim pass": 1.0},
                {
                    "step": "empirical bias correction (all of it)",
                    "seconds": correction,
                    "× one sim pass": correction / forward,
                },
            ]
        )
    )


if __name__ == "__main__":
    main()
