"""Quantization-aware training on scikit-learn ``digits``: W4A4 per-tensor PTQ vs QAT vs QAT + range learning.

A small CNN (:class:`leantorch.models.DigitsCNN`) is trained in FP32 on a fixed 75/25 split, BatchNorm is
folded, and the model is quantized W4A4 per-tensor (weights symmetric, activations asymmetric, minmax
calibration on 256 training images; ``--scheme tf_enhanced`` loses less in PTQ). Then 3 epochs of QAT
(Adam) with fixed encodings, and 3 epochs with learned scales/offsets (LSQ gradients), each from the same
PTQ starting point.
Run: ``.venv/bin/python benchmarks/qat_digits.py``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import leantorch as lt
from leantorch.data import digits
from leantorch.evaluation import markdown_table
from leantorch.models import DigitsCNN, accuracy, train_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--range-lr", type=float, default=1e-3)
    parser.add_argument("--scheme", default="minmax", choices=["minmax", "tf_enhanced", "percentile", "mse"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = digits()
    model = train_classifier(DigitsCNN(), x_train, y_train, epochs=30, seed=args.seed)
    folded, _ = lt.fold_batch_norms(model, x_train[:1])
    calibration = list(torch.split(x_train[:256], 64))
    train_batches = list(zip(torch.split(x_train, 32), torch.split(y_train, 32)))
    rows = [{"model": "FP32", "test accuracy": accuracy(model, x_test, y_test), "seconds": 0.0}]

    def quantized(range_learning: bool) -> lt.QuantSim:
        sim = lt.QuantSim(
            folded,
            x_train[:1],
            param_bw=args.bits,
            act_bw=args.bits,
            scheme=args.scheme,
            per_channel=False,
            range_learning=range_learning,
        )
        sim.compute_encodings(calibration, progress=False)
        return sim

    start = time.perf_counter()
    ptq = quantized(False)
    rows.append(
        {
            "model": f"W{args.bits}A{args.bits} PTQ (BN folded)",
            "test accuracy": accuracy(ptq.model, x_test, y_test),
            "seconds": time.perf_counter() - start,
        }
    )
    for label, range_learning in (("QAT", False), ("QAT + range learning", True)):
        start = time.perf_counter()
        sim = quantized(range_learning)
        torch.manual_seed(args.seed)
        lt.qat.fit(
            sim, train_batches, F.cross_entropy, epochs=args.epochs, lr=args.lr, range_lr=args.range_lr, progress=False
        )
        rows.append(
            {
                "model": f"W{args.bits}A{args.bits} {label}, {args.epochs} epochs",
                "test accuracy": accuracy(sim.model, x_test, y_test),
                "seconds": time.perf_counter() - start,
            }
        )
    fp32, ptq_acc = rows[0]["test accuracy"], rows[1]["test accuracy"]
    for row in rows:
        lost = fp32 - ptq_acc
        row["share of PTQ loss recovered"] = (row["test accuracy"] - ptq_acc) / lost if lost > 0 else float("nan")
    print(f"digits: {len(y_train)} train / {len(y_test)} test images, DigitsCNN\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
