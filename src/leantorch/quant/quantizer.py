"""The Quantizer module: fake quantization on torch's native kernels, with straight-through gradients.

A quantizer is in one of three states:

* calibrating — passes the tensor through unchanged and feeds it to its range estimator;
* quantizing  — ``x̂ = (clamp(round(x/scale) - offset, 0, 2**bw-1) + offset) * scale`` via
  ``torch.fake_quantize_per_{tensor,channel}_affine`` (gradient: identity inside the range, zero
  outside — the clipped straight-through estimator);
* exporting   — as quantizing, but leaves a marker node in the ONNX graph that :mod:`.export` replaces by
  QuantizeLinear/DequantizeLinear.

The encoding lives in buffers (``scale``, ``offset``) so that ``.to(device)`` and ``state_dict`` carry it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import CalibrationDataError, EncodingsMissingError
from .encoding import FLOAT_BITWIDTH, Encoding, check_bitwidth, compute_encoding
from .estimators import QuantScheme, RangeEstimator, make_estimator


class Quantizer(nn.Module):
    """Fake-quantizes one tensor (per tensor, or per channel along ``axis``).

    Example:
        >>> q = Quantizer(bitwidth=8, symmetric=False, scheme="minmax")
        >>> q.start_calibration(); _ = q(torch.linspace(-1, 3, 100)); _ = q.finish_calibration()
        >>> round(float(q(torch.tensor([0.5]))), 6)  # snapped to the 8-bit grid over [-1, 3]
        0.501961
    """

    op_type = "Quantize"

    def __init__(
        self,
        bitwidth: int = 8,
        symmetric: bool = False,
        scheme: "str | QuantScheme" = QuantScheme.TF_ENHANCED,
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
        self.unsigned_symmetric = unsigned_symmetric
        self.enabled = enabled
        self.name = name
        self.frozen = False  # a frozen encoding is never recomputed by calibration
        self.register_buffer("scale", None)
        self.register_buffer("offset", None)
        self._estimator: RangeEstimator | None = None
        self._calibrating = False
        self.export_index: int | None = None  # set while exporting to ONNX

    # ----------------------------------------------------------------- encoding
    @property
    def encoding(self) -> Encoding | None:
        """The current encoding, or None before calibration."""
        if self.scale is None or self.offset is None:
            return None
        return Encoding(self.bitwidth, self.symmetric, self.scale, self.offset, self.axis)

    def set_encoding(self, enc: Encoding | None, freeze: bool = False) -> None:
        """Use ``enc`` (adopting its bitwidth and symmetry); ``freeze`` protects it from recalibration."""
        if enc is None:
            self.scale = self.offset = None
            self.frozen = False
            return
        device = self.scale.device if self.scale is not None else None
        self.bitwidth, self.symmetric, self.axis = enc.bitwidth, enc.symmetric, enc.axis
        self.scale = enc.scale.detach().clone().to(torch.float32)
        self.offset = enc.offset.detach().clone().to(torch.int64)
        if device is not None:
            self.scale, self.offset = self.scale.to(device), self.offset.to(device)
        self.frozen = freeze

    @property
    def is_active(self) -> bool:
        """True when this quantizer changes the tensor (enabled and below 32 bits)."""
        return self.enabled and self.bitwidth != FLOAT_BITWIDTH

    # ----------------------------------------------------------------- calibration
    def start_calibration(self) -> None:
        """Pass tensors through unchanged and collect their statistics until :meth:`finish_calibration`."""
        self._estimator = make_estimator(self.scheme, self.axis)
        self._calibrating = True

    def finish_calibration(self, apply: bool = True) -> Encoding | None:
        """Stop collecting; compute the encoding (and use it when ``apply``). None if nothing was seen."""
        self._calibrating = False
        estimator, self._estimator = self._estimator, None
        if estimator is None or not estimator.has_data:
            return None
        lo, hi = estimator.compute_range(self.bitwidth, self.symmetric, self.unsigned_symmetric)
        enc = compute_encoding(lo, hi, self.bitwidth, self.symmetric, self.unsigned_symmetric, self.axis)
        if apply:
            self.set_encoding(enc.to(lo.device))
        return enc

    def abort_calibration(self) -> None:
        """Drop collected statistics; the previous encoding stays."""
        self._calibrating = False
        self._estimator = None

    def encoding_from_tensor(self, x: torch.Tensor) -> Encoding:
        """Compute (and use) the encoding of a tensor known in full, e.g. a weight."""
        self.start_calibration()
        try:
            self._observe(x)
        finally:
            enc = self.finish_calibration()
        assert enc is not None
        return enc

    def _observe(self, x: torch.Tensor) -> None:
        # min/max propagate NaN and show Inf, so one reduction checks the whole tensor.
        if not bool(torch.isfinite(torch.stack(torch.aminmax(x.detach().float()))).all()):
            raise CalibrationDataError(
                f"{self.name or 'a quantized tensor'} contains NaN or Inf during calibration; "
                "check the calibration data and the model's numerics for this tensor."
            )
        assert self._estimator is not None
        self._estimator.observe(x)

    # ----------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.is_active:
            return x
        if self._calibrating:
            self._observe(x)
            return x
        if self.scale is None:
            raise EncodingsMissingError(
                f"quantizer {self.name or ''} has no encoding: call sim.compute_encodings(...) "
                "(or load encodings) before evaluating or exporting the model."
            )
        if self.export_index is not None:
            return OnnxQuantizeMarker.apply(x, self.scale, self.offset, self.bitwidth, self.axis, self.export_index)
        return fake_quantize(x, self.scale, self.offset, self.bitwidth, self.axis)

    def extra_repr(self) -> str:
        kind = "symmetric" if self.symmetric else "asymmetric"
        where = "per-tensor" if self.axis is None else f"per-channel(axis={self.axis})"
        state = "enabled" if self.enabled else "disabled"
        return f"bw={self.bitwidth}, {kind}, {where}, scheme={self.scheme.value}, {state}"


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, bitwidth: int,
                  axis: int | None = None) -> torch.Tensor:
    """Quantize-dequantize ``x`` with torch's native kernels (STE gradients).

    Without gradients, ``round(x / scale)`` is computed exactly as ONNX QuantizeLinear defines it (float32
    division, round half to even). With gradients, torch's fake-quant kernels are used (STE); they
    multiply by ``1/scale`` instead, which can differ by one step only at values within float32 rounding
    of a half-step tie.

    Example:
        >>> fake_quantize(torch.tensor([0.26, 9.0]), torch.tensor(0.1), torch.tensor(0), 4).tolist()
        [0.30000001192092896, 1.5]
    """
    qmax = 2**bitwidth - 1
    work = x if x.dtype == torch.float32 else x.float()
    if axis is not None:
        axis = axis % x.dim()
    if not (torch.is_grad_enabled() and work.requires_grad):
        out = _fake_quantize_inference(work, scale.float(), offset, qmax, axis)
    elif axis is None:
        zero_point = (-offset).to(torch.int32)
        out = torch.fake_quantize_per_tensor_affine(work, scale.reshape(1).float(), zero_point.reshape(1), 0, qmax)
    else:
        out = torch.fake_quantize_per_channel_affine(work, scale.float(), (-offset).to(torch.int32), axis, 0, qmax)
    return out if out.dtype == x.dtype else out.to(x.dtype)


def _fake_quantize_inference(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, qmax: int,
                             axis: int | None) -> torch.Tensor:
    """ONNX QuantizeLinear/DequantizeLinear arithmetic (float32 ``x / scale``, half-to-even rounding) as
    in-place elementwise ops: about 2.5x faster on CPU than the native kernel, which also builds a
    gradient mask."""
    if axis is not None:
        shape = [1] * x.dim()
        shape[axis] = -1
        scale, offset = scale.reshape(shape), offset.reshape(shape)
    offset = offset.to(torch.float32)
    out = torch.div(x, scale)
    out.round_().sub_(offset).clamp_(0, qmax).add_(offset).mul_(scale)
    return out


class OnnxQuantizeMarker(torch.autograd.Function):
    """Fake quantization in torch; a ``leantorch::Quantize(index)`` node in a TorchScript ONNX export.

    :mod:`.export` replaces every marker by [Clip →] QuantizeLinear → DequantizeLinear built from quantizer
    ``index``'s encoding (torch's own export of fake-quant ops only knows 8-bit ranges).
    """

    @staticmethod
    def forward(ctx, x, scale, offset, bitwidth, axis, index):  # type: ignore[no-untyped-def,override]
        return fake_quantize(x, scale, offset, bitwidth, axis)

    @staticmethod
    def symbolic(g, x, scale, offset, bitwidth, axis, index):  # type: ignore[no-untyped-def]
        out = g.op("leantorch::Quantize", x, index_i=index)
        out.setType(x.type())  # same shape and dtype as the input: lets the exporter infer shapes
        return out
