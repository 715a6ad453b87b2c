"""Does asymmetric GPTQ's gain hold on photographs it never saw? EfficientNet-Lite0.

The built-in crops come from 14 photographs, and the PTQ benchmarks calibrate and score on different crops of the
same photographs. Here the calibration (GPTQ's fit and the activation ranges) sees crops of 10 of them only, and
top-1 agreement with FP32 is scored on held-out crops of those 10 ("seen") and of the other 4 ("unseen"), beside
calibration-only W8A8 per-channel as the reference for how hard each set is.

Run: ``.venv/bin/python benchmarks/ptq_generalisation.py`` (about 10 minutes on 2 cores); writes
``benchmarks/results/ptq_generalisation.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import leantorch as lt
from leantorch.data import PHOTOGRAPHS, batches, sample_images
from leantorch.evaluation import Agreement
from leantorch.models import efficientnet_lite0

UNSEEN = ("immunohistochemistry", "moon", "rocket", "retina")  # as benchmarks/recovery_generalisation.py
SEEN = tuple(name for name in PHOTOGRAPHS if name not in UNSEEN)
RESULTS = Path(__file__).parent / "results" / "ptq_generalisation.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", type=int, default=512)
    parser.add_argument("--evaluation", type=int, default=500, help="held-out crops per set (seen, unseen)")
    parser.add_argument("--gptq-batches", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = efficientnet_lite0()
    calib = batches(sample_images(args.calibration, seed=0, photos=SEEN), 32)
    example = calib[0][:1]
    sets = {
        "seen": batches(sample_images(args.evaluation, seed=1, photos=SEEN), 50),
        "unseen": batches(sample_images(args.evaluation, seed=1, photos=UNSEEN), 50),
    }
    with torch.no_grad():
        references = {name: torch.cat([model(b) for b in data]) for name, data in sets.items()}
    folded, _ = lt.fold_batch_norms(model, example)
    w4 = {"param_bw": 4, "per_channel": True, "param_scheme": "mse"}
    first_last_8 = {"_conv_stem": {"param_bw": 8}, "_fc": {"param_bw": 8}}
    equalized = lt.equalize(model, example)
    cases = [
        ("W8A8 per-channel, calibration only", folded, {"param_bw": 8, "per_channel": True}, False),
        ("W8A8 per-tensor + CLE + asymmetric GPTQ", equalized, {"param_bw": 8, "per_channel": False}, True),
        ("W4A8 per-channel asymmetric weights, stem + classifier W8 + asymmetric GPTQ", folded,
         {**w4, "config": {"param_symmetric": False, "layers": first_last_8}}, True),
    ]  # fmt: skip
    rows = []
    for label, start_model, options, rounded in cases:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            weights, encodings = start_model, None
            if rounded:
                weights, encodings = lt.gptq(
                    start_model, example, calib, act_bw=8, num_batches=args.gptq_batches, asymmetric=True,
                    progress=False, path=tmp, **options,
                )  # fmt: skip
            sim = lt.QuantSim(weights, example, **options)
            if encodings is not None:
                sim.set_and_freeze_param_encodings(encodings)
            sim.compute_encodings(calib, progress=False)
        row = {"configuration": label, "seconds": round(time.perf_counter() - start, 1)}
        with torch.no_grad():
            for name, data in sets.items():
                agreement = Agreement.of(references[name], torch.cat([sim.model(b) for b in data]))
                row[name] = {"top-1 agreement": agreement.top1, "KL divergence": agreement.kl}
        print(json.dumps(row), flush=True)
        rows.append(row)
    RESULTS.write_text(json.dumps({"seen": SEEN, "unseen": UNSEEN, "settings": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
