"""What counting a strided sample of each large activation costs in accuracy, and saves in time.

Histogram range searches (tf_enhanced, mse, percentile) count at most ``values_per_sample`` values of each
sample of an activation (``leantorch.quant.histogram_sample``); the data's min/max still come from every value.
This script calibrates EfficientNet-Lite0 (BN folded, W8A8, per-tensor and per-channel weights) with several
caps, including None (every value), and reports calibration time, top-1 agreement with FP32 on held-out crops,
output SQNR, and how far each activation encoding moved from the every-value one (in steps of that encoding).

Run: ``.venv/bin/python benchmarks/histogram_sampling.py [--caps none 65536 16384 4096]``.
"""

from __future__ import annotations

import argparse
import time

import torch

import leantorch as lt
from leantorch.data import batches, sample_images
from leantorch.evaluation import Agreement, markdown_table, model_outputs
from leantorch.models import efficientnet_lite0
from leantorch.quant.estimator_base import HistogramEstimator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calibration", type=int, default=256)
    parser.add_argument("--evaluation", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--caps", nargs="+", default=["none", "65536", "16384", "4096"])
    parser.add_argument("--schemes", nargs="+", default=["tf_enhanced", "mse", "percentile"])
    args = parser.parse_args()
    torch.manual_seed(0)
    calib = list(batches(sample_images(args.calibration, seed=0), args.batch_size))
    evals = list(batches(sample_images(args.evaluation, seed=1), args.batch_size))
    example = calib[0][:1]
    folded, _ = lt.fold_batch_norms(efficientnet_lite0(), example)
    reference = model_outputs(folded, evals)
    default_cap = HistogramEstimator.values_per_sample
    rows = []
    for scheme in args.schemes:
        for per_channel in (False, True):
            exact: dict[str, torch.Tensor] = {}
            for cap_text in args.caps:
                cap = None if cap_text == "none" else int(cap_text)
                HistogramEstimator.values_per_sample = cap
                sim = lt.QuantSim(folded, example, param_bw=8, act_bw=8, scheme=scheme, per_channel=per_channel)
                start = time.perf_counter()
                sim.compute_encodings(calib, progress=False)
                seconds = time.perf_counter() - start
                steps = _encoding_moves(sim, exact)
                score = Agreement.of(reference, model_outputs(sim.model, evals))
                rows.append(
                    {
                        "scheme": scheme,
                        "weights": "per-channel" if per_channel else "per-tensor",
                        "values per sample": cap_text,
                        "calibration (s)": round(seconds, 2),
                        "top-1 agreement": round(score.top1, 4),
                        "SQNR (dB)": round(score.sqnr_db, 2),
                        "max move (steps)": round(steps[0], 2),
                        "median move (steps)": round(steps[1], 3),
                    }
                )
                print(rows[-1], flush=True)
    HistogramEstimator.values_per_sample = default_cap
    print(
        f"\nEfficientNet-Lite0 (BN folded, W8A8), {args.calibration} calibration images in batches of "
        f"{args.batch_size}, {args.evaluation} held-out crops; 'move': how far each activation encoding's min and "
        f"max are from the every-value ('none') calibration's, in steps of the every-value encoding\n"
    )
    print(markdown_table(rows))


def _encoding_moves(sim: lt.QuantSim, exact: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Largest and median shift of each activation quantizer's (min, max) from the first calibration's, in steps
    of the first; the first call records its encodings and returns zeros."""
    found = {}
    for name, q in sim.activation_quantizers().items():
        enc = q.encoding
        if enc is not None:
            found[name] = torch.stack([enc.min.double().reshape(()), enc.max.double().reshape(()), enc.scale.double()])
    if not exact:
        exact.update(found)
        return 0.0, 0.0
    moves = torch.stack([((found[n][:2] - e[:2]).abs() / e[2]).max() for n, e in exact.items()])
    return float(moves.max()), float(moves.median())


if __name__ == "__main__":
    main()
