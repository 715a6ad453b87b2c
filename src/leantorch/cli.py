"""The ``leantorch`` command: ``quantize``, ``analyze`` or ``compress`` a model from a factory function,
or run the ``demo``.

Every argument, the output location and the data are checked before any long computation. A mistake
(in an argument, the data, the model spec or the output path) is reported as ONE line ``error: ...`` on
stderr with exit status 2; ``--debug`` re-raises it with the full traceback instead. Ctrl-C prints
``interrupted`` and exits with 130. An unexpected exception is a bug (in leantorch or the user's model):
its traceback is printed, then a one-line summary, exit status 1 — the traceback is shown without
``--debug`` because rerunning a long calibration just to see it would be costly, and the failure may
not repeat. An ``OSError`` (disk full, a file removed meanwhile) is the environment, not a bug: one line,
exit status 1. Outputs are written to temporary paths next to their destination and moved into place only
when the whole command succeeded (see :mod:`leantorch.staging`).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .allocator import keep_freed_memory
from .cli_amp import amp_sim, check_amp
from .cli_args import (
    ADAROUND_DEFAULTS,
    ADAROUND_SAMPLES,
    ADAROUND_THOROUGH,
    UsageError,
    build_parser,
)
from .cli_common import check_names, fill_defaults, load_model, model_and_data
from .cli_compress import cmd_compress
from .data import batches, load_data
from .errors import (
    CalibrationDataError,
    InvalidOptionError,
    LeanTorchError,
)
from .parallel import check_backend
from .ptq.adaround import adaround
from .ptq.bias_correction import bias_correction
from .ptq.block_reconstruction import reconstruct
from .ptq.bn_fold import fold_batch_norms
from .ptq.cle import equalize
from .ptq.gptq import gptq
from .ptq.seq_mse import seq_mse
from .quant.config import load_config
from .quant.estimator_base import every_value_histograms
from .quant.float_formats import set_float_format
from .quant.sim import QuantSim
from .staging import staged_outputs

__all__ = ["build_parser", "load_data", "load_model", "main"]

# Their old names here (tests and scripts import them from this module).
_check_names, _fill_defaults = check_names, fill_defaults


def _sim_options(args: argparse.Namespace) -> dict:
    config: Any = args.config
    if getattr(args, "param_block_size", None) or getattr(args, "decompressed_bw", None):
        # in the config, so that every technique's own QuantSim (bias correction, AdaRound...) has the blocks too
        config = load_config(args.config).with_blocks(args.param_block_size, args.decompressed_bw, args.param_bw)
    return {
        "param_bw": args.param_bw,
        "act_bw": args.act_bw,
        "scheme": args.scheme,
        "per_channel": args.per_channel or None,
        "config": config,
    }


# ---------------------------------------------------------------------------------------------- techniques
def _structural(model: nn.Module, example: torch.Tensor, args: argparse.Namespace) -> nn.Module:
    """--cle / --fold-bn: quick float rewrites that decide which layers exist (checked before the long part)."""
    if args.cle:
        return equalize(model, example)
    if args.fold_bn:
        model, pairs = fold_batch_norms(model, example)
        print(f"folded {len(pairs)} batch norm(s)")
    return model


def _adaround_options(args: argparse.Namespace) -> dict[str, Any]:
    """AdaRound's schedule, and its data: the first ADAROUND_SAMPLES calibration samples whatever --batch-size."""
    return {
        "iterations": args.adaround_iterations,
        "lr": args.adaround_lr,
        "num_batches": max(1, -(-min(ADAROUND_SAMPLES, args.num_samples) // args.batch_size)),
    }


def _calibrated_sim(
    model: nn.Module,
    sim: QuantSim,
    calib: list[torch.Tensor],
    args: argparse.Namespace,
    adaround_dir: Path,
    progress: bool,
) -> QuantSim:
    """--bias-correction → --adaround / --gptq / --seq-mse / --reconstruct → calibrated QuantSim (the long part).

    ``sim`` is the (uncalibrated) QuantSim of ``model`` built to check the options; it is used as it is
    unless a technique changes the weights."""
    example = calib[0][:1]
    options = _sim_options(args)
    if args.bias_correction:
        model = bias_correction(model, example, calib, method=args.bias_correction, progress=progress, **options)
    encodings = None
    if args.adaround:
        # The same quantization as the QuantSim that loads the file (per_channel None: the config decides).
        model, encodings = adaround(
            model, example, calib, path=adaround_dir, progress=progress, **_adaround_options(args), **options
        )
    if args.gptq:  # the same data and grids as AdaRound's
        model, encodings = gptq(
            model,
            example,
            calib,
            path=adaround_dir,
            progress=progress,
            num_batches=_adaround_options(args)["num_batches"],
            asymmetric=args.gptq_asymmetric,
            clip_ratios=args.gptq_clip_ratios or (),
            **options,
        )
    if args.seq_mse:  # the same data as AdaRound's; the grids are what it chooses
        model, encodings = seq_mse(
            model,
            example,
            calib,
            path=adaround_dir,
            progress=progress,
            num_batches=_adaround_options(args)["num_batches"],
            **options,
        )
    if args.reconstruct:  # rounding and activation step sizes learned block by block (BRECQ + QDrop)
        model, encodings = reconstruct(model, example, calib, path=adaround_dir, progress=progress, **options)
    if args.bias_correction or args.adaround or args.gptq or args.seq_mse or args.reconstruct:
        sim = QuantSim(model, example, **options)
    if encodings is not None and args.reconstruct:
        sim.load_encodings(encodings, freeze=True)  # its learned activation encodings too
    elif encodings is not None:
        sim.set_and_freeze_param_encodings(encodings)
    _float_formats(sim, args)
    sim.compute_encodings(calib, progress=progress)
    return sim


def _float_formats(sim: QuantSim, args: argparse.Namespace) -> QuantSim:
    """--float-format on --float-layers (all when not given); an unknown layer name is refused here."""
    if getattr(args, "float_format", None):
        set_float_format(sim, args.float_format, args.float_layers)
    return sim


def _check_sweep_layers(sim: QuantSim, layers: Sequence[str] | None) -> None:
    """--layers must name layers ``lt.analyze`` can sweep: the model inputs or a layer with an enabled quantizer."""
    from .analysis import sweepable_layers

    if layers:
        check_names("--layers", layers, sweepable_layers(sim))


MAX_NAMES = 30


# ---------------------------------------------------------------------------------------------- commands
def _check_auto(args: argparse.Namespace) -> None:
    """--auto picks BN fold / CLE / AdaRound itself: a technique flag beside it would be silently ignored."""
    for flag, on in (("--gptq-asymmetric", args.gptq_asymmetric), ("--gptq-clip-ratios", args.gptq_clip_ratios)):
        if on and not args.gptq:
            raise InvalidOptionError(f"{flag} changes how --gptq fits each layer: add --gptq")
    if not args.auto:
        if args.auto_stages:
            raise InvalidOptionError("--auto-stages picks the stages of --auto: add --auto (or drop --auto-stages)")
        return
    chosen = [
        flag
        for flag, on in (
            ("--fold-bn", args.fold_bn),
            ("--cle", args.cle),
            ("--bias-correction", args.bias_correction),
            ("--adaround", args.adaround),
            ("--gptq", args.gptq),
            ("--seq-mse", args.seq_mse),
            ("--reconstruct", args.reconstruct),
        )
        if on
    ]
    if chosen:
        raise InvalidOptionError(
            f"--auto chooses the techniques itself; drop {' '.join(chosen)} (or drop --auto "
            "to apply them yourself). --adaround-iterations and --adaround-lr do apply to "
            "--auto's AdaRound stage"
        )


def _cmd_quantize(args: argparse.Namespace) -> int:
    from .evaluation import Agreement, markdown_table, model_outputs
    from .ptq.auto import auto_quant

    fill_defaults(args, ADAROUND_DEFAULTS, ADAROUND_THOROUGH)
    _check_auto(args)
    check_amp(args)
    with staged_outputs() as staging:
        out = staging.directory(args.out)
        model, data = model_and_data(args, args.num_samples, CalibrationDataError)
        calib = batches(data, args.batch_size)
        example = calib[0][:1]
        structured = model if args.auto else _structural(model, example, args)
        sim = _float_formats(QuantSim(structured, example, **_sim_options(args)), args)  # checks options quickly
        # The long part starts here.
        progress = not args.no_progress
        reference = model_outputs(model, calib, progress=progress, desc="FP32")
        scored: dict[int, tuple[nn.Module, torch.Tensor]] = {}  # outputs of each model auto_quant scored
        if args.auto:

            def agreement(candidate: nn.Module) -> float:
                outputs = model_outputs(candidate, calib, progress=False)
                scored[id(candidate)] = (candidate, outputs)  # the module is kept alive, so its id stays unique
                return Agreement.of(reference, outputs).top1

            result = auto_quant(
                model,
                example,
                calib,
                agreement,
                allowed_drop=args.allowed_drop,
                path=out,
                progress=progress,
                **_sim_options(args),
                adaround_kwargs=_adaround_options(args),
                stages=args.auto_stages,
            )
            print(markdown_table(result.stages))
            sim = result.sim
        elif args.amp:
            sim = amp_sim(sim, calib, reference, args, out, progress)
        else:
            sim = _calibrated_sim(structured, sim, calib, args, out, progress)
        # auto_quant's chosen model was scored on these batches already: its outputs are reused, not recomputed.
        outputs = (
            scored[id(sim.model)][1]
            if id(sim.model) in scored
            else model_outputs(sim.model, calib, progress=progress, desc="quantized")
        )
        row = Agreement.of(reference, outputs)
        print(
            markdown_table(
                [
                    {
                        "model": "AMP" if args.amp else f"W{args.param_bw}A{args.act_bw}",
                        "top-1 agreement": row.top1,
                        "KL divergence": row.kl,
                        "output SQNR (dB)": row.sqnr_db,
                    }
                ]
            )
        )
        sim.export(out, args.name, unsigned_weights=args.uint8_weights, format=args.export_format)
        written = sorted(p.name for p in out.iterdir())  # the export, and adaround.encodings if any
    print(f"exported: {', '.join(str(Path(args.out) / name) for name in written)}")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from .analysis import analyze
    from .evaluation import markdown_table, sqnr_score

    fill_defaults(args, ADAROUND_DEFAULTS, ADAROUND_THOROUGH)
    check_backend(args.workers, args.ray_address)  # before calibration and AdaRound, not after
    with staged_outputs() as staging, tempfile.TemporaryDirectory() as scratch:
        report_path = staging.file(args.out)
        plots_dir = staging.directory(args.plots, "--plots") if args.plots else None
        model, data = model_and_data(args, args.num_samples, CalibrationDataError)
        calib = batches(data, args.batch_size)
        example = calib[0][:1]
        structured = _structural(model, example, args)
        sim = _float_formats(QuantSim(structured, example, **_sim_options(args)), args)  # checks options quickly
        _check_sweep_layers(sim, args.layers)
        # The long part starts here. AdaRound's encodings file is not an output of `analyze`.
        progress = not args.no_progress
        sim = _calibrated_sim(structured, sim, calib, args, Path(scratch), progress)
        # The sensitivity score is output SQNR on a few samples: a continuous score ranks layers on 8 images,
        # and each of the ~2 × layers sweep runs costs in proportion to the samples (--thorough: 32).
        probe_samples = args.sensitivity_samples or (32 if args.thorough else 8)
        probe = batches(data[:probe_samples], args.batch_size)
        # SQNR per layer and histograms need no more than a few batches to be stable (--thorough: all of them).
        report = analyze(
            sim,
            sqnr_score(model, probe),
            calib,
            layers=args.layers,
            num_batches=None if args.thorough else max(1, 64 // args.batch_size),
            sensitivity=not args.no_sensitivity,
            progress=progress,
            workers=args.workers,
            ray_address=args.ray_address,
        )
        if args.cle:
            report.add_equalization(fold_batch_norms(model, example)[0], sim.model)
        print(markdown_table(report.summary_rows()))
        report.to_html(report_path)
        plots = report.save_plots(plots_dir) if plots_dir is not None else []
    print(f"report: {args.out}")
    if args.plots:
        print(f"plots: {len(plots)} PNG files in {args.plots}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(
        args.out,
        calibration=args.calibration,
        evaluation=args.evaluation,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "quantize": _cmd_quantize,
    "analyze": _cmd_analyze,
    "compress": cmd_compress,
    "demo": _cmd_demo,
}


# ---------------------------------------------------------------------------------------------- entry point
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``leantorch`` command; returns the exit code (see the module docstring).

    Example:
        >>> main(["quantize", "--num-samples", "0"])  # doctest: +SKIP
        error: argument --num-samples: must be a positive integer, got 0 (see leantorch quantize --help)
        2
    """
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        return _user_error(exc)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    keep_freed_memory()  # forward passes reuse freed activation memory instead of page-faulting it in again
    try:
        with every_value_histograms(getattr(args, "thorough", False)):  # --thorough: no sampled histograms
            return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except LeanTorchError as exc:
        if args.debug:
            raise
        return _user_error(exc)
    except OSError as exc:  # the environment, not a mistake in the command: disk full, a file vanished…
        if args.debug:
            raise
        print(f"error: {_one_line(exc)} (--debug shows the traceback)", file=sys.stderr)
        return 1
    except Exception as exc:
        if args.debug:
            raise
        traceback.print_exc()
        print(
            f"error: unexpected {type(exc).__name__} (a bug in leantorch or in the model's code; the traceback "
            "above says where)",
            file=sys.stderr,
        )
        return 1


def _user_error(exc: Exception) -> int:
    print(f"error: {_one_line(exc)}", file=sys.stderr)
    return 2


def _one_line(exc: Exception) -> str:
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
