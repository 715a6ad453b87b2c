"""The Quantizer module: fake quantization on torch's native kernels, with straight-through gradients.

A quantizer is in one of three states:

* calibrating — passes the tensor through unchanged and feeds it to its range estimator;
* quantizing  — ``x̂ = (clamp(round(x/scale) - offset, 0, 2**bw-1) + offset) * scale`` via
  :func:`~leantorch.quant.primitives.fake_quantize` (gradient: identity inside the range, zero
  outside — the clipped straight-through estimator);
* exporting   — as quantizing, but leaves a marker node in the ONNX graph that :mod:`.export` replaces by
  QuantizeLinear/DequantizeLinear.

The encoding lives in buffers (``scale``, ``offset``) so that ``.to(device)`` and ``state_dict`` carry it.
With ``range_learning`` the same names hold ``nn.Parameter``s instead (``offset`` as a float, learnable for
asymmetric encodings only) and training uses
:func:`~leantorch.quant.primitives.learnable_fake_quantize`, whose gradients with respect to scale and
offset are those of LSQ (Esser et al., 2020). Inference and export always use the
learned values snapped to a valid grid (positive scale, integer offset), so they stay exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from ..errors import CalibrationDataError, ConfigError, EncodingsMissingError
from .blocks import blocks_fit, blockwise_encoding, from_block_rows, lpbq_compress, lpbq_scale, to_block_rows
from .encoding import FLOAT_BITWIDTH, FLT_MAX, MIN_SCALE, Encoding, check_bitwidth, compute_encoding
from .estimators import HistogramEstimator, QuantScheme, RangeEstimator, compute_ranges, make_estimator
from .float_formats import check_float_format, float_bitwidth, float_encoding, float_fake_cast, is_scaled
from .onnx_marker import OnnxQuantizeMarker as OnnxQuantizeMarker  # its home was here

# The numerics live in .primitives; fake_quantize and learnable_fake_quantize stay importable from here.
from .primitives import fake_quantize as fake_quantize
from .primitives import learnable_fake_quantize as learnable_fake_quantize
from .primitives import lsq_grad_scale

__all__ = ["Quantizer", "finish_calibrations", "OnnxQuantizeMarker"]


class Quantizer(nn.Module):
    """Fake-quantizes one tensor (per tensor, or per channel along ``axis``).

    Example:
        >>> q = Quantizer(bitwidth=8, symmetric=False, scheme="minmax")
        >>> q.start_calibration(); _ = q(torch.linspace(-1, 3, 100)); _ = q.finish_calibration()
        >>> round(float(q(torch.tensor([0.5]))), 6)  # snapped to the 8-bit grid over [-1, 3]
        0.501961
    """

    #: prepare() never traces into it (it is part of the simulation, not of the user's model).
    lt_leaf: ClassVar[bool] = True

    op_type = "Quantize"
    # Registered as buffers (or as parameters under range learning) in __init__/_store_grid; declared here
    # so that type checkers see tensors rather than nn.Module.__getattr__'s Tensor | Module.
    scale: torch.Tensor | None
    offset: torch.Tensor | None
    configured_enabled: bool  # set by QuantSim the first time it switches this quantizer off or on

    def __init__(
        self,
        bitwidth: int = 8,
        symmetric: bool = False,
        scheme: str | QuantScheme = QuantScheme.TF_ENHANCED,
        axis: int | None = None,
        unsigned_symmetric: bool = True,
        enabled: bool = True,
        name: str = "",
    ) -> None:
        super().__init__()
        self.bitwidth = check_bitwidth(bitwidth)
        self.symmetric = symmetric
        self.scheme = QuantScheme.parse(scheme)
        self.axis = axis
        #: blockwise weights (:mod:`.blocks`): input channels per block along ``block_axis``; None: per channel
        self.block_size: int | None = None
        self.block_axis: int | None = None
        #: LPBQ: block scales snap to integers in [1, 2**(decompressed_bw - bitwidth)] times a float per channel
        self.decompressed_bw: int | None = None
        self.block_channels = 0  # output channels of the last weight seen blockwise
        self.block_fallback: str | None = None  # why a weight asked to be blockwise stays per channel
        #: a float format (:mod:`.float_formats`) instead of an integer grid; set with :meth:`set_float_format`
        self.float_format: str | None = None
        self.unsigned_symmetric = unsigned_symmetric
        self.enabled = enabled
        self.name = name
        self.frozen = False  # a frozen encoding is never recomputed by calibration (nor learned)
        self.range_learning = False  # encodings set from now on become learnable parameters
        self.is_param = False  # set by QuantWrapper for weight/bias quantizers (LSQ gradient scaling)
        self.register_buffer("scale", None)
        self.register_buffer("offset", None)
        self._estimator: RangeEstimator | None = None
        self._calibrating = False
        self.saw_only_empty = False
        self.export_index: int | None = None  # set while exporting to ONNX

    # ----------------------------------------------------------------- encoding
    @property
    def encoding(self) -> Encoding | None:
        """The current encoding, or None before calibration."""
        if self.scale is None or self.offset is None:
            return None
        scale, offset = self._grid()
        return Encoding(
            self.bitwidth,
            self.symmetric,
            scale,
            offset,
            self.axis,
            *self._block_fields(),
            self.decompressed_bw,
            self.float_format,
        )

    def set_float_format(self, name: str | None) -> None:
        """Round to a float format (``float16``, ``bfloat16``, ``float8_e4m3fn``, ``float8_e5m2``; None: back to an
        integer grid of 8 bits). fp16/bf16 need no calibration; fp8 and integer grids are recalibrated.

        Example:
            >>> q = Quantizer(); q.set_float_format("fp16")
            >>> q.bitwidth, q(torch.tensor([1.0 + 2**-12])).item()
            (16, 1.0)
        """
        self.float_format = None if name is None else check_float_format(name)
        self.bitwidth = 8 if name is None else float_bitwidth(self.float_format)  # type: ignore[arg-type]
        self.block_size = self.block_axis = self.decompressed_bw = None
        self.set_encoding(None)
        if self.float_format is not None and not is_scaled(self.float_format):
            one = torch.ones(())
            self.set_encoding(float_encoding(one, one, self.float_format, None))

    @property
    def is_blockwise(self) -> bool:
        """True when this quantizer has one scale per block of input channels per output channel."""
        return self.block_size is not None and self.axis is not None and self.block_axis is not None

    def _block_fields(self) -> tuple[int | None, int | None]:
        return (self.block_size, self.block_axis) if self.is_blockwise else (None, None)

    @property
    def is_learnable(self) -> bool:
        """True when the encoding is held as trainable parameters (range learning, not frozen)."""
        return isinstance(self.scale, nn.Parameter)

    def _grid(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(float32 scale, int64 offset) in use; learned values are snapped to a valid grid."""
        assert self.scale is not None and self.offset is not None, "called only once an encoding is set"
        if not self.is_learnable:
            return self.scale, self.offset
        scale = self.scale.detach().abs().clamp_min(MIN_SCALE)
        offset = self.offset.detach().round().clamp(-(2**self.bitwidth - 1), 0).to(torch.int64)
        if self.decompressed_bw is not None and scale.dim() == 2:  # learned block scales back onto LPBQ's grid
            scale = lpbq_scale(*lpbq_compress(scale, self.bitwidth, self.decompressed_bw))
        return scale, offset

    def set_encoding(self, enc: Encoding | None, freeze: bool = False) -> None:
        """Use ``enc`` (adopting its bitwidth and symmetry); ``freeze`` protects it from recalibration
        and from range learning."""
        if enc is None:
            self._store_grid(None, None, learnable=False)
            self.frozen = False
            return
        device = self.scale.device if self.scale is not None else enc.scale.device
        self.bitwidth, self.symmetric, self.axis = enc.bitwidth, enc.symmetric, enc.axis
        self.block_size, self.block_axis, self.decompressed_bw = enc.block_size, enc.block_axis, enc.decompressed_bw
        self.float_format = enc.float_format
        scale = enc.scale.detach().clone().to(device=device, dtype=torch.float32)
        offset = enc.offset.detach().clone().to(device=device, dtype=torch.int64)
        self.frozen = freeze
        self._store_grid(scale, offset, learnable=self.range_learning and not freeze)

    def set_range_learning(self, enabled: bool) -> None:
        """Hold the encoding as trainable parameters (``enabled``) or as fixed buffers, keeping its values.

        Example:
            >>> q = Quantizer(bitwidth=4, scheme="minmax")
            >>> _ = q.encoding_from_tensor(torch.linspace(-1, 1, 9)); q.set_range_learning(True)
            >>> [name for name, _ in q.named_parameters()]
            ['scale', 'offset']
        """
        self.range_learning = enabled
        if self.scale is not None:
            scale, offset = self._grid()
            self._store_grid(scale.clone(), offset.clone(), learnable=enabled and not self.frozen)

    def _store_grid(self, scale: torch.Tensor | None, offset: torch.Tensor | None, learnable: bool) -> None:
        if learnable and self.is_learnable:
            # learnable is only asked for with an encoding, and is_learnable means one is held
            assert scale is not None and offset is not None and self.scale is not None and self.offset is not None
            if self.scale.shape == scale.shape:
                # Update in place so that an optimizer built earlier keeps training the same tensors.
                with torch.no_grad():
                    self.scale.copy_(scale)
                    self.offset.copy_(offset.to(self.offset.dtype))
                self.offset.requires_grad_(not self.symmetric)
                return
        for name in ("scale", "offset"):
            self._parameters.pop(name, None)
            self._buffers.pop(name, None)
        if learnable and scale is not None and offset is not None:
            self.register_parameter("scale", nn.Parameter(scale))
            # Symmetric grids keep their fixed offset; only asymmetric ones learn where zero sits.
            self.register_parameter("offset", nn.Parameter(offset.to(torch.float32), requires_grad=not self.symmetric))
        else:
            self.register_buffer("scale", scale)
            self.register_buffer("offset", offset)

    @property
    def is_active(self) -> bool:
        """True when this quantizer changes the tensor (enabled and below 32 bits)."""
        return self.enabled and self.bitwidth != FLOAT_BITWIDTH

    @property
    def needs_calibration(self) -> bool:
        """Active, not frozen, and not a plain float cast (fp16/bf16 have no range to find)."""
        plain_cast = self.float_format is not None and not is_scaled(self.float_format)
        return self.is_active and not self.frozen and not plain_cast

    # ----------------------------------------------------------------- calibration
    def start_calibration(self, every_value: bool = False) -> None:
        """Pass tensors through unchanged and collect their statistics until :meth:`finish_calibration`.

        ``every_value``: histograms count every value (a tensor known in full, such as a weight) instead of a
        strided sample of each large activation (:mod:`.histogram_sample`).
        """
        if self.float_format is not None and not is_scaled(self.float_format):
            return  # a plain cast (fp16, bf16) has nothing to calibrate: its encoding stays
        # Blocks are calibrated as the channels (rows) of the weight's block view.
        self._estimator = make_estimator(self.scheme, 0 if self.is_blockwise else self.axis)
        if every_value and isinstance(self._estimator, HistogramEstimator):
            self._estimator.values_per_sample = None
        self._calibrating = True
        #: the last calibration passed this quantizer only empty tensors (a cache of length 0): nothing to quantize
        self.saw_only_empty = False

    def finish_calibration(self, apply: bool = True) -> Encoding | None:
        """Stop collecting; compute the encoding (and use it when ``apply``). None if nothing was seen."""
        return finish_calibrations([self], apply)[0]

    @property
    def statistics(self) -> RangeEstimator | None:
        """The range statistics being collected (None when not calibrating): distributed calibration merges
        them across ranks before :meth:`finish_calibration`."""
        return self._estimator

    def take_statistics(self) -> RangeEstimator | None:
        """Stop collecting and hand over the statistics (None when nothing was seen); the encoding stays."""
        self._calibrating = False
        estimator, self._estimator = self._estimator, None
        return estimator if estimator is not None and estimator.has_data else None

    def abort_calibration(self) -> None:
        """Drop collected statistics; the previous encoding stays."""
        self._calibrating = False
        self._estimator = None

    def encoding_from_tensor(self, x: torch.Tensor) -> Encoding:
        """Compute (and use) the encoding of a tensor known in full, e.g. a weight."""
        self.start_calibration(every_value=True)
        try:
            self._observe(x)
        finally:
            enc = self.finish_calibration()
        assert enc is not None
        return enc

    def _observe(self, x: torch.Tensor) -> None:
        if x.numel() == 0:  # an empty tensor (a cache of length 0) holds no values to calibrate on
            assert self._estimator is not None
            self.saw_only_empty = not self._estimator.has_data
            return
        self.saw_only_empty = False
        # min/max propagate NaN and show Inf, so one reduction checks the whole tensor.
        wide = torch.float64 if x.dtype == torch.float64 else torch.float32  # float64 keeps values beyond float32
        lo, hi = torch.aminmax(x.detach().to(wide))
        extremes = torch.stack([lo, hi])
        if not bool(torch.isfinite(extremes).all()):
            raise CalibrationDataError(
                f"{self.name or 'a quantized tensor'} contains NaN or Inf during calibration; "
                "check the calibration data and the model's numerics for this tensor."
            )
        # Only float64 can exceed float32's range (float32/16 are finite here), so only it pays this sync.
        if x.dtype == torch.float64 and bool((extremes.abs() > FLT_MAX).any()):
            raise CalibrationDataError(
                f"{self.name or 'a quantized tensor'} holds values up to {float(extremes.abs().max()):.4g} during "
                f"calibration, beyond float32's largest value ({FLT_MAX:.4g}); quantization scales are float32. "
                "Check the calibration data and the model's numerics for this tensor."
            )
        assert self._estimator is not None
        self._estimator.observe(self._block_rows(x.detach()) if self.is_blockwise else x, (lo, hi))

    def _block_rows(self, x: torch.Tensor) -> torch.Tensor:
        assert self.block_size is not None and self.axis is not None and self.block_axis is not None
        if not blocks_fit(x.shape, self.block_axis, self.block_size):
            raise ConfigError(
                f"{self.name or 'a weight quantizer'}: {x.shape[self.block_axis]} input channels (axis "
                f"{self.block_axis}) do not split into blocks of {self.block_size}; pick a block size that "
                "divides them, or quantize this layer per channel"
            )
        self.block_channels = x.shape[self.axis]
        return to_block_rows(x, self.axis, self.block_axis, self.block_size)

    # ----------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.is_active:
            return x
        if self._calibrating:
            self._observe(x)
            return x
        if x.numel() == 0:  # nothing to quantize (and no encoding needed for it)
            return x
        if self.scale is None:
            raise EncodingsMissingError(
                f"quantizer {self.name or ''} has no encoding: call sim.compute_encodings(...) "
                "(or load encodings) before evaluating or exporting the model."
            )
        assert self.offset is not None  # set together with scale
        if self.is_blockwise and self.export_index is None:
            # per-channel quantization of the block view (the export marks the weight as it is)
            return from_block_rows(self._quantize(self._block_rows(x), 0), x.shape, *self._block_view())
        return self._quantize(x, self.axis)

    def _block_view(self) -> tuple[int, int, int]:
        assert self.axis is not None and self.block_axis is not None and self.block_size is not None
        return self.axis, self.block_axis, self.block_size

    def _quantize(self, x: torch.Tensor, axis: int | None) -> torch.Tensor:
        assert self.scale is not None and self.offset is not None  # forward checked
        flat = self.is_blockwise and axis == 0  # the block view: one row per (channel, block)
        if self.float_format is not None and self.export_index is None:
            return float_fake_cast(x, self._grid()[0], axis, self.float_format)
        if self.is_learnable and torch.is_grad_enabled() and self.export_index is None:
            scale_p, offset_p = (self.scale.reshape(-1), self.offset.reshape(-1)) if flat else (self.scale, self.offset)
            return learnable_fake_quantize(x, scale_p, offset_p, self.bitwidth, axis, self._lsq_grad_factor(x))
        scale, offset = self._grid()
        if flat:
            scale, offset = scale.reshape(-1), offset.reshape(-1)
        if self.export_index is not None:
            # torch's stubs leave Function.apply untyped
            marked: torch.Tensor = OnnxQuantizeMarker.apply(  # type: ignore[no-untyped-call]
                x,
                scale,
                offset,
                self.bitwidth,
                self.axis,
                self.export_index,
                (*self._block_fields(), self.float_format),
            )
            return marked
        return fake_quantize(x, scale, offset, self.bitwidth, axis)

    def _lsq_grad_factor(self, x: torch.Tensor) -> float:
        """LSQ's gradient scale ``1/sqrt(N * Q_P)``: N is the number of weights for a parameter, the number
        of features per sample for an activation; Q_P the largest positive integer level."""
        count = x.numel() if self.is_param or x.dim() < 2 else x[0].numel()
        return lsq_grad_scale(count, self.bitwidth, self.symmetric)

    def extra_repr(self) -> str:
        kind = "symmetric" if self.symmetric else "asymmetric"
        where = "per-tensor" if self.axis is None else f"per-channel(axis={self.axis})"
        if self.is_blockwise:
            where = f"blockwise(axis={self.axis}, block_axis={self.block_axis}, block_size={self.block_size})"
            where += f", lpbq(decompressed_bw={self.decompressed_bw})" if self.decompressed_bw else ""
        state = "enabled" if self.enabled else "disabled"
        if self.float_format is not None:
            return f"{self.float_format}, {where}, {state}"
        return f"bw={self.bitwidth}, {kind}, {where}, scheme={self.scheme.value}, {state}"


def finish_calibrations(quantizers: Sequence[Quantizer], apply: bool = True) -> list[Encoding | None]:
    """:meth:`Quantizer.finish_calibration` of many quantizers, with their range searches batched
    (:func:`~leantorch.quant.estimators.compute_ranges`): same encodings, one search per kind of estimator.

    Example:
        >>> qs = [Quantizer(scheme="tf_enhanced") for _ in range(2)]
        >>> for q in qs:
        ...     q.start_calibration(); _ = q(torch.randn(1000))
        >>> [enc.bitwidth for enc in finish_calibrations(qs)]
        [8, 8]
    """
    jobs = [(q, q.take_statistics()) for q in quantizers]
    seen = [(q, est) for q, est in jobs if est is not None]
    ranges = compute_ranges([(est, q.bitwidth, q.symmetric, q.unsigned_symmetric) for q, est in seen])
    found: dict[int, Encoding] = {}
    for (q, _), (lo, hi) in zip(seen, ranges):
        if q.float_format is not None:
            found[id(q)] = enc = float_encoding(lo, hi, q.float_format, q.axis)
            if apply:
                q.set_encoding(enc.to(lo.device))
            continue
        enc = compute_encoding(lo, hi, q.bitwidth, q.symmetric, q.unsigned_symmetric, q.axis)
        if q.is_blockwise:
            _, block_axis, block_size = q._block_view()
            enc = blockwise_encoding(enc, q.block_channels, block_size, block_axis, q.decompressed_bw)
        if apply:
            q.set_encoding(enc.to(lo.device))
        found[id(q)] = enc
    return [found.get(id(q)) for q in quantizers]
