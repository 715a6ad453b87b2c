"""Recurrent layers: ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` (tanh or relu), quantized as AIMET's quantized
recurrent layers (``QcQuantizeRecurrent``) are.

:func:`leantorch.prepare` replaces each one by a :class:`RecurrentLoop` (:class:`LSTMLoop`, :class:`GRULoop`,
:class:`RNNLoop`) that holds the same parameters under torch's names (``weight_ih_l0``, ``bias_hh_l1_reverse``
...) and runs the time loop in Python. The tracer keeps it as one layer, so ``QuantSim`` wraps it like any
other: one quantizer per parameter tensor (weights per the config's weight rule, per channel along their
``4H``/``3H``/``H`` output rows when per-channel; biases per its bias rule), plus the op's own activation
quantizers in ``recurrent_quantizers``, one set per layer and direction shared by every time step:

* LSTM: ``input_gate``, ``forget_gate``, ``cell_gate``, ``output_gate`` (after their sigmoid/tanh), ``cell``
  (``c_t``) and ``hidden`` (``h_t``);
* GRU: ``reset_gate``, ``update_gate``, ``new_gate`` and ``hidden``;
* RNN: ``hidden``;
* layers after the first: ``input_l{k}`` on the layer's input (AIMET's ``input_l{k}``; for a bidirectional
  layer below, the concatenation of two grids).

As in AIMET, a given initial state (``h0``, ``c0``) is quantized with the ``hidden``/``cell`` quantizer of its
layer and direction. Each time step is exported to ONNX as its own ops (see README "Recurrent layers").

Example:
    >>> lstm = nn.LSTM(4, 3, num_layers=2)
    >>> loop = LSTMLoop(lstm)
    >>> x = torch.randn(5, 2, 4)
    >>> bool(torch.allclose(loop(x)[0], lstm(x)[0], atol=1e-6)), sorted(loop.recurrent_quantizers)[:3]
    (True, ['cell_gate_l0', 'cell_gate_l1', 'cell_l0'])
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from ..errors import TraceError
from ..quant.quantizer import Quantizer
from .registry import OpSpec, register

__all__ = ["STATE_QUANTIZERS", "RecurrentLoop", "RNNLoop", "LSTMLoop", "GRULoop", "to_loop", "LSTM", "GRU", "RNN"]

#: The activation quantizers of one layer and direction, by cell type.
STATE_QUANTIZERS = {
    "LSTM": ("input_gate", "forget_gate", "cell_gate", "output_gate", "cell", "hidden"),
    "GRU": ("reset_gate", "update_gate", "new_gate", "hidden"),
    "RNN": ("hidden",),
}

_KEEP_FLOAT = "keep it in float with leaf_modules=[nn.{cls}] (or the module's qualified name)"


class RecurrentLoop(nn.Module):
    """A torch recurrent layer as an explicit loop over time steps, with quantizers inside the cell.

    Computes what the source ``nn.LSTM``/``nn.GRU``/``nn.RNN`` computes (same parameters, same outputs and
    final states); subclasses give the cell. Its parameters are the source's ``Parameter`` objects.

    Raises:
        TraceError: ``proj_size > 0`` (built), a ``PackedSequence`` input (called).
    """

    kind = "RNN"

    def __init__(self, source: nn.RNNBase) -> None:
        super().__init__()
        cls = type(source).__name__
        if getattr(source, "proj_size", 0):
            raise TraceError(
                f"{cls} with proj_size={source.proj_size} cannot be quantized by leantorch (the projected "
                f"hidden state has no quantized form): {_KEEP_FLOAT.format(cls=cls)}, or use proj_size=0"
            )
        self.source_class = cls
        self.input_size, self.hidden_size = source.input_size, source.hidden_size
        self.num_layers, self.bias, self.batch_first = source.num_layers, source.bias, source.batch_first
        self.dropout, self.bidirectional = float(source.dropout), source.bidirectional
        self.nonlinearity = getattr(source, "nonlinearity", "tanh")
        self.suffixes = ["", "_reverse"] if source.bidirectional else [""]
        for name in source._flat_weights_names:
            setattr(self, name, getattr(source, name))  # the same Parameter: state dicts keep torch's names
        quantizers = {
            f"{name}_l{layer}{suffix}": Quantizer(enabled=False)
            for layer in range(self.num_layers)
            for suffix in self.suffixes
            for name in STATE_QUANTIZERS[self.kind]
        }
        quantizers |= {f"input_l{layer}": Quantizer(enabled=False) for layer in range(1, self.num_layers)}
        self.recurrent_quantizers = nn.ModuleDict(dict(sorted(quantizers.items())))

    @property
    def weight_names(self) -> tuple[str, ...]:
        """The weight matrices (``weight_ih_l0``, ``weight_hh_l0`` ...): quantized by the weight rule."""
        return tuple(name for name, _ in self.named_parameters(recurse=False) if name.startswith("weight_"))

    def forward(self, input: torch.Tensor, hx: Any = None) -> tuple[torch.Tensor, Any]:
        if isinstance(input, PackedSequence):
            raise TraceError(
                f"{self.source_class} called on a PackedSequence: leantorch quantizes recurrent layers on padded "
                f"tensors only. Pass the padded batch (torch.nn.utils.rnn.pad_packed_sequence), or "
                f"{_KEEP_FLOAT.format(cls=self.source_class)}"
            )
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(1)  # an unbatched sequence is a batch of one
        if self.batch_first and batched:
            x = x.transpose(0, 1)
        if torch.jit.is_tracing():
            # The loop below is unrolled for this many steps. A reshape to the traced length (batch and
            # features stay symbolic) makes the exported graph refuse any other length instead of
            # silently computing the first steps only.
            x = x.reshape(int(x.shape[0]), x.shape[1], x.shape[2])
        h0, c0 = self._initial_states(hx, batched)
        finals_h, finals_c = [], []
        for layer in range(self.num_layers):
            if layer:
                if self.dropout and self.training:
                    x = F.dropout(x, self.dropout, training=True)  # as torch: between layers, in training
                x = self.recurrent_quantizers[f"input_l{layer}"](x)
            outputs = []
            for direction, suffix in enumerate(self.suffixes):
                index = layer * len(self.suffixes) + direction
                h = None if h0 is None else h0[index]
                c = None if c0 is None else c0[index]
                out, h, c = self._direction(x, f"l{layer}{suffix}", bool(direction), h, c)
                outputs.append(out)
                finals_h.append(h)
                if c is not None:
                    finals_c.append(c)
            x = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
        output = x.transpose(0, 1) if self.batch_first and batched else x
        h_n = torch.stack(finals_h)
        c_n = torch.stack(finals_c) if finals_c else None
        if not batched:
            output, h_n = output.squeeze(1), h_n.squeeze(1)
            c_n = None if c_n is None else c_n.squeeze(1)
        return (output, (h_n, c_n)) if self.kind == "LSTM" else (output, h_n)

    def _initial_states(self, hx: Any, batched: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(h0, c0)`` as ``[layers * directions, batch, hidden]`` (None: zeros, never materialised)."""
        if hx is None:
            return None, None
        h0, c0 = hx if self.kind == "LSTM" else (hx, None)
        if not batched:
            h0 = h0.unsqueeze(1)
            c0 = None if c0 is None else c0.unsqueeze(1)
        return h0, c0

    def _direction(
        self, x: torch.Tensor, key: str, reverse: bool, h: torch.Tensor | None, c: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Run one layer in one direction over ``x`` ``[T, B, F]``: (outputs ``[T, B, H]``, last h, last c)."""
        q = {name: self.recurrent_quantizers[f"{name}_{key}"] for name in STATE_QUANTIZERS[self.kind]}
        w_ih, w_hh = getattr(self, f"weight_ih_{key}"), getattr(self, f"weight_hh_{key}")
        b_ih = getattr(self, f"bias_ih_{key}") if self.bias else None
        b_hh = getattr(self, f"bias_hh_{key}") if self.bias else None
        # As AIMET does, a given initial state is put on the grid of the state it stands for.
        h = None if h is None else q["hidden"](h)
        c = None if c is None or "cell" not in q else q["cell"](c)
        gi = F.linear(x, w_ih, b_ih)  # the input projection of every step at once (one MatMul)
        steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
        outputs: list[torch.Tensor] = [gi] * x.shape[0]  # placeholders, each overwritten below
        for t in steps:
            # With a zero state (None) only the recurrent bias remains: no zeros tensor whose batch size
            # an ONNX export would freeze.
            gh = b_hh if h is None else F.linear(h, w_hh, b_hh)
            h, c = self.cell(gi[t], gh, h, c, q)
            outputs[t] = h
        assert h is not None  # a sequence has at least one step
        return torch.stack(outputs), h, c

    def cell(
        self,
        gi: torch.Tensor,
        gh: torch.Tensor | None,
        h: torch.Tensor | None,
        c: torch.Tensor | None,
        q: dict[str, nn.Module],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One step of a vanilla RNN: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``."""
        pre = gi if gh is None else gi + gh
        return q["hidden"](torch.tanh(pre) if self.nonlinearity == "tanh" else torch.relu(pre)), None

    def extra_repr(self) -> str:
        return (
            f"{self.source_class}({self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"bias={self.bias}, batch_first={self.batch_first}, bidirectional={self.bidirectional})"
        )


class RNNLoop(RecurrentLoop):
    """``nn.RNN`` (tanh or relu) as a :class:`RecurrentLoop`."""


class LSTMLoop(RecurrentLoop):
    """``nn.LSTM`` as a :class:`RecurrentLoop`: gates in torch's order (input, forget, cell, output)."""

    kind = "LSTM"

    def cell(
        self,
        gi: torch.Tensor,
        gh: torch.Tensor | None,
        h: torch.Tensor | None,
        c: torch.Tensor | None,
        q: dict[str, nn.Module],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``c' = f*c + i*g``, ``h' = o*tanh(c')`` with each gate, ``c'`` and ``h'`` quantized."""
        i, f, g, o = (gi if gh is None else gi + gh).chunk(4, dim=-1)
        i, f = q["input_gate"](torch.sigmoid(i)), q["forget_gate"](torch.sigmoid(f))
        g, o = q["cell_gate"](torch.tanh(g)), q["output_gate"](torch.sigmoid(o))
        c = q["cell"](i * g if c is None else f * c + i * g)
        return q["hidden"](o * torch.tanh(c)), c


class GRULoop(RecurrentLoop):
    """``nn.GRU`` as a :class:`RecurrentLoop`: gates in torch's order (reset, update, new)."""

    kind = "GRU"

    def cell(
        self,
        gi: torch.Tensor,
        gh: torch.Tensor | None,
        h: torch.Tensor | None,
        c: torch.Tensor | None,
        q: dict[str, nn.Module],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``n = tanh(W_in x + b_in + r*(W_hn h + b_hn))``, ``h' = (1-z)*n + z*h``, gates and ``h'`` quantized."""
        i_r, i_z, i_n = gi.chunk(3, dim=-1)
        h_r, h_z, h_n = (None, None, None) if gh is None else gh.chunk(3, dim=-1)
        r = q["reset_gate"](torch.sigmoid(i_r if h_r is None else i_r + h_r))
        z = q["update_gate"](torch.sigmoid(i_z if h_z is None else i_z + h_z))
        n = q["new_gate"](torch.tanh(i_n if h_n is None else i_n + r * h_n))
        return q["hidden"]((1 - z) * n if h is None else (1 - z) * n + z * h), None


_LOOPS: dict[type, type[RecurrentLoop]] = {nn.LSTM: LSTMLoop, nn.GRU: GRULoop, nn.RNN: RNNLoop}


def to_loop(module: nn.Module) -> nn.Module:
    """The :class:`RecurrentLoop` that stands in for a torch recurrent layer (a loop is returned as it is).

    Example:
        >>> type(to_loop(nn.GRU(3, 2))).__name__
        'GRULoop'
    """
    if isinstance(module, RecurrentLoop):
        return module
    for cls in type(module).__mro__:
        if cls in _LOOPS:
            assert isinstance(module, nn.RNNBase)
            return _LOOPS[cls](module)
    raise TypeError(f"not a recurrent layer: {type(module).__name__}")


def _weights(module: nn.Module) -> tuple[str, ...]:
    # Only a loop feeds quantized parameters to its computation: a torch RNN kept opaque (leaf_modules)
    # reads its cached flat weights, so its parameters are left alone.
    return module.weight_names if isinstance(module, RecurrentLoop) else ()


LSTM = register(OpSpec("LSTM", (nn.LSTM, LSTMLoop), weight_axis=0, replace=to_loop, weight_params=_weights))
GRU = register(OpSpec("GRU", (nn.GRU, GRULoop), weight_axis=0, replace=to_loop, weight_params=_weights))
RNN = register(OpSpec("RNN", (nn.RNN, RNNLoop), weight_axis=0, replace=to_loop, weight_params=_weights))
