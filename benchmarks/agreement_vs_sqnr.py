"""How far issue 13's EfficientNet-Lite0 goal (top-1 agreement ≥ 0.95 with FP32) is in output SQNR, from the rows
``benchmarks/weights_budget.py`` recorded.

On the photograph crops both benchmarks score on, many FP32 predictions are near ties (the photographs are not
ImageNet classes: the FP32 top-1 probability has a median of 0.26), and a near tie flips under any output noise.
Over every recorded row the disagreement ``1 − agreement`` is close to proportional to the noise amplitude
``10^(−SQNR/20)`` (the RMS output error relative to the RMS logit): ``1 − agreement ≈ c · 10^(−SQNR/20)``. This script
fits ``c`` per held-out set (least squares through the origin), prints each row with its prediction, and the SQNR
the fit says a target agreement needs. ``--margins`` adds the FP32 top-2 probability margins of the held-out crops
(the float model only, a minute).

Run: ``.venv/bin/python benchmarks/agreement_vs_sqnr.py [--target 0.95] [--margins --evaluation 2000]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from weights import RESULTS  # noqa: E402  (benchmarks/weights.py)

MARGIN_EDGES = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.01)


def fit(rows: list[dict]) -> float:
    """``c`` of ``1 − agreement ≈ c · 10^(−SQNR/20)`` by least squares through the origin.

    Example:
        >>> round(fit([{"held-out agreement": 0.9, "held-out SQNR (dB)": 20.0}]), 6)
        1.0
    """
    amplitude = [10 ** (-r["held-out SQNR (dB)"] / 20) for r in rows]
    miss = [1 - r["held-out agreement"] for r in rows]
    return sum(a * m for a, m in zip(amplitude, miss)) / sum(a * a for a in amplitude)


def needed_sqnr(c: float, target: float) -> float:
    """The SQNR (dB) at which the fit predicts ``target`` agreement.

    Example:
        >>> round(needed_sqnr(1.0, 0.9), 6)
        20.0
    """
    return -20 * math.log10((1 - target) / c)


def fp32_margin(reference: torch.Tensor) -> torch.Tensor:
    """Per row of float logits, its top-1 minus its top-2 probability.

    Example:
        >>> [round(m, 3) for m in fp32_margin(torch.tensor([[0.0, 0.0], [2.0, 0.0]])).tolist()]
        [0.0, 0.762]
    """
    top2 = reference.softmax(-1).topk(2, dim=-1).values
    return top2[:, 0] - top2[:, 1]


def margin_buckets(reference: torch.Tensor) -> list[tuple[float, float, torch.Tensor]]:
    """``(lo, hi, mask)`` per bucket of FP32 top-1 minus top-2 probability (``MARGIN_EDGES``) over the crops.

    Example:
        >>> logits = torch.tensor([[5.0, 5.0], [9.0, 0.0]])   # a tie, and a sure answer
        >>> [(lo, int(mask.sum())) for lo, hi, mask in margin_buckets(logits) if mask.any()]
        [(0.0, 1), (0.5, 1)]
    """
    margin = fp32_margin(reference)
    return [(lo, hi, (margin >= lo) & (margin < hi)) for lo, hi in zip(MARGIN_EDGES[:-1], MARGIN_EDGES[1:])]


def margin_counts(reference: torch.Tensor) -> list[tuple[float, float, int]]:
    """Held-out crops per bucket of FP32 top-1 minus top-2 probability (``MARGIN_EDGES``)."""
    return [(lo, hi, int(mask.sum())) for lo, hi, mask in margin_buckets(reference)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, default=0.95, help="agreement to translate into SQNR")
    parser.add_argument("--margins", action="store_true", help="also the FP32 margins of the held-out crops")
    parser.add_argument("--evaluation", type=int, default=2000, help="with --margins: held-out crops (seed 1)")
    args = parser.parse_args()
    rows = json.loads((RESULTS / "weights_budget.json").read_text())["rows"]
    by_set: dict[int, list[dict]] = {}
    for row in rows:
        by_set.setdefault(int(row.get("settings", {}).get("evaluation", 500)), []).append(row)
    summary = {}
    for size, group in sorted(by_set.items()):
        c = fit(group)
        print(
            f"\n{size} held-out crops: c = {c:.3f}; {args.target} agreement needs {needed_sqnr(c, args.target):.1f} dB"
        )
        print("| SQNR (dB) | agreement | predicted | run |\n|---|---|---|---|")
        for r in sorted(group, key=lambda r: r["held-out SQNR (dB)"]):
            predicted = 1 - c * 10 ** (-r["held-out SQNR (dB)"] / 20)
            print(
                f"| {r['held-out SQNR (dB)']:.2f} | {r['held-out agreement']:.3f} | {predicted:.3f} | {r['run'][:90]} |"
            )
        summary[size] = {"c": c, "rows": len(group), f"SQNR for {args.target}": needed_sqnr(c, args.target)}
    if args.margins:
        from weights import _setup  # noqa: PLC0415  (loads the model: only when asked)

        torch.set_grad_enabled(False)
        ns = argparse.Namespace(calibration=1, search=1, probe=1, evaluation=args.evaluation, batch_size=32)
        reference = _setup(ns)["reference"]
        print(f"\nFP32 top-1 − top-2 probability on {args.evaluation} held-out crops:")
        for lo, hi, n in margin_counts(reference):
            print(f"  [{lo:.2f}, {hi:.2f}): {n} crops ({n / len(reference):.1%})")
        median = float(reference.softmax(-1).amax(-1).median())
        print(f"  median FP32 top-1 probability {median:.3f}")
        summary["margins"] = {"buckets": margin_counts(reference), "median top-1 probability": median}
    (RESULTS / "agreement_vs_sqnr.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
