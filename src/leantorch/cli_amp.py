"""``leantorch quantize --amp``: automatic mixed precision from the command line.

The options (:func:`add_amp_options`), their checks before any long work (:func:`check_amp`) and the run
(:func:`amp_sim`): the score is top-1 agreement with FP32 on the data, as for ``--auto``, within ``--allowed-drop``.

Example:
    >>> p = argparse.ArgumentParser(); add_amp_options(p)
    >>> p.parse_args(["--amp", "W4A8,W8A8"]).amp_cost
    'bitops'
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .errors import InvalidOptionError
from .evaluation import Agreement, markdown_table, model_outputs
from .ptq.amp_groups import parse_candidates
from .ptq.amp_reround import REROUND_KEEPS
from .ptq.amp_rounding import ROUNDINGS
from .ptq.mixed_precision import mixed_precision
from .quant.sim import QuantSim

__all__ = ["add_amp_options", "amp_candidates", "check_amp", "amp_sim"]

#: techniques that set weight encodings themselves (frozen), which AMP could then not change
_EXCLUSIVE = ("auto", "adaround", "gptq", "seq_mse", "bias_correction")


def amp_candidates(text: str) -> str:
    """An ``--amp`` value: comma-separated candidates such as ``W4A8,W8A8`` (checked, returned as given).

    Example:
        >>> amp_candidates("W4A8,W8A16")
        'W4A8,W8A16'
    """
    try:
        parse_candidates(text)
    except InvalidOptionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def add_amp_options(p: argparse.ArgumentParser) -> None:
    """``--amp CANDIDATES``, ``--amp-cost``, ``--amp-max-cost``, ``--amp-rounding``, ``--amp-reround`` and
    ``--amp-reround-keep`` (the allowed drop is ``--allowed-drop``, shared with ``--auto``).

    Example:
        >>> p = argparse.ArgumentParser(); add_amp_options(p); p.parse_args([]).amp is None
        True
    """
    p.add_argument(
        "--amp",
        type=amp_candidates,
        metavar="CANDIDATES",
        help="automatic mixed precision: a precision per layer group from these candidates (e.g. W4A8,W8A8,W8A16; "
        "W3A16B64: blockwise weights, one scale per 64 input channels), "
        "the cheapest mix whose top-1 agreement with FP32 on the data is within --allowed-drop; writes "
        "OUT/amp_pareto.png and OUT/amp.html. It chooses the weight bitwidths itself: not with --auto, "
        "--adaround, --gptq, --seq-mse or --bias-correction",
    )
    p.add_argument(
        "--amp-cost",
        choices=["bitops", "memory"],
        default="bitops",
        help="what --amp minimises: bitops (MACs × weight bits × activation bits, default) or memory (weight bytes)",
    )
    p.add_argument(
        "--amp-max-cost",
        type=float,
        metavar="FRACTION",
        help="a budget for --amp: only mixes costing at most this fraction of every group at the highest candidate "
        "(bitops or weight bytes, as --amp-cost) are considered; the cheapest of them within --allowed-drop, else "
        "the costliest of them (e.g. 0.25 with --amp W16A16,W8A16,W4A16,W3A16 --amp-cost memory: under half the "
        "weight bytes of W8)",
    )
    p.add_argument(
        "--amp-rounding",
        choices=list(ROUNDINGS),
        default="nearest",
        help="how --amp rounds the weights of candidates below 16 bits: nearest (default), adaround or gptq (each "
        "such candidate rounded once by AdaRound or asymmetric GPTQ on the data; a layer at it takes those weights, "
        "also in the export)",
    )
    p.add_argument(
        "--amp-reround",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --amp-rounding adaround or gptq, round the chosen mix once more with every group at its chosen "
        "bitwidths (each candidate was rounded with all layers at it), kept if it scores at least as well "
        "(default: on; --no-amp-reround to skip)",
    )
    p.add_argument(
        "--amp-reround-keep",
        choices=list(REROUND_KEEPS),
        default="if_better",
        help="keep the re-rounded mix only if it scores at least the chosen one (if_better, default) or always (when "
        "the calibration data is too small to tell them apart)",
    )


def check_amp(args: argparse.Namespace) -> None:
    """With ``--amp``, no technique that freezes weight encodings; ``--amp-max-cost`` only with ``--amp`` (checked
    before any long work).

    Example:
        >>> check_amp(argparse.Namespace(amp="W4A8,W8A8", auto=False, adaround=True, gptq=False, seq_mse=False,
        ...                              bias_correction=None))
        Traceback (most recent call last):
        ...
        leantorch.errors.InvalidOptionError: --amp chooses the weight bitwidths itself; drop --adaround (or drop --amp)
    """
    if not getattr(args, "amp", None):
        if getattr(args, "amp_max_cost", None) is not None:
            raise InvalidOptionError("--amp-max-cost is a budget for --amp: add --amp CANDIDATES (or drop it)")
        return
    chosen = [f for f in _EXCLUSIVE if getattr(args, f, None)]
    if chosen:
        flags = " ".join("--" + f.replace("_", "-") for f in chosen)
        raise InvalidOptionError(f"--amp chooses the weight bitwidths itself; drop {flags} (or drop --amp)")


def amp_sim(
    sim: QuantSim,
    calib: list[torch.Tensor],
    reference: torch.Tensor,
    args: argparse.Namespace,
    out: Path,
    progress: bool,
) -> QuantSim:
    """Run AMP on ``sim`` (configured in place) scored by top-1 agreement with ``reference`` (the FP32 outputs on
    ``calib``); prints the chosen precision per group, writes ``out/amp_pareto.png`` and ``out/amp.html``.

    Example:
        >>> sim = amp_sim(sim, calib, reference, args, Path("out"), progress=False)  # doctest: +SKIP
    """
    amp = mixed_precision(
        sim,
        calibration=calib,
        eval_fn=lambda m: Agreement.of(reference, model_outputs(m, calib, progress=False)).top1,
        candidates=args.amp,
        allowed_drop=args.allowed_drop,
        cost=args.amp_cost,
        max_cost=getattr(args, "amp_max_cost", None),
        rounding=getattr(args, "amp_rounding", "nearest"),
        reround=getattr(args, "amp_reround", True),
        reround_keep=getattr(args, "amp_reround_keep", "if_better"),
        progress=progress,
    )
    print(markdown_table([{"group": g, "precision": c} for g, c in amp.chosen.config.items()]))
    if amp.reround_score is not None:
        kept = "kept" if amp.rerounded else "not kept: the chosen mix scores higher"
        print(f"chosen mix: agreement {amp.chosen.score:.4f}; re-rounded: {amp.reround_score:.4f} ({kept})")
    amp.save_plot(out / "amp_pareto.png")
    amp.to_html(out / "amp.html")
    return amp.sim
