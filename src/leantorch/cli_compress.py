"""``leantorch compress``: compress a model to a MAC target on held-out agreement with the original, with
``--refit``/``--recover`` re-fit it by least squares and/or distil it from the original, write the compressed
model (TorchScript and ONNX), its HTML report and, with ``--quantize``, a quantized export; print the ONNX
Runtime latency of original and compressed.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .cli_args import COMPRESS_DEFAULTS, COMPRESS_QUANTIZE, COMPRESS_THOROUGH
from .cli_common import check_names, fill_defaults, model_and_data
from .cli_recover import recover, recovery_samples, refit
from .data import batches
from .errors import DataError
from .graph import prepare
from .ptq.bn_fold import fold_batch_norms
from .quant.sim import QuantSim
from .staging import staged_outputs

__all__ = ["cmd_compress", "quantize_preset"]


def cmd_compress(args: argparse.Namespace) -> int:
    """Run ``leantorch compress`` with parsed arguments; returns the exit status (0)."""
    from . import compress as compression
    from .compress.latency import export_float_onnx
    from .compress.report import write_report
    from .evaluation import agreement_score, markdown_table

    fill_defaults(args, COMPRESS_DEFAULTS, COMPRESS_THOROUGH)
    with staged_outputs() as staging, tempfile.TemporaryDirectory() as scratch:
        out = staging.directory(args.out)
        held_out = args.num_samples + args.eval_samples  # then the extra samples of --recover, if any
        model, data = model_and_data(args, held_out + recovery_samples(args), DataError)
        if len(data) <= args.num_samples:
            raise DataError(
                f"--data has {len(data)} samples; compress needs more than --num-samples "
                f"({args.num_samples}) to hold some out for scoring"
            )
        calib = batches(data[: args.num_samples], args.batch_size)
        evals = batches(data[args.num_samples : held_out], args.batch_size)
        example = calib[0][:1]
        if args.skip:
            check_names("--skip", args.skip, list(compression.cost(prepare(model, example), example).layers))
        # The long part starts here. An OutputScore (not a plain function): the eval-score table then runs only
        # the part of the model after each candidate layer.
        agreement = agreement_score(model, evals)

        # The eval-score tables are a cache, not an output: they go straight to --out, so that a later
        # run (another --target, or after a failure further on) reuses them.
        compressed, info = compression.compress(
            model,
            example,
            agreement,
            args.scheme,
            args.target,
            calibration=calib,
            candidates=args.candidates,
            rank_multiple=args.rank_multiple,
            skip_layers=args.skip,
            cache_dir=args.out,
            progress=not args.no_progress,
            workers=args.workers,
            ray_address=args.ray_address,
        )
        summary = {
            "scheme": info.scheme,
            "MAC ratio": info.mac_ratio,
            "MACs before": info.macs_before,
            "MACs after": info.macs_after,
            "top-1 agreement": info.score,
        }
        # never on the scoring samples: calibration ones and the extra ones
        train = torch.cat([data[: args.num_samples], data[held_out:]])
        if args.refit:
            compressed, refitted = refit(model, compressed, train, agreement, args)
            summary.update(refitted)
        if args.recover is not None:
            compressed, recovered = recover(model, compressed, train, agreement, args)
            summary.update(recovered)
        # TorchScript, not a pickled module: it loads without leantorch, and torch 2.13 cannot pickle fx graphs.
        torch.jit.save(torch.jit.trace(compressed, example), str(out / "compressed.pt"))
        export_float_onnx(compressed, example, out / "compressed.onnx")
        timed: dict[str, Any] = {"original": model, "compressed": out / "compressed.onnx"}
        if args.quantize:
            name = f"compressed_{args.quantize}"
            sim = quantize_preset(compressed, example, calib, args.quantize)
            summary[f"top-1 agreement {args.quantize}"] = agreement(sim.model)
            timed[f"original {args.quantize}"] = quantize_preset(model, example, calib, args.quantize).export(
                scratch, "original"
            )["onnx"]
            timed[name] = sim.export(out, name)["onnx"]
        print(markdown_table([summary]))
        # What the MAC ratio buys in a runtime: ONNX Runtime on the original and the compressed model (and their
        # quantized exports), runs alternated; ratios against the original (float, or quantized the same way).
        rows = []
        for pair in ([*timed][:2], [*timed][2:]):
            if pair:
                rows += [
                    {**row, "MAC ratio": info.mac_ratio if row["model"].startswith("compressed") else 1.0}
                    for row in compression.compare_latency({k: timed[k] for k in pair}, example, repeats=10)
                ]
        print(markdown_table(rows))
        write_report(info, out / "compression_report.html", plots_dir=out, latency=rows)
    final = Path(args.out)
    quantized = f", {final / f'compressed_{args.quantize}'}.{{onnx,encodings,pth}}" if args.quantize else ""
    print(
        f"wrote {final / 'compressed.pt'}, {final / 'compressed.onnx'}, {final / 'compression_report.html'}{quantized}"
    )
    return 0


def quantize_preset(model: nn.Module, example: torch.Tensor, calib: list[torch.Tensor], preset: str) -> QuantSim:
    """``compress --quantize``: BN folded, per-channel weights, calibrated QuantSim of a (compressed) model."""
    param_bw, act_bw = COMPRESS_QUANTIZE[preset]
    sim = QuantSim(fold_batch_norms(model, example)[0], example, param_bw=param_bw, act_bw=act_bw, per_channel=True)
    sim.compute_encodings(calib, progress=False)
    return sim
