"""Where does a quantized model lose accuracy? ``lt.analyze(sim, eval_fn, calibration)``.

What it measures (names follow AIMET's QuantAnalyzer, which shows the same on a Bokeh server):

* scores of the FP32 model (every quantizer off), the quantized model, weights-only and
  activations-only quantization;
* per-layer sensitivity: the score with only that layer's quantizers on, and with all but that layer's;
* per-layer output SQNR of the fully quantized model against FP32 on the calibration data;
* per-layer activation min/max and histograms, with the encoding range of the quantizer drawn on them;
* per-output-channel weight ranges (min/max/mean) of every conv/linear layer.

Every quantizer's enabled state is restored afterwards, also when ``eval_fn`` fails.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..batches import check_iterable, model_inputs
from ..errors import CalibrationDataError, EncodingsMissingError, UnknownLayerError
from ..evaluation import OutputScore
from ..options import as_names, check_count, name_list
from ..parallel import check_backend, gpu_share, run_chunks
from ..ptq.auto import call_eval_fn
from ..quant.quantizer import Quantizer
from ..quant.sim import QuantSim
from ..sweep import Trial, first_calls, suffix_outputs
from .activations import activation_analysis, enable_quantizers
from .report import AnalysisReport
from .weight_ranges import weight_ranges

__all__ = ["MODEL_INPUTS", "analyze", "sweepable_layers"]

log = logging.getLogger(__name__)

#: Pseudo layer name of the model-input quantizers in sensitivity tables.
MODEL_INPUTS = "input_quantizers"


def analyze(
    sim: QuantSim,
    eval_fn: Callable[[nn.Module], float],
    calibration: Iterable[Any],
    layers: Iterable[str] | None = None,
    num_batches: int | None = None,
    bins: int = 64,
    sensitivity: bool = True,
    progress: bool = True,
    workers: int | None = None,
    ray_address: str | None = None,
) -> AnalysisReport:
    """Analyse a calibrated QuantSim; returns an :class:`AnalysisReport` (``to_html``, ``save_plots``).

    Args:
        sim: a QuantSim after ``compute_encodings`` (or with loaded encodings).
        eval_fn: ``eval_fn(model) -> float``, higher is better; called ``4 + 2 * len(layers)`` times.
        calibration: batches (as for ``compute_encodings``) for SQNR, ranges and histograms.
        layers: layers for the sensitivity sweep (default: every layer with an enabled quantizer, and
            the model inputs as ``"input_quantizers"``).
        num_batches: use only this many calibration batches.
        bins: histogram bins per activation.
        sensitivity: run the per-layer sensitivity sweep (the expensive part). With an
            :class:`~leantorch.evaluation.OutputScore` as ``eval_fn`` (``sqnr_score``, ``agreement_score``) each
            sweep step runs only the part of the model after the flipped layer; the scores are the same.
        workers: run the sensitivity sweep in this many local Ray worker processes (``pip install
            "leantorch[ray]"``); ``None``: here.
        ray_address: run it on an existing Ray cluster instead (``"auto"``, ``"ray://host:10001"``).

    Raises:
        EncodingsMissingError: the sim has not been calibrated.
        UnknownLayerError: a name in ``layers`` is not a layer with an enabled quantizer (lists the valid ones).
        CalibrationDataError: no calibration batch, or one with NaN/Inf or the wrong structure (checked before
            ``eval_fn`` is first called).
        InvalidOptionError: ``bins`` or ``num_batches`` below 1.
        EvalFunctionError: ``eval_fn`` raised or returned something that is not a finite number.

    Example:
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
        >>> data = [torch.randn(4, 3, 8, 8) for _ in range(2)]
        >>> sim = QuantSim(model, data[0][:1], param_bw=4, act_bw=4)
        >>> sim.compute_encodings(data, progress=False)
        >>> score = lambda m: -float(sum((m(x) - model(x)).pow(2).mean() for x in data).detach())
        >>> report = analyze(sim, score, data, progress=False)
        >>> report.scores["fp32"] == 0.0 and report.scores["quantized"] < 0.0
        True
    """
    configured = {q: q.enabled for q in sim.quantizers().values()}
    missing = [n for n, q in sim.quantizers().items() if q.is_active and q.encoding is None]
    if missing:
        raise EncodingsMissingError(
            f"{len(missing)} quantizer(s) have no encoding (e.g. {missing[:3]}): call "
            "sim.compute_encodings(...) before lt.analyze."
        )
    groups = _layer_quantizers(sim, configured)
    chosen = list(groups) if layers is None else as_names("layers", layers)  # a string is one name
    unknown = [n for n in chosen if n not in groups]
    if unknown:
        raise UnknownLayerError(
            f"layers={unknown}: no layer with an enabled quantizer has that name; valid names "
            f"({len(groups)}): {name_list(list(groups))}"
        )
    data = _calibration(sim, calibration, num_batches, bins)
    check_backend(workers, ray_address)
    params = {q for q in configured if q.is_param}
    with _restored(configured):
        scores = {
            "fp32": _score(sim, eval_fn, configured, lambda q: False, "the FP32 model (quantizers off)"),
            "quantized": _score(sim, eval_fn, configured, lambda q: True, "the quantized model"),
            "weights only": _score(sim, eval_fn, configured, lambda q: q in params, "weights-only quantization"),
            "activations only": _score(
                sim, eval_fn, configured, lambda q: q not in params, "activations-only quantization"
            ),
        }
        rows = (
            _sensitivity(sim, eval_fn, configured, groups, chosen, progress, workers, ray_address)
            if sensitivity
            else []
        )
        sqnr, activations = activation_analysis(sim, configured, data, bins, progress)
    return AnalysisReport(
        title=f"W{sim.settings.param_bw}A{sim.settings.act_bw} {sim.settings.scheme.value}",
        scores=scores,
        sensitivity=rows,
        layer_sqnr=sqnr,
        activations=activations,
        weight_ranges=weight_ranges(sim.model),
    )


def _calibration(
    sim: QuantSim, calibration: Iterable[Any] | None, num_batches: int | None, bins: int
) -> list[tuple[torch.Tensor, ...]]:
    """The model inputs of the batches to analyse, checked before the (expensive) sensitivity sweep rather than
    after it."""
    check_count("bins", bins, hint=" (the number of histogram bins)")
    if num_batches is not None:
        check_count("num_batches", num_batches, hint=", or None for all batches")
    if calibration is None or isinstance(calibration, torch.Tensor):
        raise CalibrationDataError(
            "lt.analyze needs calibration batches for SQNR, ranges and histograms: pass a "
            "list or DataLoader of input batches (a single tensor: wrap it as [tensor])"
        )
    check_iterable(calibration)  # a number, a string, a dict...
    data = list(itertools.islice(calibration, num_batches))
    if not data:
        raise CalibrationDataError(
            "calibration data is empty: lt.analyze needs at least one batch for SQNR, ranges and histograms"
        )
    # CalibrationDataError names a batch of the wrong structure or with NaN/Inf. The inputs stay where they are
    # (each batch is moved to the sim's device when it runs, not the whole set at once).
    num_inputs = len(sim.example_input)
    return [model_inputs(batch, num_inputs, index) for index, batch in enumerate(data)]


def sweepable_layers(sim: QuantSim) -> list[str]:
    """Names :func:`analyze` accepts in ``layers``: the model inputs (``"input_quantizers"``) and every layer
    with an enabled quantizer.

    Example:
        >>> sim = QuantSim(nn.Sequential(nn.Linear(4, 2)), torch.randn(1, 4))
        >>> sweepable_layers(sim)
        ['input_quantizers', '0']
    """
    return list(_layer_quantizers(sim, {q: q.enabled for q in sim.quantizers().values()}))


def _layer_quantizers(sim: QuantSim, configured: dict[Quantizer, bool]) -> dict[str, list[Quantizer]]:
    """The enabled quantizers of each layer (and of the model inputs), layers without any left out."""
    groups: dict[str, list[Quantizer]] = {}
    inputs = [q for q in sim.model.input_quantizers if configured[q]]
    if inputs:
        groups[MODEL_INPUTS] = inputs
    for name, wrapper in sim.layers().items():
        quantizers = [q for q in wrapper.modules() if isinstance(q, Quantizer) and configured[q]]
        if quantizers:
            groups[name] = quantizers
    return groups


@contextlib.contextmanager
def _restored(configured: dict[Quantizer, bool]) -> Iterator[None]:
    try:
        yield
    finally:
        for q, enabled in configured.items():
            q.enabled = enabled


def _score(
    sim: QuantSim,
    eval_fn: Callable[[nn.Module], float],
    configured: dict[Quantizer, bool],
    keep: Callable[[Quantizer], bool],
    what: str,
) -> float:
    enable_quantizers(configured, keep)
    return call_eval_fn(eval_fn, sim.model, what)


def _sensitivity(
    sim: QuantSim,
    eval_fn: Callable[[nn.Module], float],
    configured: dict[Quantizer, bool],
    groups: dict[str, list[Quantizer]],
    chosen: list[str],
    progress: bool,
    workers: int | None = None,
    ray_address: str | None = None,
) -> list[dict[str, Any]]:
    """Each chosen layer's score with only its quantizers on, and with all but its quantizers on.

    The layers are swept in contiguous chunks (:func:`~leantorch.parallel.run_chunks`): all of them here, or
    one chunk per Ray worker, each on its own copy of the sim."""
    order = {name: i for i, name in enumerate(chosen)}
    first = first_calls(sim.model)
    start = {name: min((first[id(q)] for q in groups[name] if id(q) in first), default=0) for name in chosen}
    ordered = sorted(chosen, key=start.__getitem__)
    parallel = workers not in (None, 1) or ray_address is not None

    def rows_for(names: list[str]) -> list[dict[str, Any]]:
        with _restored(configured):
            return _sensitivity_rows(sim, eval_fn, configured, groups, names, progress and not parallel)

    rows = run_chunks(
        rows_for,
        ordered,
        workers=workers,
        ray_address=ray_address,
        progress=progress,
        desc="per-layer sensitivity (chunks)",
        weights=[len(sim.model.graph.nodes) - start[name] for name in ordered],
        gpus_per_worker=gpu_share(next((p.device for p in sim.model.parameters()), "cpu"), workers),
    )
    return sorted(rows, key=lambda row: order[row["layer"]])


def _sensitivity_rows(
    sim: QuantSim,
    eval_fn: Callable[[nn.Module], float],
    configured: dict[Quantizer, bool],
    groups: dict[str, list[Quantizer]],
    chosen: list[str],
    progress: bool,
) -> list[dict[str, Any]]:
    if isinstance(eval_fn, OutputScore):
        only = _suffix_scores(sim, eval_fn, configured, groups, chosen, base_on=False, progress=progress)
        all_but = _suffix_scores(sim, eval_fn, configured, groups, chosen, base_on=True, progress=progress)
        return [
            {"layer": name, "only this layer quantized": only[name], "all but this layer quantized": all_but[name]}
            for name in chosen
        ]
    rows = []
    for name in tqdm(chosen, desc="per-layer sensitivity", unit="layer", disable=not progress, leave=False):
        mine = set(groups[name])
        rows.append(
            {
                "layer": name,
                "only this layer quantized": _score(
                    sim, eval_fn, configured, lambda q, mine=mine: q in mine, f"the model with only {name} quantized"
                ),
                "all but this layer quantized": _score(
                    sim,
                    eval_fn,
                    configured,
                    lambda q, mine=mine: q not in mine,
                    f"the model with all but {name} quantized",
                ),
            }
        )
    return rows


def _suffix_scores(
    sim: QuantSim,
    score: OutputScore,
    configured: dict[Quantizer, bool],
    groups: dict[str, list[Quantizer]],
    chosen: list[str],
    base_on: bool,
    progress: bool,
) -> dict[str, float]:
    """The sweep with every quantizer off (``base_on=False``) or on, flipping one layer's at a time, running
    only the part of the model from that layer on (:mod:`leantorch.sweep`); the same scores as full runs."""
    enable_quantizers(configured, lambda q: base_on)
    what = "all but {} quantized" if base_on else "only {} quantized"

    def flip(name: str) -> Callable[[], contextlib.AbstractContextManager[None]]:
        @contextlib.contextmanager
        def change() -> Iterator[None]:
            for q in groups[name]:
                q.enabled = not base_on
            try:
                yield
            finally:
                for q in groups[name]:
                    q.enabled = base_on

        return change

    trials = [Trial(name, tuple(groups[name]), flip(name)) for name in chosen]
    probe = [(x.to(sim.device),) for x in score.probe]
    return suffix_outputs(
        sim.model,
        probe,
        trials,
        progress=progress,
        desc=f"sensitivity ({what.format('one layer')})",
        on_result=lambda name, outputs: call_eval_fn(
            lambda _: score.score_outputs(outputs), sim.model, f"the model with {what.format(name)}"
        ),
    )
