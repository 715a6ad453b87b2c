"""The ``leantorch`` command: ``quantize`` a model from a factory function, or run the ``demo``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .errors import LeanTorchError
from .ptq.adaround import adaround
from .ptq.bias_correction import bias_correction
from .ptq.bn_fold import fold_batch_norms
from .ptq.cle import equalize
from .quant.sim import QuantSim


def load_model(spec: str) -> nn.Module:
    """Build a model from ``package.module:factory`` (the factory is called without arguments).

    Example:
        >>> type(load_model("leantorch.models:ResNetSmall")).__name__
        'ResNetSmall'
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise LeanTorchError(f"--model must look like package.module:factory, got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise LeanTorchError(f"cannot load {spec!r}: {exc}") from exc
    model = factory()
    if not isinstance(model, nn.Module):
        raise LeanTorchError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def load_data(spec: str, count: int, image_size: int) -> torch.Tensor:
    """Calibration samples from ``DIR`` (images), ``file.npy`` (an array ``[N, ...]``) or
    ``builtin:images`` (crops of the scikit-image photographs).

    Example:
        >>> load_data("builtin:images", 2, 32).shape
        torch.Size([2, 3, 32, 32])
    """
    if spec == "builtin:images":
        from .data import sample_images

        return sample_images(count, size=image_size, seed=0)
    path = Path(spec)
    if path.suffix == ".npy" and path.is_file():
        array = np.load(path)
        return torch.from_numpy(np.asarray(array[:count], dtype=np.float32))
    if path.is_dir():
        return _load_image_dir(path, count, image_size)
    raise LeanTorchError(f"--data {spec!r} is neither a directory, a .npy file nor builtin:images")


def _load_image_dir(path: Path, count: int, image_size: int) -> torch.Tensor:
    from skimage.io import imread

    from .data import IMAGENET_MEAN, IMAGENET_STD

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))[:count]
    if not files:
        raise LeanTorchError(f"no .png/.jpg/.bmp images in {path}")
    images = []
    for file in files:
        arr = np.asarray(imread(file))
        arr = np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr[..., :3]
        img = torch.from_numpy(arr.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        images.append(torch.nn.functional.interpolate(img, size=(image_size, image_size), mode="bilinear",
                                                      antialias=True, align_corners=False)[0])
    batch = torch.stack(images)
    mean = torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1)
    return (batch - mean) / std


def _model_and_data(args: argparse.Namespace) -> tuple[nn.Module, list[torch.Tensor], dict]:
    """The model, calibration batches and QuantSim options of ``quantize``/``analyze`` arguments."""
    from .data import batches

    model = load_model(args.model)
    calib = batches(load_data(args.data, args.num_samples, args.image_size), args.batch_size)
    options = {"param_bw": args.param_bw, "act_bw": args.act_bw, "scheme": args.scheme,
               "per_channel": args.per_channel or None, "config": args.config}
    return model, calib, options


def _cmd_quantize(args: argparse.Namespace) -> int:
    from .evaluation import Agreement, markdown_table, model_outputs
    from .ptq.auto import auto_quant

    model, calib, options = _model_and_data(args)
    example = calib[0][:1]
    progress = not args.no_progress
    reference = model_outputs(model, calib, progress=progress, desc="FP32")
    if args.auto:
        def agreement(candidate: torch.nn.Module) -> float:
            return Agreement.of(reference, model_outputs(candidate, calib, progress=False)).top1

        result = auto_quant(model, example, calib, agreement, allowed_drop=args.allowed_drop, path=args.out,
                            progress=progress, **options)
        print(markdown_table(result.stages))
        sim = result.sim
    else:
        sim = _apply_techniques(model, example, calib, args, options, progress)
    quantized = model_outputs(sim.model, calib, progress=progress, desc="quantized")
    result_row = Agreement.of(reference, quantized)
    print(markdown_table([{"model": f"W{args.param_bw}A{args.act_bw}", "top-1 agreement": result_row.top1,
                           "KL divergence": result_row.kl, "output SQNR (dB)": result_row.sqnr_db}]))
    files = sim.export(args.out, args.name, unsigned_weights=args.uint8_weights)
    print(f"exported: {', '.join(str(p) for p in files.values())}")
    return 0


def _apply_techniques(model: torch.nn.Module, example: torch.Tensor, calib: list[torch.Tensor],
                      args: argparse.Namespace, options: dict, progress: bool) -> "QuantSim":
    """--fold-bn / --cle → --bias-correction → --adaround → calibrated QuantSim."""
    if args.cle:
        model = equalize(model, example)
    elif args.fold_bn:
        model, pairs = fold_batch_norms(model, example)
        print(f"folded {len(pairs)} batch norm(s)")
    if args.bias_correction:
        model = bias_correction(model, example, calib, method=args.bias_correction, progress=progress, **options)
    encodings = None
    if args.adaround:
        model, encodings = adaround(model, example, calib, param_bw=args.param_bw, act_bw=args.act_bw,
                                    per_channel=args.per_channel, scheme=args.scheme, config=args.config,
                                    path=args.out, iterations=args.adaround_iterations, lr=args.adaround_lr,
                                    progress=progress)
    sim = QuantSim(model, example, **options)
    if encodings is not None:
        sim.set_and_freeze_param_encodings(encodings)
    sim.compute_encodings(calib, progress=progress)
    return sim


def _cmd_analyze(args: argparse.Namespace) -> int:
    from .analysis import analyze
    from .evaluation import markdown_table, sqnr_score

    model, calib, options = _model_and_data(args)
    example = calib[0][:1]
    progress = not args.no_progress
    sim = _apply_techniques(model, example, calib, args, options, progress)
    report = analyze(sim, sqnr_score(model, calib[:1]), calib, layers=args.layers,
                     sensitivity=not args.no_sensitivity, progress=progress)
    if args.cle:
        report.add_equalization(fold_batch_norms(model, example)[0], sim.model)
    print(markdown_table(report.summary_rows()))
    print(f"report: {report.to_html(args.out)}")
    if args.plots:
        print(f"plots: {len(report.save_plots(args.plots))} PNG files in {args.plots}")
    return 0


def _cmd_compress(args: argparse.Namespace) -> int:
    from . import compress as compression
    from .compress.report import write_report
    from .data import batches
    from .evaluation import Agreement, markdown_table, model_outputs

    model = load_model(args.model)
    data = load_data(args.data, args.num_samples + args.eval_samples, args.image_size)
    if len(data) <= args.num_samples:
        raise LeanTorchError(f"--data has {len(data)} samples; compress needs more than --num-samples "
                             f"({args.num_samples}) to hold some out for scoring")
    calib, evals = batches(data[:args.num_samples], args.batch_size), batches(data[args.num_samples:], args.batch_size)
    progress = not args.no_progress
    reference = model_outputs(model, evals, progress=False)

    def agreement(candidate: torch.nn.Module) -> float:
        return Agreement.of(reference, model_outputs(candidate, evals, progress=False)).top1

    out = Path(args.out)
    compressed, info = compression.compress(
        model, calib[0][:1], agreement, args.scheme, args.target, calibration=calib, candidates=args.candidates,
        rank_multiple=args.rank_multiple, skip_layers=args.skip, cache_dir=out, progress=progress)
    print(markdown_table([{"scheme": info.scheme, "MAC ratio": info.mac_ratio, "MACs before": info.macs_before,
                           "MACs after": info.macs_after, "top-1 agreement": info.score}]))
    out.mkdir(parents=True, exist_ok=True)
    # TorchScript, not a pickled module: it loads without leantorch, and torch 2.13 cannot pickle fx graphs.
    torch.jit.save(torch.jit.trace(compressed, calib[0][:1]), str(out / "compressed.pt"))
    _export_float_onnx(compressed, calib[0][:1], out / "compressed.onnx")
    report = write_report(info, out / "compression_report.html", plots_dir=out)
    print(f"wrote {out / 'compressed.pt'}, {out / 'compressed.onnx'}, {report}")
    return 0


def _export_float_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, calibration=args.calibration, evaluation=args.evaluation, batch_size=args.batch_size,
             progress=not args.no_progress)
    return 0


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``quantize`` and ``analyze``: model, data, bitwidths, techniques."""
    p.add_argument("--model", required=True, help="package.module:factory returning an nn.Module "
                   "(e.g. leantorch.models:efficientnet_lite0)")
    p.add_argument("--data", required=True, help="calibration data: a directory of images, a .npy array "
                   "[N, ...] of model inputs, or builtin:images (scikit-image photograph crops)")
    p.add_argument("--param-bw", type=int, default=8, help="weight bitwidth, 2-16 or 32 (default 8)")
    p.add_argument("--act-bw", type=int, default=8, help="activation bitwidth, 2-16 or 32 (default 8)")
    p.add_argument("--scheme", default="tf_enhanced", choices=["minmax", "tf_enhanced", "percentile", "mse"],
                   help="range estimator (default tf_enhanced)")
    p.add_argument("--per-channel", action="store_true", help="per-channel weight quantization")
    p.add_argument("--config", default="default", help="config preset (default, per_channel) or JSON file")
    p.add_argument("--fold-bn", action="store_true", help="fold batch norms into the preceding layers first")
    p.add_argument("--cle", action="store_true", help="cross-layer equalization (folds BN, scales layer pairs "
                   "and depthwise triplets, absorbs high biases)")
    p.add_argument("--bias-correction", choices=["empirical", "analytical", "hybrid"],
                   help="correct the mean output error of weight quantization")
    p.add_argument("--adaround", action="store_true", help="learn weight rounding (AdaRound) and freeze the "
                   "weight encodings")
    p.add_argument("--adaround-iterations", type=int, default=10_000, help="AdaRound iterations per layer "
                   "(default 10000, as in the paper)")
    p.add_argument("--adaround-lr", type=float, default=1e-3, help="AdaRound Adam learning rate (default 1e-3, "
                   "as in the paper; 1000 iterations at 1e-2 reach about the same objective ten times faster)")
    p.add_argument("--num-samples", type=int, default=256, help="calibration samples to use (default 256)")
    p.add_argument("--batch-size", type=int, default=32, help="calibration batch size (default 32)")
    p.add_argument("--image-size", type=int, default=224, help="image side for image data (default 224)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``leantorch`` command."""
    parser = argparse.ArgumentParser(prog="leantorch", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log diagnostics (INFO level)")
    sub = parser.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quantize", help="calibrate a QuantSim and export ONNX QDQ + encodings + weights",
                       description="Quantize a model: trace it, optionally apply post-training techniques, "
                                   "calibrate on data, print agreement with FP32 on that data, export "
                                   "OUT/NAME.{onnx,encodings,pth}.")
    _add_model_options(q)
    q.add_argument("--auto", action="store_true", help="AutoQuant: BN fold, then CLE, then AdaRound, stopping "
                   "at the first whose top-1 agreement with FP32 (on the data) is within --allowed-drop")
    q.add_argument("--allowed-drop", type=float, default=0.01, help="allowed top-1 agreement drop for --auto "
                   "(default 0.01)")
    q.add_argument("--out", default="out", help="output directory (default out)")
    q.add_argument("--name", default="model", help="file name prefix (default model)")
    q.add_argument("--uint8-weights", action="store_true", help="store symmetric weights as uint8 with zero "
                   "point 128 (same grid): ONNX Runtime's fused kernels then stay exact on x86 CPUs without VNNI; "
                   "leave off for TensorRT/QNN, which expect int8 weights")
    q.set_defaults(func=_cmd_quantize)

    a = sub.add_parser("analyze", help="quantization analysis: per-layer sensitivity, SQNR, ranges -> HTML report",
                       description="Quantize a model as `quantize` does, then analyse where accuracy is lost "
                                   "(score: output SQNR in dB against FP32 on the data, higher is better) and "
                                   "write one self-contained HTML report (and, with --plots, the PNGs).")
    _add_model_options(a)
    a.add_argument("--out", default="report.html", help="HTML report path (default report.html)")
    a.add_argument("--plots", help="also write every plot as PNG into this directory")
    a.add_argument("--layers", nargs="+", help="layers for the sensitivity sweep (default: every quantized layer)")
    a.add_argument("--no-sensitivity", action="store_true", help="skip the per-layer sensitivity sweep")
    a.set_defaults(func=_cmd_analyze)

    c = sub.add_parser("compress", help="reduce MACs: weight SVD, spatial SVD, channel pruning (greedy ratios)",
                       description="Compress a model to a target MAC ratio. Per-layer ratios are chosen greedily "
                                   "from an eval-score table (score: top-1 agreement with FP32 on held-out "
                                   "samples of the data), cached in OUT. Writes OUT/compressed.pt (TorchScript: "
                                   "torch.jit.load), OUT/compressed.onnx (float), "
                                   "OUT/compression_report.html and the sensitivity curves as PNG.")
    c.add_argument("--model", required=True, help="package.module:factory returning an nn.Module")
    c.add_argument("--data", required=True, help="a directory of images, a .npy array [N, ...] of model inputs, "
                   "or builtin:images")
    c.add_argument("--scheme", nargs="+", default=["spatial_svd"], choices=["weight_svd", "spatial_svd",
                   "channel_pruning"], help="one scheme, or several run as stages (e.g. spatial_svd "
                   "channel_pruning); default spatial_svd")
    c.add_argument("--target", type=float, default=0.5, help="MACs after / before, in (0, 1) (default 0.5)")
    c.add_argument("--candidates", type=int, default=10, help="candidate ratios per layer (default 10)")
    c.add_argument("--rank-multiple", type=int, default=8, help="round ranks/channels up to a multiple (default 8)")
    c.add_argument("--skip", nargs="+", default=[], help="layer names to leave uncompressed")
    c.add_argument("--num-samples", type=int, default=64, help="samples for channel-pruning statistics (default 64)")
    c.add_argument("--eval-samples", type=int, default=64, help="held-out samples scoring each candidate "
                   "(default 64)")
    c.add_argument("--batch-size", type=int, default=16, help="batch size (default 16)")
    c.add_argument("--image-size", type=int, default=224, help="image side for image data (default 224)")
    c.add_argument("--out", default="out", help="output directory (default out)")
    c.add_argument("--no-progress", action="store_true", help="hide progress bars")
    c.set_defaults(func=_cmd_compress)

    d = sub.add_parser("demo", help="quantize the pretrained EfficientNet-Lite0 and print an agreement table",
                       description="EfficientNet-Lite0 (ImageNet-pretrained), calibration and evaluation crops "
                                   "of the scikit-image photographs with disjoint seeds; prints top-1 "
                                   "agreement, KL divergence and output SQNR against FP32; exports to OUT.")
    d.add_argument("--out", default="out", help="output directory (default out)")
    d.add_argument("--calibration", type=int, default=128, help="calibration crops (default 128)")
    d.add_argument("--evaluation", type=int, default=256, help="evaluation crops (default 256)")
    d.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    d.add_argument("--no-progress", action="store_true", help="hide progress bars")
    d.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``leantorch`` command; returns the exit code.

    Example:
        >>> main(["quantize", "--help"])  # doctest: +SKIP
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except LeanTorchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
