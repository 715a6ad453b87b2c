"""Weight-precision techniques on the ImageNet-pretrained EfficientNet-Lite0: automatic mixed precision (AMP).

Sections (``--only NAME``). The other half of issue 13's demonstration, W4 weights per channel and block-32 with
round-to-nearest, SeqMSE, GPTQ and AdaRound on MiniLM and EfficientNet-Lite0, is ``benchmarks/weights_rounding.py``
(results in ``benchmarks/results/weights_rounding.json``).

* ``amp``: ``lt.mixed_precision`` Pareto fronts for candidate sets {W4A8, W8A8} and {W8A8, W8A16} (cost:
  bit-operations) and a weight-bytes run (cost: memory) aiming at ≥ 0.95 top-1 agreement with FP32 at less
  than half the weight bytes of W8. BN folded first; per-channel weights, tf_enhanced ranges.

* ``amp_rounded``: the weight-bytes run with AdaRound candidates (``rounding="adaround"``: each candidate below
  16-bit weights rounded once by ``lt.adaround``), and uniform AdaRound W8A16 / W4A16 / W3A16 from the same
  rounded weights. Its rows and front are added to ``weights_amp.json`` (the plot: ``weights_amp_rounded_pareto.png``;
  ``--amp-rounding gptq``: asymmetric GPTQ candidates, ``weights_amp_rounded_gptq_pareto.png``).

Data: scikit-image photograph crops. Calibration: ``--calibration`` crops (seed 0). The search scores
(``eval_fn``) top-1 agreement with FP32 on ``--search`` crops (seed 2) and orders phase 1 by relative output
noise power on ``--probe`` of them; the table's "held-out agreement" is on ``--evaluation`` other crops (seed 1).
Writes ``benchmarks/results/weights_amp.json`` and the Pareto plot ``weights_amp_pareto.png`` beside it.

Run: ``.venv/bin/python benchmarks/weights.py --only amp`` (or ``--only amp_rounded``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import leantorch as lt
from leantorch.analysis import plots
from leantorch.data import batches, channels_last, sample_images
from leantorch.evaluation import Agreement, OutputScore, agreement_score, markdown_table, model_outputs
from leantorch.models import efficientnet_lite0
from leantorch.ptq.mixed_precision import MixedPrecisionResult, mixed_precision

RESULTS = Path(__file__).parent / "results"

#: (label, candidates, cost, allowed top-1 agreement drop on the search set, measured from: FP32 or the set's
#: highest candidate). The fronts keep within 2 points of their uniform highest; the weight-bytes run needs 16-bit
#: weights in its few sensitive layers (uniform W8A16 agrees only ~0.87 with FP32 here) and 3-4 bits elsewhere.
AMP_RUNS: list[tuple[str, str, str, float, str]] = [
    ("W4A8 front", "W4A8,W8A8", "bitops", 0.02, "highest"),
    ("W8A8 front", "W8A8,W8A16", "bitops", 0.02, "highest"),
    ("weight bytes", "W16A16,W8A16,W4A16,W3A16", "memory", 0.03, "fp32"),
]


def _setup(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    model, calib_images = channels_last(efficientnet_lite0(), sample_images(args.calibration, seed=0))
    folded, _ = lt.fold_batch_norms(model, calib_images[:1])
    search = batches(channels_last(model, sample_images(args.search, seed=2))[1], args.batch_size)
    held_out = batches(channels_last(model, sample_images(args.evaluation, seed=1))[1], args.batch_size)
    return {
        "model": model,
        "folded": folded,
        "calib": batches(calib_images, args.batch_size),
        "search": search,
        "probe": [torch.cat(search)[: args.probe]],  # one batch: --probe beyond --batch-size is not capped
        "held_out": held_out,
        "reference": model_outputs(model, held_out, progress=False),
    }


def _uniform_rows(env: dict[str, Any], specs: list[str]) -> list[dict[str, Any]]:
    rows = []
    for spec in specs:
        cand = lt.Candidate.parse(spec)
        start = time.perf_counter()
        sim = lt.QuantSim(
            env["folded"], env["calib"][0][:1], param_bw=cand.param_bw, act_bw=cand.act_bw, per_channel=True
        )
        sim.compute_encodings(env["calib"], progress=False)
        agree = Agreement.of(env["reference"], model_outputs(sim.model, env["held_out"], progress=False))
        rows.append(
            {
                "run": f"uniform {spec}",
                "candidates": spec,
                "cost": "-",
                "chosen mix": spec,
                "relative bitops": cand.bit_product / 128,  # against uniform W8A16 (16 × 16 = 256 bits: 2)
                "weight bytes / W8": cand.param_bw / 8,
                "search agreement": float("nan"),
                "held-out agreement": agree.top1,
                "held-out SQNR (dB)": agree.sqnr_db,
                "evaluations": 0,
                "seconds": time.perf_counter() - start,
            }
        )
    return rows


def _amp_row(label: str, spec: str, amp: MixedPrecisionResult, env: dict[str, Any], seconds: float) -> dict[str, Any]:
    agree = Agreement.of(env["reference"], model_outputs(amp.sim.model, env["held_out"], progress=False))
    w8 = sum(g.params for g in amp.groups)
    bitops_w8a16 = sum(g.macs * 128 for g in amp.groups)
    by_name = {c.name: c for c in amp.candidates}
    bitops = sum(g.macs * by_name[amp.chosen.config[g.name]].bit_product for g in amp.groups)
    counts = {c: sum(v == c for v in amp.chosen.config.values()) for c in sorted(set(amp.chosen.config.values()))}
    return {
        "run": f"AMP {label}",
        "candidates": spec,
        "cost": amp.cost_kind,
        "chosen mix": ", ".join(f"{n}×{c}" for c, n in counts.items()),
        "relative bitops": bitops / bitops_w8a16,
        "weight bytes / W8": amp.chosen.weight_bytes / w8,
        "search agreement": amp.chosen.score if amp.chosen.score is not None else float("nan"),
        "held-out agreement": agree.top1,
        "held-out SQNR (dB)": agree.sqnr_db,
        "evaluations": amp.evaluations,
        "seconds": seconds,
    }


def _negative_noise(reference: torch.Tensor, output: torch.Tensor) -> float:
    return -float((output.double() - reference.double()).pow(2).sum() / reference.double().pow(2).sum())


def _scores(env: dict[str, Any]) -> tuple[Callable[[torch.nn.Module], float], OutputScore]:
    """The search's score (top-1 agreement with FP32 on the search crops) and phase 1's order: relative output
    noise power (Σ(out - ref)² / Σ ref², negated) on the probe. Independent noise adds up, so the greedy list's
    estimate (a sum of drops) tracks the real score better than a sum of dB drops."""
    eval_fn = agreement_score(env["model"], env["search"])
    return eval_fn, OutputScore(env["model"], env["probe"], _negative_noise, name="-(output noise / signal)")


def _search(
    env: dict[str, Any], args: argparse.Namespace, scores: tuple[Any, OutputScore], **options: Any
) -> tuple[MixedPrecisionResult, float]:
    """``mixed_precision`` of the folded model with the benchmark's data and scores; the result and its seconds."""
    start = time.perf_counter()
    amp = mixed_precision(
        env["folded"],
        env["calib"][0][:1],
        env["calib"],
        scores[0],
        sensitivity_fn=scores[1],
        per_channel=True,
        front_evals=args.front_evals,
        progress=not args.no_progress,
        **options,
    )
    return amp, time.perf_counter() - start


def run_amp(args: argparse.Namespace) -> dict[str, Any]:
    """The AMP section: fronts, chosen points, held-out agreement; returns what goes into the JSON file."""
    env = _setup(args)
    scores = _scores(env)
    rows = _uniform_rows(env, ["W16A16", "W8A16", "W8A8", "W4A16", "W4A8"])
    fronts: dict[str, Any] = {}
    curves: dict[str, list[tuple[float, float | None, float | None]]] = {}
    chosen: dict[str, tuple[float, float]] = {}
    runs = [r for r in AMP_RUNS if not args.runs or r[0] in args.runs]
    for label, spec, cost, drop, baseline in runs:
        amp, seconds = _search(env, args, scores, candidates=spec, allowed_drop=drop, cost=cost, baseline=baseline)
        rows.append(_amp_row(label, spec, amp, env, seconds))
        print(markdown_table(rows[-1:]), flush=True)
        curves[label], chosen[label] = amp.curve(), amp.chosen_xy()
        fronts[label] = {"allowed_drop": drop, "front": amp.front_rows(), "chosen": amp.chosen.config, "met": amp.met}
    png = plots.pareto_plot(curves, chosen, "cost relative to the candidate set's highest (bitops or bytes)", None)
    return {"rows": rows, "fronts": fronts, "png": png}


#: (label, candidates, allowed drop from FP32) of the AdaRound weight-bytes run; W16A16 is kept for a few sensitive
#: layers (its bytes count), the others are rounded by AdaRound once each.
ROUNDED_RUN = ("weight bytes, AdaRound", "W16A16,W8A16,W4A16,W3A16", 0.04)


def run_amp_rounded(args: argparse.Namespace) -> dict[str, Any]:
    """AMP over AdaRound candidates (cost: weight bytes) and uniform AdaRound rows; merged into weights_amp.json."""
    env = _setup(args)
    label, spec, drop = ROUNDED_RUN
    quantized_inputs = not args.adaround_float_inputs
    options: Any = lt.AdaroundConfig(progress=False, use_quantized_inputs=quantized_inputs)
    if args.amp_rounding == "gptq":
        label, options = label.replace("AdaRound", "asymmetric GPTQ"), None  # rounding="gptq"'s defaults
    elif not quantized_inputs:
        label += " (float inputs)"
    amp, seconds = _search(
        env,
        args,
        _scores(env),
        candidates=spec,
        allowed_drop=drop,
        cost="memory",
        baseline="fp32",
        rounding=args.amp_rounding,
        rounding_options=options,
    )
    row = _amp_row(label, spec, amp, env, seconds)
    assert amp.assembler is not None
    rows = []
    for cand in amp.candidates[1:]:  # uniform AdaRound points from the same rounded weights
        amp.assembler.set_all({g.name: cand for g in amp.groups})
        agree = Agreement.of(env["reference"], model_outputs(amp.sim.model, env["held_out"], progress=False))
        rows.append(
            {
                **row,
                "run": f"uniform {'asymmetric GPTQ' if args.amp_rounding == 'gptq' else 'AdaRound'}"
                f"{label[len(ROUNDED_RUN[0]) :] if args.amp_rounding != 'gptq' else ''} {cand.name}",
                "candidates": cand.name,
                "cost": "-",
            }
        )
        rows[-1].update({"chosen mix": cand.name, "relative bitops": cand.bit_product / 128})
        rows[-1].update({"weight bytes / W8": cand.param_bw / 8, "search agreement": float("nan")})
        rows[-1].update({"held-out agreement": agree.top1, "held-out SQNR (dB)": agree.sqnr_db, "evaluations": 0})
        rows[-1]["seconds"] = float("nan")  # the rounding's time is in the AMP row
    by_name = {c.name: c for c in amp.candidates}
    amp.assembler.set_all({g: by_name[c] for g, c in amp.chosen.config.items()})
    rows.append(row)
    print(markdown_table(rows), flush=True)
    fronts = {label: {"allowed_drop": drop, "front": amp.front_rows(), "chosen": amp.chosen.config, "met": amp.met}}
    png = plots.pareto_plot({label: amp.curve()}, {label: amp.chosen_xy()}, "weight bytes relative to W16", None)
    return {"rows": rows, "fronts": fronts, "png": png}


SECTIONS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {"amp": run_amp, "amp_rounded": run_amp_rounded}
#: sections whose rows and fronts are added to another section's JSON file (rows of the same run replaced)
MERGED_INTO = {"amp_rounded": "amp"}


def _save(name: str, found: dict[str, Any]) -> None:
    target = MERGED_INTO.get(name)
    if target is None:
        (RESULTS / f"weights_{name}.json").write_text(json.dumps(found, indent=1, default=str) + "\n")
        return
    path = RESULTS / f"weights_{target}.json"
    old = json.loads(path.read_text()) if path.exists() else {"rows": [], "fronts": {}}
    runs = {r["run"] for r in found["rows"]}
    old["rows"] = [r for r in old["rows"] if r["run"] not in runs] + found["rows"]
    old["fronts"].update(found["fronts"])
    old[f"settings ({name})"], old[f"seconds ({name})"] = found["settings"], found["seconds"]
    path.write_text(json.dumps(old, indent=1, default=str) + "\n")


def add_data_options(parser: argparse.ArgumentParser, calibration: int, front_evals: int) -> None:
    """The crop counts, batch size and search settings :func:`_setup` and :func:`_search` read."""
    parser.add_argument("--calibration", type=int, default=calibration)
    parser.add_argument("--search", type=int, default=256, help="crops the AMP search scores agreement on")
    parser.add_argument("--probe", type=int, default=32, help="crops of the search set phase 1 scores on")
    parser.add_argument("--evaluation", type=int, default=500, help="held-out crops")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--front-evals", type=int, default=front_evals)
    parser.add_argument("--no-progress", action="store_true")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append", help="run only these sections")
    parser.add_argument("--runs", nargs="*", help="AMP runs by label (default all)")
    add_data_options(parser, calibration=64, front_evals=12)
    parser.add_argument(
        "--adaround-float-inputs",
        action="store_true",
        help="amp_rounded: AdaRound each layer on float inputs (composable per group) instead of the quantized ones",
    )
    parser.add_argument(
        "--amp-rounding",
        choices=["adaround", "gptq"],
        default="adaround",
        help="amp_rounded: how the candidates are rounded (gptq: asymmetric GPTQ on MSE grids)",
    )
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    RESULTS.mkdir(exist_ok=True)
    for name in args.only or sorted(SECTIONS):
        start = time.perf_counter()
        found = SECTIONS[name](args)
        png = found.pop("png", None)
        if png is not None:
            suffix = "_gptq" if name == "amp_rounded" and args.amp_rounding == "gptq" else ""
            (RESULTS / f"weights_{name}{suffix}_pareto.png").write_bytes(png)
        found["settings"] = {k: v for k, v in vars(args).items() if k != "only"}
        found["seconds"] = time.perf_counter() - start
        _save(name, found)
        print(f"\n## {name}\n\n" + markdown_table(found["rows"]))


if __name__ == "__main__":
    main()
