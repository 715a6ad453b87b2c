"""Capturing what flows into and out of layers: channel means, cached inputs/outputs, early stop.

:func:`layer_io` runs a model only up to the layer of interest (raising :class:`StopForward` from a hook):
one pass per layer of interest. Layer-by-layer algorithms over a whole model (bias correction, AdaRound)
advance a :class:`~.frontier.Frontier` instead, which costs about one pass in all; :func:`layer_io` stays for
a single layer's inputs and outputs, and as the reference those sweeps are tested against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..graph import as_tuple

__all__ = ["Batch", "run_on", "StopForward", "channel_mean", "channel_means", "layer_io"]

#: One batch of model inputs: a tensor, or a tuple of tensors for a model with several inputs.
Batch = torch.Tensor | Sequence[torch.Tensor]


def run_on(model: nn.Module, batch: Batch, device: torch.device) -> None:
    """``model(*inputs)`` with the batch's inputs moved to ``device``."""
    model(*(x.to(device) for x in as_tuple(batch)))


class StopForward(Exception):
    """Raised by a hook to end a forward pass once the layer of interest has run."""


def channel_mean(y: torch.Tensor, layer: nn.Module) -> tuple[torch.Tensor, int]:
    """Float64 mean of ``layer``'s output per output channel, and the number of values per channel.

    The channels are where the bias is added: the last dim of a Linear output (``[B, C]``, ``[B, T, C]`` …),
    dim 1 of a convolution's (``[B, C, H, W]``)."""
    y = y.detach().double()
    if isinstance(layer, nn.Linear) or y.dim() < 3:
        flat = y.reshape(-1, y.shape[-1])
        return flat.mean(0), flat.shape[0]
    dims = [d for d in range(y.dim()) if d != 1]
    return y.mean(dim=dims), y.numel() // y.shape[1]


def channel_means(model: nn.Module, layers: list[str], data: list[Batch]) -> dict[str, torch.Tensor]:
    """Per-channel output means of the named layers of ``model`` over ``data`` (one pass per batch)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {name: 0 for name in layers}
    handles = []
    for name in layers:
        layer = model.get_submodule(name)

        def hook(_m, _i, out, name=name, layer=layer):  # type: ignore[no-untyped-def]
            mean, n = channel_mean(out, layer)
            sums[name] = sums[name] + mean * n if name in sums else mean * n
            counts[name] += n

        handles.append(layer.register_forward_hook(hook))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            for x in data:
                run_on(model, x, device)
    finally:
        for h in handles:
            h.remove()
    return {name: sums[name] / counts[name] for name in layers if counts[name]}


def layer_io(
    model: nn.Module, layer: nn.Module, data: list[Batch], capture_output: bool = True
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Inputs (first positional argument) and outputs of ``layer`` for each batch; stops each pass there."""
    inputs: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []

    def hook(_m: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        inputs.append(args[0].detach())
        if capture_output:
            outputs.append(output.detach())
        raise StopForward

    handle = layer.register_forward_hook(hook)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            for x in data:
                try:
                    run_on(model, x, device)
                except StopForward:
                    pass
    finally:
        handle.remove()
    return inputs, outputs
