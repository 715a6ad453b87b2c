"""Compression demonstration (issue 14 item 5): spatial SVD + channel pruning at MAC ratios 0.9, 0.75 and 0.5,
then recovery by distillation, then W8A8, each scored against the FP32 original, with ONNX Runtime latency.

Models:
    efficientnet: ImageNet-pretrained EfficientNet-Lite0; data: crops of the built-in photographs (unlabeled).
        Every conv of it is 1×1 or depthwise except the 3-channel stem, so spatial SVD finds nothing that gets
        cheaper: its stage target is 1.0 and channel pruning takes the whole target (``stage_targets``).
    resnet: the ResNet-style ``ResNetSmall`` trained on scikit-learn digits (32×32); unlabeled training
        images for the recovery, agreement (and accuracy) on the test split. Stage targets split evenly.

Per (model, target): the compressed model's top-1 agreement with FP32 on held-out samples before and after
``lt.compress.refit_layers`` and then ``lt.compress.distill`` (KL on softened logits; both within
``--recover-minutes`` of wall time; early stopping on a separate validation set), then W8A8 (BN folded,
per-channel weights, QuantSim) scored in simulation and as the exported QDQ model in ONNX Runtime, and
``lt.compress.compare_latency`` (ONNX Runtime, batch 1 and 32; FP32 compressed vs FP32 original, and INT8 QDQ vs
the original's INT8 QDQ). Rows are merged into ``benchmarks/results/compress.json`` as soon as each is done
(keyed by model and target).

Run: ``.venv/bin/python benchmarks/compress.py --part efficientnet --ratios 0.75 --recover-minutes 20
--eval-images 1000`` (``--no-refit`` for distillation alone).

Measured (2026-12-05, quiet 2-core machine, 2 torch threads; agreement on 1,000 held-out crops / the 449 digits
test images; recovery = ``lt.compress.refit_layers`` on 512 training crops, then ``lt.compress.distill`` (Adam 2e-5,
early stopping on 128 validation crops) for the rest of the budget; latency ratios compressed / original in ONNX
Runtime, 10 alternated rounds, noisy at batch 1):

| model, target | MACs | before | re-fit (s) | recovery (total s) | W8A8 ORT | FP32 lat. b1/b32 | INT8 lat. b1/b32 |
|---|---|---|---|---|---|---|---|
| EfficientNet-Lite0 0.9 | 0.898 | 0.814 | 0.882 (96) | 0.882 (218) | 0.803 | 0.96 / 1.00 | 0.76 / 0.90 |
| EfficientNet-Lite0 0.75 | 0.749 | 0.717 | **0.819** (92) | 0.819 (202) | 0.743 | 0.81 / 0.83 | 0.92 / 0.83 |
| EfficientNet-Lite0 0.5 | 0.498 | 0.632 | 0.725 (61) | 0.725 (134) | 0.685 | 0.43 / 0.58 | 0.96 / 0.65 |
| digits ResNet 0.9 | 0.878 | 0.998 | 1.000 (1) | 1.000 (9) | 0.998 | 0.96 / 0.84 | 0.92 / 0.94 |
| digits ResNet 0.75 | 0.746 | 0.996 | 0.998 (1) | 0.998 (8) | 0.998 | 0.69 / 0.88 | 0.77 / 1.34 |
| digits ResNet 0.5 | 0.498 | 0.993 | 0.996 (4) | 0.996 (9) | 0.996 | 0.67 / 0.65 | 0.69 / 0.77 |

Distillation after the re-fit stopped early every time with its first weights kept (the held-out KL did not
improve within 50 steps; at 1e-4 it undid the re-fit). Distillation alone (2026-12-04 rows of the JSON, the same
compressed model) reached 0.737 after 18 minutes (270 steps). The goal (>= 0.80 at 0.75 MACs after <= 20 minutes)
is met by the re-fit in 92 s -- on crops of the same 14 photographs it was fitted on. Re-fitted on crops of 10 of the
photographs and scored on the other 4 (``/tmp`` check, see the README), it generalises badly: seen photographs
0.704 -> 0.804, unseen ones 0.764 -> 0.656 (ridge 1.0: 0.768 / 0.724): with 14 photographs the recovery data
is too narrow; a user's own few hundred images are what it should be fitted on.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import leantorch as lt
from leantorch.cli_compress import quantize_preset
from leantorch.data import batches, channels_last, digits, sample_images
from leantorch.evaluation import Agreement, markdown_table, model_outputs, sqnr_score
from leantorch.models import ResNetSmall, accuracy, efficientnet_lite0, train_classifier

RESULTS = Path(__file__).parent / "results" / "compress.json"


class Setup:
    """One model and its data: the FP32 original, unlabeled training samples for the recovery, validation
    samples for its early stopping, calibration batches, and evaluation batches with the FP32 reference."""

    def __init__(self, name: str, model: torch.nn.Module, train: torch.Tensor, validation: torch.Tensor,
                 calibration: list[torch.Tensor], evals: list[torch.Tensor], stage_targets: Any,
                 labels: torch.Tensor | None = None) -> None:  # fmt: skip
        self.name, self.model, self.train, self.validation = name, model, train, validation
        self.calibration, self.evals, self.stage_targets, self.labels = calibration, evals, stage_targets, labels
        self.example = calibration[0][:1]
        self.reference = model_outputs(model, evals, progress=False)

    def agreement(self, outputs: torch.Tensor) -> float:
        return Agreement.of(self.reference, outputs).top1

    def scores(self, model: torch.nn.Module) -> dict[str, float]:
        outputs = model_outputs(model, self.evals, progress=False)
        row = {"agreement": self.agreement(outputs), "kl": Agreement.of(self.reference, outputs).kl}
        if self.labels is not None:
            row["accuracy"] = float((outputs.argmax(-1) == self.labels).float().mean())
        return row


def efficientnet_setup(args: argparse.Namespace) -> Setup:
    model = efficientnet_lite0().eval()
    model, _ = channels_last(model, sample_images(1, size=32))  # 2-3x faster CPU convs (values unchanged)
    layout = torch.channels_last
    train = sample_images(args.train_images, seed=3).contiguous(memory_format=layout)
    validation = sample_images(args.validation_images, seed=4)
    calibration = batches(sample_images(64, seed=0), 16)
    evals = batches(sample_images(args.eval_images, seed=1).contiguous(memory_format=layout), 32)
    # Spatial SVD cannot make a 1x1 or depthwise conv cheaper: its stage keeps everything (see the docstring).
    return Setup("EfficientNet-Lite0", model, train, validation, calibration, evals, lambda t: (1.0, t))


def resnet_setup(args: argparse.Namespace) -> Setup:
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = digits(size=32)
    model = ResNetSmall(num_classes=10, in_channels=1, width=32)
    cached = Path(args.cache_dir) / "digits_resnet.pt"  # the trained weights, reused by later runs
    if cached.exists():
        model.load_state_dict(torch.load(cached))
    else:
        train_classifier(model, x_train, y_train, epochs=10)
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), cached)
    model.eval()
    train, validation = x_train[:-256], x_train[-256:]  # labels unused: the recovery is unlabeled
    print(f"digits ResNet FP32 test accuracy {accuracy(model, x_test, y_test):.4f}", flush=True)
    return Setup("digits ResNet", model, train, validation, batches(x_train[:256], 64), batches(x_test, 128),
                 lambda t: None, labels=y_test)  # fmt: skip


def qdq(model: torch.nn.Module, setup: Setup, out: Path, name: str) -> tuple[Any, Path]:
    """W8A8 per-channel QuantSim (BN folded) of ``model`` and its exported QDQ ONNX file."""
    sim = quantize_preset(model, setup.example, setup.calibration, "w8a8")
    # uint8 weights (zero point 128, the same grid): ONNX Runtime's fused int8 kernels saturate on x86 CPUs
    # without VNNI with int8 weights (DESIGN.md's traps), which cost the digits ResNet 0.4 agreement in a first run.
    return sim, sim.export(out, name, unsigned_weights=True)["onnx"]


def onnx_agreement(path: Path, setup: Setup, optimized: bool = True) -> float:
    """Top-1 agreement of the QDQ file run by ONNX Runtime, with its graph optimizations (fused int8 kernels,
    what a deployment gets) or without them (the exact QDQ arithmetic)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    outputs = [torch.from_numpy(session.run(None, {feed: b.contiguous().numpy()})[0]) for b in setup.evals]
    return setup.agreement(torch.cat(outputs))


def latency(models: dict[str, Any], setup: Setup, args: argparse.Namespace) -> dict[str, float]:
    rows = lt.compress.compare_latency(models, setup.example.contiguous(), repeats=args.repeats, threads=args.threads)
    return {f"batch {r['batch']}": r["latency ratio"] for r in rows if r["model"] != next(iter(models))}


def run_target(setup: Setup, target: float, minutes: float, original_qdq: Path, out: Path,
               args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    start = time.perf_counter()
    compressed, info = lt.compress(
        setup.model,
        setup.example,
        sqnr_score(setup.model, batches(setup.validation[: args.table_images], 16)),
        ["spatial_svd", "channel_pruning"],
        target,
        calibration=setup.calibration,
        stage_targets=setup.stage_targets(target),
        candidates=args.candidates,
        cache_dir=Path(args.cache_dir) / setup.name.replace(" ", "_"),
        progress=False,
    )
    compress_s = time.perf_counter() - start
    before = setup.scores(compressed)
    print(f"{setup.name} {target}: MAC ratio {info.mac_ratio:.3f}, before recovery {before}", flush=True)
    refit_row: dict[str, Any] = {}
    budget = minutes
    if args.refit:  # the recovery's first part: least squares, layer by layer, on the same training samples
        fitted = lt.compress.refit_layers(compressed, setup.model, setup.train, max_samples=args.refit_samples,
                                          progress=args.progress)  # fmt: skip
        compressed, refit_scores = fitted.model, setup.scores(fitted.model)
        print(f"  after re-fit ({fitted.seconds:.0f} s, {len(fitted.refitted)} layers): {refit_scores}", flush=True)
        refit_row = {"agreement after re-fit": refit_scores["agreement"], "KL after re-fit": refit_scores["kl"],
                     "re-fit seconds": fitted.seconds, "re-fit layers": len(fitted.refitted),
                     "re-fit samples": min(args.refit_samples, len(setup.train))}  # fmt: skip
        minutes -= fitted.seconds / 60.0  # the budget covers both parts of the recovery
    result = lt.compress.distill(
        compressed,
        setup.model,
        setup.train,
        [setup.validation],
        epochs=None,
        max_minutes=max(minutes, 0.05),
        lr=args.lr,
        batch_size=args.batch_size,
        eval_every=args.eval_every,
        patience=args.patience,
        mode=args.recover_mode,
        progress=args.progress,
    )
    after = setup.scores(result.model)
    print(f"  after {result.steps} steps ({result.seconds:.0f} s, {result.stop_reason}): {after}", flush=True)
    sim, path = qdq(result.model, setup, out, f"{setup.name}_{target}".replace(" ", "_"))
    w8a8 = setup.scores(sim.model)
    onnx, exact = onnx_agreement(path, setup), onnx_agreement(path, setup, optimized=False)
    fp32_latency = latency({"original": setup.model, "compressed": result.model}, setup, args)
    int8_latency = latency({"original": original_qdq, "compressed": path}, setup, args)
    row = {
        "model": setup.name + (" (layerwise recovery)" if args.recover_mode == "layerwise" else ""),
        "target": target,
        "MAC ratio": info.mac_ratio,
        "params ratio": info.params_after / info.params_before,
        "pruned layers": len(info.stages[-1].ratios),
        "not prunable": len(info.stages[-1].skipped),
        "agreement before recovery": before["agreement"],
        "agreement after recovery": after["agreement"],
        "KL before": before["kl"],
        "KL after": after["kl"],
        "agreement W8A8 (sim)": w8a8["agreement"],
        "agreement W8A8 (ONNX Runtime)": onnx,
        "agreement W8A8 (ONNX Runtime, no graph optimizations)": exact,
        "W8A8 weights": "uint8, zero point 128",
        "latency ratio FP32 batch 1": fp32_latency["batch 1"],
        "latency ratio FP32 batch 32": fp32_latency["batch 32"],
        "latency ratio INT8 batch 1": int8_latency["batch 1"],
        "latency ratio INT8 batch 32": int8_latency["batch 32"],
        **refit_row,
        "recovery minutes (budget)": budget,
        "distillation seconds": result.seconds,
        "recovery seconds": result.seconds + refit_row.get("re-fit seconds", 0.0),
        "recovery steps": result.steps,
        "recovery samples seen": result.steps * args.batch_size,
        "recovery stop": result.stop_reason,
        "best step": result.best_step,
        "compress seconds": compress_s,
        "history": result.history,
    }
    if "accuracy" in before:
        row.update({k: v for k, v in (("accuracy before", before["accuracy"]), ("accuracy after", after["accuracy"]),
                                      ("accuracy W8A8 (sim)", w8a8["accuracy"]))})  # fmt: skip
    return row


def save(rows: list[dict[str, Any]], path: Path, settings: dict[str, Any]) -> None:
    """Merge ``rows`` into the JSON file, replacing earlier rows of the same model and target."""
    old = json.loads(path.read_text()) if path.exists() else {"rows": []}
    keys = {(r["model"], r["target"]) for r in rows}
    kept = [r for r in old.get("rows", []) if (r["model"], r["target"]) not in keys]
    merged = sorted(kept + rows, key=lambda r: (r["model"], -r["target"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": {**old.get("settings", {}), **settings}, "rows": merged}, indent=1))


def summary(rows: list[dict[str, Any]]) -> str:
    keys = [
        "model", "target", "MAC ratio", "agreement before recovery", "agreement after recovery",
        "agreement W8A8 (ONNX Runtime)", "latency ratio FP32 batch 1", "latency ratio FP32 batch 32",
        "latency ratio INT8 batch 1", "latency ratio INT8 batch 32", "recovery seconds", "recovery steps",
    ]  # fmt: skip
    return markdown_table([{k: r.get(k, "") for k in keys} for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["efficientnet", "resnet", "all"], default="all")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.9, 0.75, 0.5])
    parser.add_argument("--recover-minutes", type=float, default=20.0, help="EfficientNet recovery budget")
    parser.add_argument("--resnet-recover-minutes", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=2e-5, help="distillation's Adam learning rate (1e-4 without "
                        "--refit: after a re-fit, 1e-4 undid it within 50 steps)")  # fmt: skip
    parser.add_argument("--no-refit", dest="refit", action="store_false",
                        help="recover by distillation alone (default: lt.compress.refit_layers first)")  # fmt: skip
    parser.add_argument("--refit-samples", type=int, default=512, help="training crops used by the re-fit")
    parser.add_argument("--recover-mode", choices=["end_to_end", "layerwise"], default="end_to_end")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-every", type=int, default=10, help="training steps between validation scores")
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--candidates", type=int, default=5)
    parser.add_argument("--table-images", type=int, default=32, help="samples scoring each eval-score entry")
    parser.add_argument("--train-images", type=int, default=1024, help="unlabeled crops for the recovery")
    parser.add_argument("--validation-images", type=int, default=128, help="early-stopping crops")
    parser.add_argument("--eval-images", type=int, default=512, help="crops scoring agreement with FP32")
    parser.add_argument("--repeats", type=int, default=10, help="ONNX Runtime timing rounds per batch size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", default="out/compress_tables", help="eval-score tables are reused from here")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--progress", action="store_true", help="show the recovery's progress bar")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    np.random.seed(0)
    parts = [args.part] if args.part != "all" else ["resnet", "efficientnet"]
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "progress")}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        for part in parts:
            setup = efficientnet_setup(args) if part == "efficientnet" else resnet_setup(args)
            minutes = args.recover_minutes if part == "efficientnet" else args.resnet_recover_minutes
            print(f"{setup.name} FP32 reference on {sum(len(b) for b in setup.evals)} samples", flush=True)
            _, original_qdq = qdq(setup.model, setup, out, f"{part}_original")
            for target in args.ratios:
                rows.append(run_target(setup, target, minutes, original_qdq, out, args))
                rows[-1]["run settings"] = settings  # rows of several runs share the file
                save(rows[-1:], args.json, {"torch threads": torch.get_num_threads(), **settings})
                print(summary(rows[-1:]), flush=True)
    print("\n" + summary(rows))


if __name__ == "__main__":
    main()
