"""A ViT-tiny and a DeiT-tiny (Hugging Face, random init) under QuantSim: output SQNR per config (issue 10, item 7).

Models: ``ViTForImageClassification`` and ``DeiTForImageClassification`` at the ViT-tiny shape (hidden 192,
12 layers, 3 heads, MLP 768, patch 16, 224x224 images, 1000 classes), random init (seed 0, the configs'
default ``initializer_range``). Nothing is downloaded. Data: crops of scikit-image's photographs
(:func:`leantorch.data.sample_images`, ImageNet-normalised, 224x224): 32 for calibration, 16 other crops held
out. Metric: SQNR (dB) of the logits, quantized vs float, on the held-out crops.

Rows: W8A8 per-channel (``per_channel=True``, the coverage benchmark's config), ``config="transformer"`` (8-bit
per-channel weights, 16-bit Linear/LayerNorm/Softmax/Add/Concat outputs, other activations 8-bit), and
both after :func:`leantorch.migrate_outliers` (``--migrate``). ``--ablate`` re-measures the
``transformer`` preset with groups of quantizers switched off (float), to show which lose the signal.

Measured (``benchmarks/results/vit.json``): ViT-tiny 10.65 dB W8A8 per-channel, 29.74 dB ``transformer``; DeiT-tiny
12.60 / 30.43 dB. Before ``Concat`` joined the preset's 16-bit ops the ViT's ``transformer`` row was 16.16 dB, and
the ablation named the loss: the 8-bit output of the ``torch.cat`` that puts the small class token in front of
the large patch embeddings rounds the class token (which the classifier reads) to nothing; with those two
quantizers off it was 29.86 dB. After ``migrate_outliers``: ViT 10.79 / 30.32 dB, DeiT 12.73 / 30.21 dB
(random init grows no outlier channels, so there is little to migrate).

Run offline::

    .venv/bin/python benchmarks/vit.py [--ablate] [--migrate] [--only vit|deit] [--out benchmarks/results/vit.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import leantorch as lt
from leantorch.data import sample_images

sys.path.insert(0, str(Path(__file__).resolve().parent))
from minilm import ablations  # noqa: E402

TINY = dict(
    hidden_size=192,
    num_hidden_layers=12,
    num_attention_heads=3,
    intermediate_size=768,
    image_size=224,
    patch_size=16,
    num_labels=1000,
)


class Logits(nn.Module):
    """Pixels in, logits out (what a user writes around a transformers classifier)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(pixel_values=pixel_values).logits
        return out


def build(family: str) -> nn.Module:
    """The random-init classifier of ``family`` (``vit`` or ``deit``) at the ViT-tiny shape, eval mode."""
    import transformers

    torch.manual_seed(0)
    if family == "vit":
        return Logits(transformers.ViTForImageClassification(transformers.ViTConfig(**TINY))).eval()
    return Logits(transformers.DeiTForImageClassification(transformers.DeiTConfig(**TINY))).eval()


@torch.no_grad()
def run(model: nn.Module, data: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([model(x) for x in data])


def sqnr(reference: torch.Tensor, test: torch.Tensor) -> float:
    noise = (reference.double() - test.double()).pow(2).sum()
    return float(10 * torch.log10(reference.double().pow(2).sum() / noise.clamp(min=1e-30)))


def measure(
    family: str, calibration: list[torch.Tensor], held_out: list[torch.Tensor], ablate: bool, migrate: bool
) -> dict[str, Any]:
    model = build(family)
    reference = run(model, held_out)
    rows: list[tuple[str, nn.Module, dict[str, Any]]] = [
        ("W8A8 per-channel", model, {"per_channel": True}),
        ('config="transformer"', model, {"config": "transformer"}),
    ]
    if migrate:
        migrated = lt.migrate_outliers(model, calibration[0], calibration)
        rows.append(("migrate_outliers + W8A8 per-channel", migrated, {"per_channel": True}))
        rows.append(('migrate_outliers + config="transformer"', migrated, {"config": "transformer"}))
    result: dict[str, Any] = {"model": family, "params": sum(p.numel() for p in model.parameters()), "rows": {}}
    sim = None
    for label, target, options in rows:
        start = time.perf_counter()
        sim = lt.QuantSim(target, calibration[0][:1], **options)
        sim.compute_encodings(calibration, progress=False)
        db = sqnr(reference, run(sim.model, held_out))
        result["rows"][label] = round(db, 2)
        print(f"| {family} | {label} | {db:.2f} | {time.perf_counter() - start:.0f} |", flush=True)
        if ablate and label == 'config="transformer"':
            result["ablation"] = ablation(sim, reference, held_out)
    return result


def ablation(sim: lt.QuantSim, reference: torch.Tensor, held_out: list[torch.Tensor]) -> dict[str, float]:
    """SQNR with one group of quantizers (op type x weights/activations) switched off."""
    out = {}
    quantizers = sim.quantizers()
    for group, names in sorted(ablations(sim).items()):
        for n in names:
            quantizers[n].enabled = False
        out[group] = round(sqnr(reference, run(sim.model, held_out)), 2)
        for n in names:
            quantizers[n].enabled = True
        print(f"|   | off: {group} ({len(names)}) | {out[group]:.2f} | |", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ablate", action="store_true", help="switch quantizer groups off, one at a time")
    parser.add_argument("--migrate", action="store_true", help="also measure migrate_outliers before the preset")
    parser.add_argument("--only", choices=("vit", "deit"), action="append", help="one family (repeatable)")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    images = sample_images(48, size=224, seed=0)
    calibration = list(images[:32].split(8))
    held_out = list(images[32:].split(8))
    print("| model | config | SQNR dB (logits) | s |\n|---|---|---|---|")
    results = [measure(f, calibration, held_out, args.ablate, args.migrate) for f in args.only or ("vit", "deit")]
    if args.out:
        meta = {"images": "leantorch.data.sample_images (32 calibration, 16 held out, 224 px)", "shape": TINY}
        args.out.write_text(json.dumps({"meta": meta, "models": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
