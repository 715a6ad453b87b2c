"""Channel pruning by dependency groups on ImageNet-pretrained EfficientNet-Lite0 (issue 14 item 1).

Channel pruning alone at one MAC ratio (default 0.75): how many layers can be pruned (not in
``info.skipped``), how many units the eval-score table ranks (layers before dependency groups, groups
after), how many layers actually changed shape, and top-1 agreement with FP32 on sample-image crops before
any recovery. The settings are the same for any version of leantorch on ``PYTHONPATH``, so the per-layer
pruning of an older commit runs through this same script for the "before" numbers::

    mkdir -p /tmp/old && git archive <commit> src/leantorch | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old/src nice -n 10 .venv/bin/python benchmarks/pruning_groups.py

Run: ``nice -n 10 .venv/bin/python benchmarks/pruning_groups.py [--target 0.75] [--eval-images 200]``.

Measured 2026-12-04 on the shared 2-core machine (``--candidates 10 --table-images 16 --calibration-images 64``,
200 evaluation crops; "before" = commit fc7c581, per-layer pruning, through this script):

| pruning | MAC ratio | prunable layers (of 50) | table units | units pruned | layers changed | top-1 agreement |
|---|---|---|---|---|---|---|
| per layer (before) | 0.7487 | 18 | 18 layers | 14 | 42 | 0.48 |
| dependency groups | 0.7483 | 49 (all but the stem) | 24 groups | 16 | 47 | 0.65 |

With 8 table images and 32 calibration images both are far worse (0.05 before; 0.07 after, measured before the
least-squares ridge pulled towards the original weights): the wide 1×1 convs and the linear head then have
fewer samples than unknowns.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import leantorch as lt
from leantorch.compress.cost import cost
from leantorch.data import batches, sample_images
from leantorch.evaluation import Agreement, markdown_table, model_outputs, sqnr_score
from leantorch.models import efficientnet_lite0


def changed_layers(before: torch.nn.Module, after: torch.nn.Module, names: list[str]) -> int:
    """Layers whose weight shape changed (pruned on the input or the output side)."""
    return sum(before.get_submodule(n).weight.shape != after.get_submodule(n).weight.shape for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", type=float, default=0.75)
    parser.add_argument("--eval-images", type=int, default=200)
    parser.add_argument("--table-images", type=int, default=8, help="crops scoring each eval-score entry")
    parser.add_argument("--calibration-images", type=int, default=32)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default="", help="also write the row to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = efficientnet_lite0()
    table_images = sample_images(args.table_images, seed=2)
    evals = batches(sample_images(args.eval_images, seed=1), 25)
    calibration = batches(sample_images(args.calibration_images, seed=0), 16)
    reference = model_outputs(model, evals, progress=False)
    example = table_images[:1]
    gm = lt.prepare(model, example)
    layers = list(cost(gm, example).layers)
    start = time.perf_counter()
    compressed, info = lt.compress(
        model,
        example,
        sqnr_score(model, [table_images]),
        "channel_pruning",
        args.target,
        calibration=calibration,
        candidates=args.candidates,
        progress=False,
    )
    seconds = time.perf_counter() - start
    agreement = Agreement.of(reference, model_outputs(compressed, evals, progress=False)).top1
    row = {
        "leantorch": lt.__file__,
        "target": args.target,
        "MAC ratio": round(info.mac_ratio, 4),
        "layers": len(layers),
        "prunable layers": len(layers) - len(info.skipped),
        "table units": len(info.table.scores) if info.table is not None else 0,
        "units pruned": len(info.sizes),
        "layers changed": changed_layers(gm, compressed, layers),
        "skipped": len(info.skipped),
        "top-1 agreement": round(agreement, 4),
        "compress (s)": round(seconds, 1),
    }
    print(markdown_table([row]), flush=True)
    print("skipped:", json.dumps(dict(list(info.skipped.items())[:5]), indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**row, "skipped_reasons": info.skipped}, f, indent=1)


if __name__ == "__main__":
    main()
