"""QuantSim: a quantization-simulation copy of a model, its calibration, encodings files and export."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import torch
from torch import fx, nn

from ..batches import check_iterable
from ..distributed import any_rank_failed, merge_estimators, merge_group
from ..errors import EncodingsFileError, InvalidOptionError, UnknownLayerError
from ..graph import example_inputs, prepare, unknown_leaf_modules
from ..options import as_names, check_count, check_flag, unknown_layers_message
from .calibration_loop import run_calibration
from .config import QuantSimConfig, load_config
from .encoding import Encoding, check_bitwidth
from .encodings_file import (
    ENCODINGS_VERSION,
    EncodingsVersion,
    check_version,
    encodings_dict,
    read_encodings,
    write_encodings,
)
from .encodings_matching import check_coverage, encoding_targets, match_encodings
from .estimators import QuantScheme, RangeEstimator, release_scratch
from .exporters import get_exporter
from .placement import QuantSettings, apply_config, insert_model_input_quantizers, wrap_layers
from .quantizer import Quantizer, finish_calibrations
from .schemes import after_calibration_hooks
from .weight_encodings import tensor_encodings
from .wrapper import QuantWrapper

log = logging.getLogger(__name__)

__all__ = ["QuantSim", "ENCODINGS_VERSION"]  # ENCODINGS_VERSION: kept importable from here for old callers


class QuantSim:
    """Simulates integer quantization of ``model``: ``sim.model`` is a normal ``nn.Module`` with quantizers.

    The user's model is never modified: ``QuantSim`` traces a copy (:func:`leantorch.prepare`).

    Args:
        model: float model.
        example_input: a tensor or tuple of tensors the model accepts (shapes for tracing).
        param_bw, act_bw: bitwidths of weights and activations (2–16, or 32 for "float").
        scheme: range estimator for activations (and weights unless ``param_scheme``):
            ``minmax``, ``tf_enhanced``, ``percentile``, ``mse``.
        per_channel: per-channel weight quantization; None keeps the config's choice.
        config: ``"default"``, ``"per_channel"``, ``"transformer"`` (8-bit per-channel weights, 16-bit outputs of
            Linear/LayerNorm/Softmax/Add), a JSON path, a dict or a :class:`QuantSimConfig`.
        param_scheme: range estimator for weights (default: ``scheme``).
        param_block_size: blockwise weights: one scale per block of this many input channels of each output
            channel (Linear/Conv...; layers whose input channels do not split into blocks stay per channel).
        decompressed_bw: with ``param_block_size``, LPBQ: block scales become integers in
            ``[1, 2**(decompressed_bw - param_bw)]`` times one float per channel (e.g. ``param_bw=4``, 8).
        leaf_modules: module classes or names that tracing must not enter.
        range_learning: make every encoding set from now on (by calibration or loading, frozen ones
            excepted) a trainable ``scale``/``offset`` parameter pair for quantization-aware training
            (LSQ gradients). Build the optimizer after :meth:`compute_encodings`.

    Example:
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
        >>> sim = QuantSim(model, torch.randn(1, 3, 8, 8), param_bw=8, act_bw=8)
        >>> sim.compute_encodings([torch.randn(4, 3, 8, 8) for _ in range(3)], progress=False)
        >>> sim.model(torch.randn(2, 3, 8, 8)).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        model: nn.Module,
        example_input: Any,
        param_bw: int = 8,
        act_bw: int = 8,
        scheme: str | QuantScheme = "tf_enhanced",
        per_channel: bool | None = None,
        config: str | Path | QuantSimConfig | dict[str, Any] = "default",
        param_scheme: str | QuantScheme | None = None,
        leaf_modules: list[type | str] | None = None,
        range_learning: bool = False,
        param_block_size: int | None = None,
        decompressed_bw: int | None = None,
    ) -> None:
        self.settings = QuantSettings(
            param_bw=check_bitwidth(param_bw, "param_bw"),
            act_bw=check_bitwidth(act_bw, "act_bw"),
            scheme=QuantScheme.parse(scheme),
            param_scheme=QuantScheme.parse(param_scheme if param_scheme is not None else scheme),
        )
        check_flag("per_channel", per_channel, allow_none=True)
        check_flag("range_learning", range_learning)
        self.config = load_config(config)
        if per_channel is not None:
            self.config.per_channel = per_channel
        self.config.with_blocks(param_block_size, decompressed_bw, self.settings.param_bw)
        self.example_input = example_inputs(example_input)
        gm = prepare(model, self.example_input, leaf_modules=leaf_modules)
        wrap_layers(gm)
        insert_model_input_quantizers(gm)
        apply_config(gm, self.config, self.settings)
        self.model: fx.GraphModule = gm
        self.range_learning = range_learning
        for q in self.quantizers().values():
            q.range_learning = range_learning
        unknown = unknown_leaf_modules(gm)
        if unknown:
            warnings.warn(
                f"layers of unknown type are passed through, quantized at their output only: {', '.join(unknown)}",
                stacklevel=2,
            )
        if not any(q.is_active for name, q in self.quantizers().items() if not name.startswith("input_quantizers")):
            warnings.warn("the model has nothing to quantize: no layer has an enabled quantizer", stacklevel=2)

    # ------------------------------------------------------------------ introspection
    def quantizers(self) -> dict[str, Quantizer]:
        """Every quantizer of ``sim.model`` by qualified name (``"fc.output_quantizers.0"``...)."""
        return {name: m for name, m in self.model.named_modules() if isinstance(m, Quantizer)}

    def layers(self) -> dict[str, QuantWrapper]:
        """Every wrapped layer by name (the names of the prepared model)."""
        return {name: m for name, m in self.model.named_modules() if isinstance(m, QuantWrapper)}

    def param_quantizers(self) -> dict[str, Quantizer]:
        """Parameter quantizers keyed by parameter name (``"conv1.weight"``), as in encodings files."""
        return {
            f"{layer}.{p}": cast(Quantizer, q)
            for layer, w in self.layers().items()
            if w.repeat_of is None  # a later call of a layer shares its first call's weight quantizers
            for p, q in w.param_quantizers.items()
        }

    def activation_quantizers(self) -> dict[str, Quantizer]:
        """Input/output quantizers keyed by their qualified module name."""
        params = {id(q) for q in self.param_quantizers().values()}
        return {n: q for n, q in self.quantizers().items() if id(q) not in params}

    @property
    def device(self) -> torch.device:
        """Device of the simulated model's parameters (CPU for a model without parameters)."""
        first = next(self.model.parameters(), None)
        return first.device if first is not None else torch.device("cpu")

    # ------------------------------------------------------------------ switching
    def set_param_quantization(self, enabled: bool, layers: str | Iterable[str] | None = None) -> None:
        """Enable/disable weight quantizers globally or for the named layers (config-enabled ones only).

        ``layers``: a layer name or names (as in :meth:`layers`); None means all.
        """
        self._switch(enabled, layers, params=True)

    def set_activation_quantization(self, enabled: bool, layers: str | Iterable[str] | None = None) -> None:
        """Enable/disable input/output quantizers globally or for the named layers (a name or names)."""
        self._switch(enabled, layers, params=False)

    def _switch(self, enabled: bool, layers: str | Iterable[str] | None, params: bool) -> None:
        check_flag("enabled", enabled)
        all_layers = self.layers()
        names = list(all_layers) if layers is None else as_names("layers", layers)
        missing = [n for n in names if n not in all_layers]
        if missing:
            raise UnknownLayerError(unknown_layers_message(missing, list(all_layers)))
        for name in names:
            wrapper = all_layers[name]
            groups: list[Iterable[nn.Module]] = (
                [wrapper.param_quantizers.values()]
                if params
                else [wrapper.input_quantizers, wrapper.output_quantizers, wrapper.inner_quantizers()]
            )
            for group in groups:
                for q in map(_as_quantizer, group):
                    # Remember what the config chose so that re-enabling restores exactly that.
                    if not hasattr(q, "configured_enabled"):
                        q.configured_enabled = q.enabled
                    q.enabled = enabled and q.configured_enabled
        if not params and layers is None:
            for q in map(_as_quantizer, cast(nn.ModuleList, self.model.input_quantizers)):
                if not hasattr(q, "configured_enabled"):
                    q.configured_enabled = q.enabled
                q.enabled = enabled and q.configured_enabled

    # ------------------------------------------------------------------ calibration
    def compute_encodings(
        self,
        calibration: Any,
        num_batches: int | None = None,
        progress: bool = True,
        distributed: bool | None = None,
        process_group: Any = None,
    ) -> None:
        """Calibrate: run data through the model and set every quantizer's encoding.

        Args:
            calibration: an iterable of batches (tensor, tuple/list of tensors) or ``callable(model)`` that
                runs the model itself.
            num_batches: stop after this many batches of an iterable.
            progress: show a progress bar.
            distributed: merge the range statistics of all ``torch.distributed`` ranks before computing
                encodings, so every rank gets the encodings of all ranks' data (each rank passes its own
                share). None (default): merge when a process group is initialised with more than one rank.
                Every rank must call this (a collective); see :mod:`leantorch.distributed`.
            process_group: the ranks to merge over (default: all).

        Raises:
            CalibrationDataError: empty data, NaN/Inf (naming the batch and tensor), wrong structure (what a
                batch may be: :mod:`leantorch.batches`).
            InvalidOptionError: ``num_batches`` is not a whole number ≥ 1 (or None); ``distributed=True``
                without an initialised process group.
            DistributedMismatchError: calibration failed on another rank, or the ranks' quantizers differ.
        Nothing changes if an error is raised: previous encodings stay.

        Example:
            >>> sim = QuantSim(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), torch.randn(1, 4), scheme="minmax")
            >>> sim.compute_encodings([torch.randn(8, 4) for _ in range(2)], progress=False)
            >>> all(q.encoding is not None for q in sim.quantizers().values() if q.is_active)
            True
        """
        check_iterable(calibration, allow_callable=True)
        if num_batches is not None:
            check_count("num_batches", num_batches, hint=", or None for all batches")
        group = merge_group(distributed, process_group)
        named = {n: q for n, q in self.activation_quantizers().items() if q.needs_calibration}
        activations = list(named.values())
        keep, hooks = after_calibration_hooks(q.scheme for q in activations)  # e.g. scheme "downstream"
        if hooks and group is not None:
            raise InvalidOptionError("a scheme that runs the model after calibration is not merged across ranks yet")
        # Weights are encoded first so that activation ranges are those of the quantized-weight model.
        params = self._param_encodings()
        previous = [(q, q.encoding) for q, _ in params]
        was_training = self.model.training
        self.model.eval()
        for q, enc in params:
            q.set_encoding(enc)
        for q in activations:
            q.start_calibration()
        ran = False
        try:
            with torch.no_grad():
                kept = run_calibration(
                    self.model, self.example_input, self.device, calibration, num_batches, progress, keep=keep
                )
            ran = True
            if group is not None:
                # every one of them was started above, so none is None
                estimators = cast(dict[str, RangeEstimator], {n: q.statistics for n, q in named.items()})
                merge_estimators(estimators, group, self.device)
            results = list(zip(activations, finish_calibrations(activations, apply=False)))
        except BaseException:
            if group is not None and not ran:
                any_rank_failed(group, failed=True)  # the other ranks raise instead of waiting at the merge
            for q in activations:
                q.abort_calibration()
            for q, old in previous:
                q.set_encoding(old)
            raise
        finally:
            self.model.train(was_training)
            release_scratch()
        for q, found in results:
            if found is None and q.saw_only_empty:
                # It only ever quantizes an empty tensor (GPT-2's cat with a past of length 0): switched off, so
                # that evaluation and export do not ask for an encoding it cannot have.
                log.info("quantizer %s saw only empty tensors during calibration; disabled", q.name)
                q.enabled = False
            elif found is None:
                log.warning("quantizer %s saw no data during calibration", q.name)
            q.set_encoding(found)
        for hook in hooks:
            hook(self, kept, progress)

    def _param_encodings(self) -> list[tuple[Quantizer, Encoding]]:
        layers = self.layers()
        weights = [
            (q, getattr(layers[name.rpartition(".")[0]].module, name.rpartition(".")[2]).detach())
            for name, q in self.param_quantizers().items()
            if q.needs_calibration
        ]
        return tensor_encodings(weights)

    # ------------------------------------------------------------------ encodings files
    def save_encodings(self, path: str | Path, encodings_version: EncodingsVersion | None = None) -> None:
        """Write all encodings (activations by quantizer name, params by param name) in AIMET's encodings
        format ``encodings_version``: ``"0.6.1"``, ``"1.0.0"`` or ``"2.0.0"`` (None: 0.6.1, or 1.0.0 if blockwise).

        The file loads back with :meth:`load_encodings` into any ``QuantSim`` of the same model and config.

        Raises:
            InvalidOptionError: ``encodings_version`` is not one of the three (checked before anything is written).
        """
        check_version(encodings_version)
        activations = {n: q.encoding for n, q in self.activation_quantizers().items() if q.encoding is not None}
        params = {n: q.encoding for n, q in self.param_quantizers().items() if q.encoding is not None}
        write_encodings(path, encodings_dict(activations, params, version=encodings_version))

    def load_encodings(self, path: str | Path, freeze: bool = False, strict: bool = True) -> list[str]:
        """Load a file written by :meth:`save_encodings` or :meth:`export` (or an AIMET file named alike), in
        encodings format 0.6.1, 1.0.0 or 2.0.0 (told apart by its ``version`` key).

        Every number and name is checked first (rules in :mod:`leantorch.quant.encodings_file`); on any
        error nothing is applied.

        Args:
            path: the encodings file.
            freeze: keep the loaded encodings fixed through recalibration and range learning.
            strict: require the file to cover every active quantizer. With ``strict=False`` a partial file
                loads and the others keep their current encodings.

        Returns:
            The names of the active quantizers the file left alone (empty when ``strict``).

        Raises:
            EncodingsFileError: a bad number or structure, an unknown name, or (``strict``) an active
                quantizer without an encoding; the message names the entry and the fix.
        """
        targets = encoding_targets(self.layers(), self.quantizers())
        plan = match_encodings(read_encodings(path), targets, str(path))
        missing = check_coverage(targets, plan, strict, str(path))
        for target, enc in plan:
            target.quantizer.set_encoding(enc.to(self.device), freeze=freeze)
        if missing:
            log.warning(
                "%s left %d active quantizer(s) without a loaded encoding, e.g. %s", path, len(missing), missing[:5]
            )
        return missing

    def set_and_freeze_param_encodings(self, path: str | Path) -> None:
        """Load parameter encodings (e.g. from :func:`leantorch.adaround`), enable and freeze those quantizers.

        Accepts the files of :meth:`save_encodings`, :meth:`export` and ``adaround``; only their parameter
        encodings are applied, after the whole file is checked as in :meth:`load_encodings` (coverage aside:
        the other parameters keep being calibrated).
        """
        targets = encoding_targets(self.layers(), self.quantizers())
        plan = [(t, enc) for t, enc in match_encodings(read_encodings(path), targets, str(path)) if t.is_param]
        if not plan:
            raise EncodingsFileError(f"{path} holds no parameter encodings for this model; nothing to freeze")
        for target, enc in plan:
            target.quantizer.enabled = True
            target.quantizer.set_encoding(enc.to(self.device), freeze=True)

    # ------------------------------------------------------------------ export
    def export(
        self,
        path: str | Path,
        filename_prefix: str,
        example_input: Any = None,
        opset: int | None = None,
        unsigned_weights: bool = False,
        encodings_version: EncodingsVersion | None = None,
        format: str = "onnx_qdq",
    ) -> dict[str, Path]:
        """Write ``prefix.onnx``, ``prefix.encodings`` (AIMET JSON) and ``prefix.pth`` (weights).

        ``format`` is a registered export format (:mod:`leantorch.quant.exporters`): ``"onnx_qdq"`` (default,
        QuantizeLinear/DequantizeLinear pairs ONNX Runtime runs) or ``"onnx_float"`` (float ONNX whose tensor
        names the encodings file uses, for converters that quantize themselves, e.g. QNN). ``unsigned_weights=True``
        stores symmetric weights as uint8 (same grid) for ONNX Runtime on x86 CPUs without VNNI.
        ``encodings_version`` is the AIMET encodings format of ``prefix.encodings``: ``"0.6.1"``, ``"1.0.0"`` or
        ``"2.0.0"`` (None: 0.6.1, or 1.0.0 with blockwise weights); each loads back with :meth:`load_encodings`. See
        :func:`leantorch.quant.export.export_quantsim`.

        Example:
            >>> paths = sim.export("out", "model", format="onnx_float")  # doctest: +SKIP
        """
        exporter = get_exporter(format)
        return exporter.write(self, path, filename_prefix, example_input, opset, unsigned_weights, encodings_version)


def _as_quantizer(module: nn.Module) -> Quantizer:
    """An entry of a quantizer ModuleList/ModuleDict, typed as the Quantizer it is."""
    return cast(Quantizer, module)
