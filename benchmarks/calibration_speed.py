"""Calibration speed: ``sim.compute_encodings`` with tf_enhanced vs minmax on EfficientNet-Lite0.

Issue 16's target: tf_enhanced calibration within 1.3x of minmax (AIMET: 6.3x). Both sims are identical
(BN folded, W8A8, per-channel weights) except the activation scheme, and are timed in alternation so that
drift on a shared machine hits both alike; the table shows medians over ``--repeats`` runs after a warm-up.

Histogram searches count a strided sample of at most 16,384 values per sample of each activation
(``leantorch.quant.histogram_sample``); ``--values-per-sample none`` counts every value, as before.

Run: ``.venv/bin/python benchmarks/calibration_speed.py [--device cuda] [--repeats 5] [--values-per-sample none]``.
leantorch is imported by name, so ``PYTHONPATH=<other tree>/src`` measures another checkout with the same script.
"""

from __future__ import annotations

import argparse
import os

import torch

# The sibling script's timing (run as `python benchmarks/...`, the script's folder is on sys.path).
from quantsim import paired_medians

import leantorch as lt
from leantorch.data import batches, sample_images
from leantorch.models import efficientnet_lite0
from leantorch.quant.estimator_base import HistogramEstimator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--values-per-sample", default=str(HistogramEstimator.values_per_sample))
    args = parser.parse_args()
    HistogramEstimator.values_per_sample = None if args.values_per_sample == "none" else int(args.values_per_sample)
    torch.manual_seed(0)
    calib = [b.to(args.device) for b in batches(sample_images(args.samples, seed=0), args.batch_size)]
    example = calib[0][:1]
    folded, _ = lt.fold_batch_norms(efficientnet_lite0().to(args.device), example)
    sims = {
        scheme: lt.QuantSim(folded, example, param_bw=8, act_bw=8, scheme=scheme, per_channel=True)
        for scheme in ("minmax", "tf_enhanced")
    }
    runs = {scheme: (lambda s=sim: s.compute_encodings(calib, progress=False)) for scheme, sim in sims.items()}
    med = paired_medians(runs, args.repeats)
    print(
        f"EfficientNet-Lite0 (BN folded, W8A8 per-channel), {args.samples} images in batches of "
        f"{args.batch_size}, device {args.device}, torch {torch.__version__}, {os.cpu_count()} CPU cores, "
        f"{torch.get_num_threads()} torch threads, leantorch from {os.path.dirname(lt.__file__)}, "
        f"histograms of {args.values_per_sample} values per sample, median of {args.repeats}\n"
    )
    print("| minmax (s) | tf_enhanced (s) | tf_enhanced / minmax |")
    print("|---:|---:|---:|")
    print(f"| {med['minmax']:.3f} | {med['tf_enhanced']:.3f} | {med['tf_enhanced'] / med['minmax']:.2f} |")


if __name__ == "__main__":
    main()
