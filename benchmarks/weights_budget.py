"""Issue 13's weight-bytes goal on the ImageNet-pretrained EfficientNet-Lite0: top-1 agreement with FP32 at less than
half of W8's weight bytes.

Sections (``--only NAME``), both with asymmetric per-channel weight grids (MSE), asymmetric GPTQ and BN folded:

* ``amp_budget``: ``lt.mixed_precision`` over ``--candidates`` (default W8A16, W4A16, W3A16) with ``cost="memory"``,
  ``max_cost=--budget`` (a fraction of all-W8's weight bytes), ``allowed_drop=0`` (so the costliest point of the
  greedy list within the budget), ``rounding="gptq"``; two rows: the mix as AMP chose it, and that mix re-rounded
  (``reround``, on by default: one sequential GPTQ with every group at its chosen bitwidths; on
  ``--reround-calibration`` crops, ``reround_data``). ``--candidate-inputs float``: the candidates rounded each for
  its layers' float inputs (what phase 1 measures), the mix still by asymmetric GPTQ (``reround_options``).
  Blockwise candidates (``W3A16B64``) are costed with their block scales (float32 and a zero point per further
  block); ``--reround-keep always`` keeps the re-rounded mix whatever the search crops say.
* ``hand_mix``: a hand-chosen mix: depthwise convs and the stem at W8 (4% of the weights), the classifier ``_fc`` at
  ``--fc-bw`` bits, every other conv at W4 (or, with ``--mix-file``, a mix ``amp_budget`` saved), activations at
  ``--act-bw``; one sequential GPTQ; then, with ``--distill-minutes``, distillation of ``sim.model`` towards the
  float model (QAT, weight encodings frozen). ``--block-size N``: blockwise weights where input channels make whole
  blocks (their scales are counted in the weight bytes; a mix file's ``B`` candidates bring their own blocks);
  ``--decompressed-bw``: LPBQ, symmetric grids.

Data: scikit-image photograph crops, as ``benchmarks/weights.py``: calibration ``--calibration`` crops (seed 0), the
AMP search on ``--search`` crops (seed 2), "held-out" ``--evaluation`` crops (seed 1), and 300 crops (seed 5) of only
four of the photographs (``FOUR_PHOTOS``; the calibration and held-out sets crop all 14, these four too: this is a
second held-out set, not unseen data). Rows go into ``benchmarks/results/weights_budget.json`` (a row of the same
label is replaced).

Run: ``.venv/bin/python benchmarks/weights_budget.py --only amp_budget --budget 0.49``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import leantorch as lt
from leantorch.compress.distill import distill
from leantorch.data import batches, channels_last, sample_images
from leantorch.evaluation import Agreement, markdown_table, model_outputs
from leantorch.ptq.amp_groups import LayerGroup, WeightBlocks
from leantorch.ptq.gptq import GptqConfig

sys.path.insert(0, str(Path(__file__).parent))
from agreement_vs_sqnr import margin_buckets  # noqa: E402
from weights import RESULTS, _scores, _search, _setup, add_data_options  # noqa: E402  (benchmarks/weights.py: data, scores, AMP run)

FOUR_PHOTOS = ["immunohistochemistry", "moon", "rocket", "retina"]
ASYMMETRIC = {"param_symmetric": False}


def _environment(args: argparse.Namespace) -> dict[str, Any]:
    """``weights.py``'s set-up plus the crops of :data:`FOUR_PHOTOS` and the float outputs on them."""
    env = _setup(args)
    crops = channels_last(env["model"], sample_images(300, seed=5, photos=FOUR_PHOTOS))[1]
    env["four_photos"] = batches(crops, args.batch_size)
    env["four_photos_reference"] = model_outputs(env["model"], env["four_photos"], progress=False)
    return env


def _row(run: str, model: nn.Module, env: dict[str, Any], bytes_w8: float, seconds: float) -> dict[str, Any]:
    outputs = model_outputs(model, env["held_out"], progress=False)
    held = Agreement.of(env["reference"], outputs)
    four = Agreement.of(env["four_photos_reference"], model_outputs(model, env["four_photos"], progress=False))
    row = {"run": run, "weight bytes / W8": bytes_w8, "held-out agreement": held.top1}
    row.update({"held-out SQNR (dB)": held.sqnr_db, "4-photo agreement": four.top1, "seconds": seconds})
    print(markdown_table([row]), flush=True)
    row["held-out agreement by FP32 margin"] = agreement_by_margin(env["reference"], outputs)
    return row


def agreement_by_margin(reference: torch.Tensor, outputs: torch.Tensor) -> dict[str, list[float]]:
    """Per bucket of the FP32 top-1 − top-2 probability (``agreement_vs_sqnr.MARGIN_EDGES``): ``[crops, agreement]``.
    Most disagreements are near ties of the float model (``benchmarks/agreement_vs_sqnr.py``)."""
    agree = (reference.argmax(-1) == outputs.argmax(-1)).float()
    return {
        f"[{lo}, {hi})": [int(inside.sum()), float(agree[inside].mean()) if inside.any() else float("nan")]
        for lo, hi, inside in margin_buckets(reference)
    }


def _data_tag(args: argparse.Namespace) -> str:
    """What a row's label adds for a non-default probe or held-out set (rows of the same label replace each other)."""
    probe = f", probe {args.probe}" if args.probe != 32 else ""
    clip = f", GPTQ grids of {len(args.clip_ratios)} ranges" if args.clip_ratios else ""
    return probe + clip + (f", {args.evaluation} held-out crops" if args.evaluation != 500 else "")


def run_amp_budget(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Budgeted AMP with GPTQ candidates; the chosen mix as chosen and re-rounded."""
    env = _environment(args)
    rounder = GptqConfig(
        asymmetric=True, param_scheme="mse", progress=False, config=ASYMMETRIC, clip_ratios=args.clip_ratios
    )
    candidate_rounder, inputs = rounder, ""
    if args.candidate_inputs == "float":  # each candidate rounded for its layers' float inputs; the mix asymmetric
        candidate_rounder = dataclasses.replace(rounder, asymmetric=False, use_quantized_inputs=False)
        inputs = ", candidates on float inputs"
    more = None  # the first --calibration of these crops are the calibration crops (same seed)
    if args.reround_calibration:
        more = batches(channels_last(env["model"], sample_images(args.reround_calibration, seed=0))[1], args.batch_size)
    amp, seconds = _search(
        env, args, _scores(env), candidates=args.candidates, allowed_drop=0.0, cost="memory",
        max_cost=args.budget, baseline="fp32", rounding="gptq", config=ASYMMETRIC, rounding_options=candidate_rounder,
        reround_options=rounder, reround_data=more, reround_keep=args.reround_keep,
    )  # fmt: skip
    assert amp.assembler is not None and amp.chosen.score is not None
    relative = amp.chosen.weight_bytes / sum(g.params for g in amp.groups)
    counts = {c: sum(v == c for v in amp.chosen.config.values()) for c in sorted(set(amp.chosen.config.values()))}
    label = f"AMP {args.candidates} max_cost {args.budget}, {args.calibration} crops{inputs}{_data_tag(args)}"
    on = f" on {args.reround_calibration} crops" if args.reround_calibration else ""
    rows = [_row(f"{label}, re-rounded{on}", amp.sim.model, env, relative, seconds)] if amp.rerounded else []
    by_name = {c.name: c for c in amp.candidates}
    amp.assembler.set_all({g: by_name[c] for g, c in amp.chosen.config.items()})  # the mix as AMP chose it
    rows.insert(0, _row(f"{label}, as chosen", amp.sim.model, env, relative, seconds))
    for row in rows:
        row.update({"chosen mix": ", ".join(f"{n}×{c}" for c, n in counts.items()), "search agreement": None})
    rows[0]["search agreement"] = amp.chosen.score
    # a re-rounding that scores below the chosen mix on the search crops is not kept: record its score anyway
    rows[0].update({"re-rounded search agreement": amp.reround_score, "re-rounding kept": amp.rerounded})
    if amp.rerounded:
        rows[1]["search agreement"] = amp.reround_score
    spec = "-".join(c.name for c in amp.candidates)
    probe = f"_probe{args.probe}" if args.probe != 32 else ""
    probe += f"_clip{len(args.clip_ratios)}" if args.clip_ratios else ""
    mix_file = (
        RESULTS / f"weights_budget_mix_{args.budget}_{args.calibration}crops_{spec}{inputs and '_float'}{probe}.json"
    )
    mix_file.write_text(json.dumps(amp.chosen.config, indent=1) + "\n")
    return rows


def mix_layers(
    model: nn.Module, fc_bw: int, mix_file: str | None, block_size: int = 0, decompressed_bw: int = 0
) -> tuple[dict[str, dict[str, int]], float]:
    """Per-layer weight bitwidths and blocks (as config ``layers`` rules) and their weight bytes relative to W8, block
    scales counted as AMP counts them (``LayerGroup.cost``: float32 + zero point per further block, or LPBQ's
    multipliers with ``decompressed_bw``): a saved AMP mix (``{layer: "W4A16", ...}``), or the hand mix (depthwise
    and stem W8, ``_fc`` at ``fc_bw``, the rest W4); ``block_size``: every layer's own blocks (the config's)."""
    saved = json.loads(Path(mix_file).read_text()) if mix_file else None
    layers: dict[str, dict[str, int]] = {}
    size, total = 0.0, 0
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            depthwise = isinstance(m, nn.Conv2d) and m.groups > 1
            cand = lt.Candidate(fc_bw if name == "_fc" else 8 if depthwise or "stem" in name else 4, 16)
            if saved is not None:
                cand = lt.Candidate.parse(saved[name])
            layers[name] = {"param_bw": cand.param_bw}
            if cand.block_size:
                layers[name]["param_block_size"] = cand.block_size
            shape = m.weight.shape
            blocks = [] if depthwise else [WeightBlocks(name, 0, shape[0], shape[1], block_size, decompressed_bw)]
            group = LayerGroup(name, params=m.weight.numel(), weight_blocks=blocks, zero_points=not decompressed_bw)
            size += group.cost(cand, "memory")
            total += m.weight.numel()
    return layers, size / total


def run_hand_mix(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The hand mix rounded by one asymmetric GPTQ; then optional distillation."""
    env = _environment(args)
    layers, relative = mix_layers(env["folded"], args.fc_bw, args.mix_file, args.block_size, args.decompressed_bw)
    config: dict[str, Any] = {**ASYMMETRIC, "layers": layers}
    if args.block_size:  # blockwise weights where a layer's input channels make whole blocks (not depthwise, stem)
        config["param_block_size"] = args.block_size
    if args.decompressed_bw:  # LPBQ: symmetric grids
        config.update(param_symmetric=True, decompressed_bw=args.decompressed_bw)
    calib, example = env["calib"], env["calib"][0][:1]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rounded, encodings = lt.gptq(
            env["folded"], example, calib, param_bw=4, act_bw=args.act_bw, per_channel=True, param_scheme="mse",
            config=config, num_batches=len(calib), asymmetric=True, progress=False, path=tmp,
            clip_ratios=args.clip_ratios,
        )  # fmt: skip
        sim = lt.QuantSim(rounded, example, param_bw=4, act_bw=args.act_bw, per_channel=True, config=config)
        sim.set_and_freeze_param_encodings(encodings)
    sim.compute_encodings(calib, progress=False)
    mix = f"mix {Path(args.mix_file).name}" if args.mix_file else f"hand mix _fc W{args.fc_bw}"
    blocks = f", block-{args.block_size}" if args.block_size else ""
    blocks += f" LPBQ decompressed {args.decompressed_bw}" if args.decompressed_bw else ""
    label = f"{mix}{blocks}, A{args.act_bw}, {args.calibration} crops{_data_tag(args)}"
    rows = [_row(f"{label}, GPTQ", sim.model, env, relative, time.perf_counter() - start)]
    if args.distill_minutes > 0:
        start = time.perf_counter()
        with torch.enable_grad():
            result = distill(
                sim.model, env["model"], sample_images(2000, seed=10), validation=sample_images(256, seed=2),
                epochs=None, max_minutes=args.distill_minutes, lr=args.distill_lr, batch_size=32, inplace=True,
                progress=False, patience=None, monitor=args.distill_monitor,
            )  # fmt: skip
        run = (
            f"{label}, GPTQ + {args.distill_minutes:g} min distillation ({result.steps} steps, lr {args.distill_lr}, "
            f"best by validation {args.distill_monitor})"
        )
        rows.append(_row(run, sim.model, env, relative, time.perf_counter() - start))
        before, after = (None if a is None else a.top1 for a in (result.before, result.after))
        # best_step 0: no evaluated step beat the GPTQ weights on the validation crops, which were kept
        kl = [None if a is None else a.kl for a in (result.before, result.after)]
        rows[-1].update({"kept step": result.best_step, "validation agreement before/after": [before, after]})
        rows[-1]["validation KL before/after"] = kl
    return rows


SECTIONS = {"amp_budget": run_amp_budget, "hand_mix": run_hand_mix}


def _save(rows: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    path = RESULTS / "weights_budget.json"
    old = json.loads(path.read_text()) if path.exists() else {"rows": []}
    runs = {r["run"] for r in rows}
    old["rows"] = [r for r in old["rows"] if r["run"] not in runs] + [{**r, "settings": settings} for r in rows]
    path.write_text(json.dumps(old, indent=1, default=str) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append", help="run only these sections")
    add_data_options(parser, calibration=256, front_evals=8)
    parser.add_argument("--candidates", default="W8A16,W4A16,W3A16", help="amp_budget: AMP candidates")
    parser.add_argument(
        "--reround-calibration", type=int, default=0, help="amp_budget: crops the chosen mix is re-rounded on"
    )
    parser.add_argument(
        "--candidate-inputs", choices=("quantized", "float"), default="quantized",
        help="amp_budget: candidates rounded by asymmetric GPTQ, or each for float inputs (the mix: asymmetric)",
    )  # fmt: skip
    parser.add_argument(
        "--reround-keep", choices=("if_better", "always"), default="if_better", help="amp_budget: reround_keep"
    )
    parser.add_argument(
        "--clip-ratios", type=lambda s: tuple(float(r) for r in s.split(",")), default=(),
        help="GPTQ's clip_ratios, e.g. 1,0.9,0.8,0.7 (default: the mse grid only)",
    )  # fmt: skip
    parser.add_argument("--budget", type=float, default=0.49, help="amp_budget: max_cost, relative to all-W8")
    parser.add_argument("--fc-bw", type=int, default=3, help="hand_mix: the classifier's weight bits")
    parser.add_argument(
        "--mix-file", help="hand_mix: a saved AMP mix (weights_budget_mix_*.json) instead of the hand mix"
    )
    parser.add_argument("--act-bw", type=int, default=16, help="hand_mix: activation bits")
    parser.add_argument("--block-size", type=int, default=0, help="hand_mix: blockwise weights (0: per channel)")
    parser.add_argument("--decompressed-bw", type=int, default=0, help="hand_mix: LPBQ (symmetric) with blocks")
    parser.add_argument("--distill-minutes", type=float, default=0.0, help="hand_mix: distillation after GPTQ")
    parser.add_argument("--distill-lr", type=float, default=1e-4)
    parser.add_argument(
        "--distill-monitor", choices=("agreement", "kl"), default="kl",
        help="hand_mix: which validation score picks the distillation step kept (distill's default: KL)",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    RESULTS.mkdir(exist_ok=True)
    for name in args.only or sorted(SECTIONS):
        settings = {k: v for k, v in vars(args).items() if k != "only"}
        _save(SECTIONS[name](args), settings)


if __name__ == "__main__":
    main()
