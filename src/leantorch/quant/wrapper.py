"""QuantWrapper: a layer with quantizers on its inputs, parameters and outputs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from .exact_batch_norm import exact_batch_norm, uses_exact_batch_norm
from .quantizer import Quantizer

__all__ = ["QuantWrapper"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class QuantWrapper(nn.Module):
    """Runs ``module`` on quantized inputs and parameters and quantizes its outputs.

    Quantizers start disabled; :class:`~leantorch.quant.sim.QuantSim` enables them per its config.

    Example:
        >>> w = QuantWrapper(nn.Linear(4, 2), "Linear", num_inputs=1, num_outputs=1)
        >>> sorted(w.param_quantizers)
        ['bias', 'weight']
    """

    #: prepare() never traces into it (it is part of the simulation, not of the user's model).
    lt_leaf: ClassVar[bool] = True

    def __init__(
        self,
        module: nn.Module,
        op_type: str,
        num_inputs: int,
        num_outputs: int,
        repeat_of: QuantWrapper | None = None,
        repeat_name: str | None = None,
        input_positions: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        #: the positional argument each input quantizer quantizes (``Mul(0.5, x)``: only ``x``, at position 1)
        self.input_positions: tuple[int, ...] = tuple(range(num_inputs) if input_positions is None else input_positions)
        self.module = module
        self.op_type = op_type
        self.input_quantizers = nn.ModuleList(Quantizer(enabled=False) for _ in range(num_inputs))
        self.output_quantizers = nn.ModuleList(Quantizer(enabled=False) for _ in range(num_outputs))
        #: For a later call of a layer called at several places: the name of its first call's wrapper, whose
        #: weights and weight quantizers it shares (it has activation quantizers of its own).
        self.repeat_of: str | None = repeat_name if repeat_of is not None else None
        self.param_quantizers: nn.ModuleDict
        if repeat_of is not None:
            self.param_quantizers = repeat_of.param_quantizers
        else:
            self.param_quantizers = nn.ModuleDict(
                {name: Quantizer(enabled=False) for name, _ in module.named_parameters(recurse=False)}
            )
        for q in self.param_quantizers.values():
            cast(Quantizer, q).is_param = True
        # Exact types only: a subclass (e.g. a conv that pads in its own forward) goes the generic way.
        self._kind = "conv" if type(module) in _CONVS else "linear" if type(module) is nn.Linear else "generic"
        self._cache: dict[str, tuple[tuple[Any, ...], torch.Tensor]] = {}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        quantizer_at = dict(zip(self.input_positions, self.input_quantizers))
        args = tuple(
            quantizer_at[i](a) if i in quantizer_at and isinstance(a, torch.Tensor) else a for i, a in enumerate(args)
        )
        params = self.quantized_params()
        if uses_exact_batch_norm(self.module) and len(args) == 1 and not kwargs:
            # ONNX Runtime's BatchNormalization rounds differently from torch's; this form it matches exactly.
            out = exact_batch_norm(args[0], self.module, params.get("weight"), params.get("bias"))
        elif not params:
            out = self.module(*args, **kwargs)
        elif self._kind == "conv":
            conv = cast(nn.modules.conv._ConvNd, self.module)
            out = conv._conv_forward(args[0], params.get("weight", conv.weight), params.get("bias", conv.bias))
        elif self._kind == "linear":
            linear = cast(nn.Linear, self.module)
            out = F.linear(args[0], params.get("weight", linear.weight), params.get("bias", linear.bias))
        else:
            out = self._call_with_params(params, args, kwargs)
        return self._quantize_outputs(out)

    def _call_with_params(self, params: dict[str, torch.Tensor], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run the module's own forward with some parameters swapped for their quantized versions.

        (``torch.func.functional_call`` does the same but cannot be traced by the ONNX exporter.)
        """
        slots = self.module._parameters
        saved = {name: slots[name] for name in params}
        try:
            slots.update(params)  # type: ignore[arg-type]  # plain tensors in the parameter slots, for this call only
            return self.module(*args, **kwargs)
        finally:
            slots.update(saved)

    def inner_quantizers(self) -> list[Quantizer]:
        """The quantizers inside the wrapped op module (an RNN's gate and state quantizers): they quantize
        activations inside the op, so they are switched and configured with its activation quantizers."""
        return [m for m in self.module.modules() if isinstance(m, Quantizer)]

    def quantized_params(self) -> dict[str, torch.Tensor]:
        """Fake-quantized versions of the parameters whose quantizers are active."""
        result = {}
        # In inference, the quantized weight is reused until the weight or its encoding changes.
        cacheable = not self.training and not torch.is_grad_enabled()
        for name, q in self.param_quantizers.items():
            if not q.is_active:
                continue
            p = getattr(self.module, name)
            if not cacheable or q.export_index is not None or q.scale is None:
                result[name] = q(p)
                continue
            key = (p._version, p.data_ptr(), id(q.scale), q.scale._version, q.offset._version, q.bitwidth, q.axis)
            hit = self._cache.get(name)
            if hit is None or hit[0] != key:
                hit = (key, q(p))
                self._cache[name] = hit
            result[name] = hit[1]
        return result

    def _quantize_outputs(self, out: Any) -> Any:
        if isinstance(out, torch.Tensor):
            return self.output_quantizers[0](out) if len(self.output_quantizers) else out
        if isinstance(out, tuple):
            quantizers = iter(self.output_quantizers)
            return tuple(next(quantizers)(o) if isinstance(o, torch.Tensor) else o for o in out)
        return out

    def extra_repr(self) -> str:
        return f"op_type={self.op_type}"
