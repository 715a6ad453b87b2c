"""Arguments of the ``leantorch`` command: the parser and the option types that validate values.

A bad value is reported by argparse itself, before any work: ``argument --num-samples: must be a
positive integer, got 0``. :class:`UsageError` carries that message to ``leantorch.cli.main``, which
prints it on one line (no usage text) and exits with status 2.

Example:
    >>> build_parser().parse_args(["compress", "--model", "m:f", "--data", "d.npy", "--target", "0.3"]).target
    0.3
"""

from __future__ import annotations

import argparse

from .cli_amp import add_amp_options
from .cli_recover import add_recover_options
from .cli_types import (
    bitwidth,
    file_name,
    html_path,
    non_negative_float,
    open_unit_interval,
    path_text,
    positive_float,
    positive_int,
    ratio_list,
)
from .compress.schemes import scheme_names
from .ptq.auto import stage_names  # importing auto registers the built-in auto_quant stages
from .quant.estimators import estimator_names  # importing estimators registers the built-in schemes
from .quant.exporters import exporter_names

__all__ = [
    "DESCRIPTION",
    "UsageError",
    "add_parallel_options",
    "COMPRESS_QUANTIZE",
    "ADAROUND_DEFAULTS",
    "ADAROUND_THOROUGH",
    "ADAROUND_SAMPLES",
    "COMPRESS_DEFAULTS",
    "COMPRESS_THOROUGH",
    "build_parser",
]

DESCRIPTION = (
    "Quantize, analyse or compress a PyTorch model given by a factory function, or run the demo. "
    "Arguments, data and output locations are checked before any long computation; a mistake is "
    "reported on one line (exit status 2; --debug shows the traceback), Ctrl-C exits with 130, and "
    "outputs appear only when a command succeeds."
)


# ---------------------------------------------------------------------------------------------- parser
class UsageError(Exception):
    """An argparse error: reported on one line like the other user errors, not with the usage text."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


def _add_common(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: given after the subcommand these set the flag; absent, they leave the global default alone.
    p.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="on an error, show the full traceback instead of the one-line message",
    )
    p.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log diagnostics (INFO level)"
    )


def _add_data_options(p: argparse.ArgumentParser, num_samples: int, batch_size: int, purpose: str) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="package.module:factory returning an nn.Module "
        "(e.g. leantorch.models:efficientnet_lite0); NaN/Inf weights are refused",
    )
    p.add_argument(
        "--data",
        required=True,
        help="a directory of .png/.jpg/.bmp images, a .npy array [N, ...] of "
        "model inputs, or builtin:images (scikit-image photograph crops); checked before any long work: "
        "unreadable files, NaN/Inf samples and samples the model cannot run are named",
    )
    p.add_argument(
        "--num-samples",
        type=positive_int,
        default=num_samples,
        help=f"{purpose} samples to use (default {num_samples})",
    )
    p.add_argument("--batch-size", type=positive_int, default=batch_size, help=f"batch size (default {batch_size})")
    p.add_argument("--image-size", type=positive_int, default=224, help="image side for image data (default 224)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_parallel_options(p: argparse.ArgumentParser, what: str) -> None:
    """``--workers N`` / ``--ray-address ADDR``: run ``what`` on Ray (the optional extra ``leantorch[ray]``)."""
    p.add_argument(
        "--workers",
        type=positive_int,
        help=f'run {what} in N local Ray worker processes (pip install "leantorch[ray]"); default: in this process',
    )
    p.add_argument("--ray-address", help=f"run {what} on an existing Ray cluster (auto, ray://host:10001)")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``quantize`` and ``analyze``: model, data, bitwidths, techniques."""
    # Batches of 8: a 224×224 CNN's activations then stay under glibc's mmap threshold and reuse freed memory
    # (see leantorch.allocator); batches of 32 ran the same flows about 1.3× slower on 2 cores.
    _add_data_options(p, 256, 8, "calibration")
    p.add_argument("--param-bw", type=bitwidth, default=8, help="weight bitwidth, 2-16 or 32 (default 8)")
    p.add_argument("--act-bw", type=bitwidth, default=8, help="activation bitwidth, 2-16 or 32 (default 8)")
    p.add_argument(
        "--scheme",
        default="tf_enhanced",
        choices=estimator_names(),
        help="range estimator (default tf_enhanced; the choices are the registered estimators)",
    )
    p.add_argument("--per-channel", action="store_true", help="per-channel weight quantization")
    p.add_argument(
        "--param-block-size",
        type=positive_int,
        metavar="N",
        help="blockwise weights: one scale per N input channels of each output channel (e.g. 32; layers whose "
        "input channels make no whole blocks stay per channel); exported as opset-21 blocked QDQ, int4 up to 4 bits",
    )
    p.add_argument(
        "--float-format",
        choices=["fp16", "bf16", "fp8", "e5m2"],
        help="simulate --float-layers (default: every layer) in a float format: fp16, bf16 (casts) or fp8 "
        "(e4m3) / e5m2 (scaled); exported as Cast pairs or float8 QDQ",
    )
    p.add_argument("--float-layers", nargs="+", metavar="LAYER", help="the layers --float-format applies to")
    p.add_argument(
        "--decompressed-bw",
        type=bitwidth,
        metavar="BITS",
        help="with --param-block-size, LPBQ: block scales become integers in [1, 2**(BITS - param_bw)] times one "
        "float per channel (e.g. --param-bw 4 --decompressed-bw 8)",
    )
    p.add_argument(
        "--config",
        default="default",
        help="config preset (default, per_channel, transformer: 8-bit per-channel weights, 16-bit Linear/LayerNorm/"
        "Softmax/Add/Concat outputs) or JSON file",
    )
    p.add_argument("--fold-bn", action="store_true", help="fold batch norms into the preceding layers first")
    p.add_argument(
        "--cle",
        action="store_true",
        help="cross-layer equalization (folds BN, scales layer pairs and depthwise triplets; no high-bias absorption)",
    )
    p.add_argument(
        "--bias-correction",
        choices=["empirical", "analytical", "hybrid"],
        help="correct the mean output error of weight quantization",
    )
    rounding = p.add_mutually_exclusive_group()
    rounding.add_argument(
        "--adaround", action="store_true", help="learn weight rounding (AdaRound) and freeze the weight encodings"
    )
    rounding.add_argument(
        "--gptq",
        action="store_true",
        help="round weights with GPTQ (error feedback through the "
        "inverse input Hessian; one pass, no iterations) and freeze the weight encodings",
    )
    p.add_argument(
        "--gptq-asymmetric",
        action="store_true",
        help="with --gptq: fit each layer to the float model's outputs from the quantized model's inputs (GPTAQ)",
    )
    p.add_argument(
        "--gptq-clip-ratios",
        type=ratio_list,
        metavar="R,R,...",
        help="with --gptq: round on each weight range shrunk by these ratios (e.g. 1,0.9,0.8,0.7,0.6) and keep, per "
        "output channel, the grid with the least error (GptqConfig.clip_ratios)",
    )
    rounding.add_argument(
        "--seq-mse",
        action="store_true",
        help="choose each weight encoding by Sequential MSE (the range, of 20 shrunk ones, with the least layer "
        "output error; one pass) and freeze the weight encodings",
    )
    rounding.add_argument(
        "--reconstruct",
        action="store_true",
        help="block reconstruction (BRECQ+QDrop): rounding and activation step sizes learned per block; slow",
    )
    p.add_argument(
        "--adaround-iterations",
        type=positive_int,
        help="AdaRound iterations per layer, also for "
        f"--auto's AdaRound stage (default {ADAROUND_DEFAULTS['adaround_iterations']}; "
        f"{ADAROUND_THOROUGH['adaround_iterations']} with --thorough, as in the paper)",
    )
    p.add_argument(
        "--adaround-lr",
        type=positive_float,
        help="AdaRound Adam learning rate, > 0, also for --auto "
        f"(default {ADAROUND_DEFAULTS['adaround_lr']:g}; {ADAROUND_THOROUGH['adaround_lr']:g} with "
        "--thorough, as in the paper)",
    )
    p.add_argument(
        "--thorough",
        action="store_true",
        help="slower settings: AdaRound as in the paper; histogram range searches count every activation value, not "
        "a strided sample of each large one; for analyze also 32 sensitivity samples and per-layer SQNR/histograms "
        "on every sample, not the first batches up to 64 samples",
    )


# AdaRound: 500 steps at lr 2e-2 reach the paper's 10,000 at 1e-3 in a twentieth of the time (EfficientNet-Lite0
# W4A8 per channel, agreement with FP32: 0.801; 0.796 at 10,000/1e-3); --thorough keeps the paper's schedule.
#: compress --quantize presets: (weight bits, activation bits)
COMPRESS_QUANTIZE = {"w8a8": (8, 8), "w8a16": (8, 16), "w4a8": (4, 8)}

ADAROUND_DEFAULTS = {"adaround_iterations": 500, "adaround_lr": 2e-2}
ADAROUND_THOROUGH = {"adaround_iterations": 10_000, "adaround_lr": 1e-3}
#: calibration samples AdaRound learns from (the first ones), whatever the batch size
ADAROUND_SAMPLES = 128


# compress: defaults that finish the README command (EfficientNet-Lite0) in a few minutes on 2 CPU cores, and
# the slower settings of --thorough (denser candidates, more samples per score).
COMPRESS_DEFAULTS = {"candidates": 5, "eval_samples": 32}
COMPRESS_THOROUGH = {"candidates": 10, "eval_samples": 64}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``leantorch`` command."""
    parser = _Parser(prog="leantorch", description=DESCRIPTION)
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on an error, show the full traceback instead of "
        "the one-line message (also accepted after the subcommand)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log diagnostics (INFO level)")
    sub = parser.add_subparsers(dest="command", required=True)
    staged = (
        " Outputs appear only when the command succeeds: they are written to a temporary path next to "
        "the destination and moved into place at the end; files already there are kept unless "
        "overwritten by the new outputs."
    )

    q = sub.add_parser(
        "quantize",
        help="calibrate a QuantSim and export ONNX QDQ + encodings + weights",
        description="Quantize a model: trace it, optionally apply post-training techniques, "
        "calibrate on data, print agreement with FP32 on that data, export "
        "OUT/NAME.{onnx,encodings,pth} (and OUT/adaround.encodings with --adaround)." + staged,
    )
    _add_common(q)
    _add_model_options(q)
    q.add_argument(
        "--auto",
        action="store_true",
        help="AutoQuant: BN fold, then CLE, then AdaRound, stopping "
        "at the first whose top-1 agreement with FP32 (on the data) is within --allowed-drop; it chooses "
        "the techniques itself, so it cannot be combined with --fold-bn, --cle, --bias-correction, "
        "--adaround, --gptq or --seq-mse",
    )
    q.add_argument(
        "--auto-stages",
        nargs="+",
        choices=stage_names(),
        default=None,
        metavar="STAGE",
        help=f"the stages --auto tries, in this order (choices: {', '.join(stage_names())}; default all)",
    )
    q.add_argument(
        "--allowed-drop",
        type=non_negative_float,
        default=0.01,
        help="allowed top-1 agreement drop for --auto, ≥ 0 (default 0.01)",
    )
    add_amp_options(q)
    q.add_argument("--out", type=path_text, default="out", help="output directory, created if needed (default out)")
    q.add_argument("--name", type=file_name, default="model", help="file name prefix, a plain name (default model)")
    q.add_argument(
        "--export-format",
        choices=exporter_names(),
        default=exporter_names()[0],
        help=f"what OUT/NAME.onnx holds (choices: {', '.join(exporter_names())}; default {exporter_names()[0]}): "
        "onnx_qdq runs quantized in ONNX Runtime; onnx_float is the float model whose tensor names the "
        "encodings file uses, for converters that quantize themselves (QNN/SNPE --quantization_overrides)",
    )
    q.add_argument(
        "--uint8-weights",
        action="store_true",
        help="store symmetric weights as uint8 with zero "
        "point 128 (same grid): ONNX Runtime's fused kernels then stay exact on x86 CPUs without VNNI; "
        "leave off for TensorRT/QNN, which expect int8 weights",
    )

    a = sub.add_parser(
        "analyze",
        help="quantization analysis: per-layer sensitivity, SQNR, ranges -> HTML report",
        description="Quantize a model as `quantize` does, then analyse where accuracy is lost "
        "(score: output SQNR in dB against FP32 on the data, higher is better) and "
        "write one self-contained HTML report (and, with --plots, the PNGs)." + staged,
    )
    _add_common(a)
    _add_model_options(a)
    a.add_argument(
        "--out", type=html_path, default="report.html", help="HTML report path, ending in .html (default report.html)"
    )
    a.add_argument("--plots", type=path_text, help="also write every plot as PNG into this directory")
    a.add_argument(
        "--layers",
        nargs="+",
        help="layers for the sensitivity sweep, checked against the model's "
        "quantized layers before calibration (default: every quantized layer)",
    )
    a.add_argument("--no-sensitivity", action="store_true", help="skip the per-layer sensitivity sweep")
    a.add_argument(
        "--sensitivity-samples",
        type=positive_int,
        help="samples scored in the sensitivity sweep "
        "(default 8, 32 with --thorough); the sweep runs only the part of the model after each layer",
    )
    add_parallel_options(a, "the sensitivity sweep")

    c = sub.add_parser(
        "compress",
        help="reduce MACs: weight SVD, spatial SVD, channel pruning (greedy ratios)",
        description="Compress a model to a target MAC ratio. Per-layer ratios are chosen greedily "
        "from an eval-score table (score: top-1 agreement with FP32 on held-out "
        "samples of the data), cached in OUT as soon as it is complete (also when a "
        "later step fails). Writes OUT/compressed.pt (TorchScript: torch.jit.load), "
        "OUT/compressed.onnx (float), OUT/compression_report.html and the sensitivity "
        "curves as PNG." + staged,
    )
    _add_common(c)
    _add_data_options(c, 64, 16, "channel-pruning statistics")
    c.add_argument(
        "--scheme",
        nargs="+",
        default=["spatial_svd"],
        choices=scheme_names(),
        help="one scheme, or several run as stages (e.g. spatial_svd channel_pruning); default spatial_svd",
    )
    c.add_argument(
        "--target",
        type=open_unit_interval,
        default=0.5,
        help="MACs after / before, strictly between 0 and 1 (default 0.5)",
    )
    c.add_argument(
        "--candidates",
        type=positive_int,
        help=f"candidate ratios per layer, evenly spaced (default "
        f"{COMPRESS_DEFAULTS['candidates']}, {COMPRESS_THOROUGH['candidates']} with --thorough)",
    )
    c.add_argument(
        "--rank-multiple", type=positive_int, default=8, help="round ranks/channels up to a multiple (default 8)"
    )
    c.add_argument(
        "--skip", nargs="+", default=[], help="layer names to leave uncompressed (checked against the model's layers)"
    )
    c.add_argument(
        "--eval-samples",
        type=positive_int,
        help="held-out samples scoring each candidate (default "
        f"{COMPRESS_DEFAULTS['eval_samples']}, {COMPRESS_THOROUGH['eval_samples']} with --thorough)",
    )
    c.add_argument(
        "--thorough",
        action="store_true",
        help="the slower settings: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in COMPRESS_THOROUGH.items()),
    )
    add_parallel_options(c, "the eval-score table")
    c.add_argument(
        "--quantize",
        choices=list(COMPRESS_QUANTIZE),
        help="then quantize the compressed model (BN "
        "folded, per-channel weights, tf_enhanced activations calibrated on the --num-samples samples), "
        "score it too, write OUT/compressed_<preset>.{onnx,encodings,pth} (QDQ) and time it in ONNX "
        "Runtime against the original quantized the same way",
    )
    add_recover_options(c)
    c.add_argument("--out", type=path_text, default="out", help="output directory, created if needed (default out)")

    d = sub.add_parser(
        "demo",
        help="quantize the pretrained EfficientNet-Lite0 and print an agreement table",
        description="EfficientNet-Lite0 (ImageNet-pretrained), calibration and evaluation crops "
        "of the scikit-image photographs with disjoint seeds; prints top-1 "
        "agreement, KL divergence and output SQNR against FP32; exports the model and "
        "an analysis report to OUT." + staged,
    )
    _add_common(d)
    d.add_argument("--out", type=path_text, default="out", help="output directory (default out)")
    d.add_argument("--calibration", type=positive_int, default=128, help="calibration crops (default 128)")
    d.add_argument("--evaluation", type=positive_int, default=256, help="evaluation crops (default 256)")
    d.add_argument("--batch-size", type=positive_int, default=32, help="batch size (default 32)")
    d.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser
