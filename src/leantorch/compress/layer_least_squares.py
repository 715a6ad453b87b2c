"""Least squares for one layer: ridge-regressed weights and bias from sampled inputs and target outputs.

:func:`~leantorch.compress.refit.refit_layers` calls :func:`solve_layer` for every conv/linear layer of a
compressed model in turn. A Linear or a ``groups=1`` conv is one system over its input rows or patches
(``in·kh·kw + 1`` unknowns per output channel, the last for the bias); a depthwise conv is one small system per
channel. The ridge pulls towards the layer's current weights, scaled by the mean diagonal of its input Gram
matrix, so that directions the samples do not span keep their trained values.

Example:
    >>> layer = nn.Linear(3, 2)
    >>> x = torch.randn(100, 3)
    >>> weight, bias = solve_layer(layer, [x], [x @ torch.ones(3, 2) + 0.5], ridge=1e-9, samples_per_image=1,
    ...                            gen=torch.Generator())
    >>> torch.allclose(weight, torch.ones(2, 3), atol=1e-4), torch.allclose(bias, torch.full((2,), 0.5), atol=1e-4)
    (True, True)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

#: the layer types re-fitted
Layer = nn.Linear | nn.Conv1d | nn.Conv2d

__all__ = ["Layer", "kept_channels", "depthwise", "unknowns", "solve_layer", "layer_rows", "assign_layer"]


def kept_channels(weight: torch.Tensor, original: torch.Tensor) -> torch.Tensor | None:
    """The original output channels a pruned layer kept, found by its weight rows: ``weight``'s rows must be
    rows of ``original`` in the same order (pruning removes output channels and leaves the others untouched);
    None when they are not (or the input sizes differ).

    Example:
        >>> w = torch.randn(5, 3)
        >>> kept_channels(w[[0, 2, 3]], w).tolist(), kept_channels(w[[2, 0]], w), kept_channels(w[:, :2], w)
        ([0, 2, 3], None, None)
    """
    if weight.shape[1:] != original.shape[1:] or weight.shape[0] > original.shape[0]:
        return None
    rows, candidates = weight.detach().flatten(1), original.detach().flatten(1).to(weight.device)
    kept, start = [], 0
    for row in rows:
        equal = (candidates[start:] == row).all(1).nonzero()
        if not len(equal):
            return None
        kept.append(start + int(equal[0]))
        start = kept[-1] + 1
    return torch.tensor(kept, dtype=torch.long)


def depthwise(layer: nn.Module) -> bool:
    """A conv whose every output channel reads only its own input channel.

    Example:
        >>> depthwise(nn.Conv2d(8, 8, 3, groups=8)), depthwise(nn.Conv2d(8, 8, 3, groups=2))
        (True, False)
    """
    return isinstance(layer, nn.Conv2d | nn.Conv1d) and layer.groups == layer.in_channels == layer.out_channels


def unknowns(layer: Layer) -> int:
    """Weights per output channel plus the bias (0 for depthwise convs, solved channel by channel).

    Example:
        >>> unknowns(nn.Conv2d(4, 8, 3)), unknowns(nn.Linear(10, 2)), unknowns(nn.Conv2d(4, 4, 3, groups=4))
        (37, 11, 0)
    """
    return 0 if depthwise(layer) else layer.weight[0].numel() + 1


def solve_layer(
    layer: Layer,
    inputs: list[torch.Tensor],
    outputs: list[torch.Tensor],
    ridge: float,
    samples_per_image: int,
    gen: torch.Generator,
    kept: torch.Tensor | None = None,
    fit_bias: bool = True,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Ridge least squares ``(weight, bias)`` of ``layer`` mapping ``inputs`` to ``outputs`` (lists of per-batch
    tensors), pulled towards the current weights by ``ridge`` (relative to the inputs' mean square); None when
    the solution is not finite. ``samples_per_image`` and ``gen``: see :func:`layer_rows`; ``kept``: the channels of
    ``outputs`` that the layer produces (all when None); ``fit_bias=False`` keeps the current bias.

    Example:
        >>> conv = nn.Conv2d(2, 2, 1)
        >>> x = torch.randn(4, 2, 5, 5)
        >>> weight, bias = solve_layer(conv, [x], [3 * x], ridge=1e-9, samples_per_image=25, gen=torch.Generator())
        >>> torch.allclose(weight[:, :, 0, 0], 3 * torch.eye(2), atol=1e-4), bool(bias.abs().max() < 1e-4)
        (True, True)
    """
    per_channel = depthwise(layer)
    gram: torch.Tensor | None = None
    cross: torch.Tensor | None = None
    for x, y in zip(inputs, outputs):
        for rows, targets in layer_rows(layer, x, y, samples_per_image, gen):
            if kept is not None:  # only the output channels the layer kept (a pruned producer)
                targets = targets[kept.to(targets.device)] if per_channel else targets[:, kept.to(targets.device)]
            g, c = _moments(rows.float(), targets.float())
            gram, cross = (g, c) if gram is None or cross is None else (gram + g, cross + c)
    assert gram is not None and cross is not None
    out = layer.weight.shape[0]
    bias = layer.bias.detach() if layer.bias is not None else layer.weight.new_zeros(out)
    # current [W | b]: (unknowns, outputs), or (channels, unknowns, 1) for depthwise convs
    current = torch.cat([layer.weight.detach().reshape(out, -1), bias[:, None]], 1).double()
    current = current[:, :, None] if per_channel else current.t()
    diagonal = gram.diagonal(dim1=-2, dim2=-1)[..., :-1].mean(-1)  # the inputs' scale, not the ones column's
    damping = (ridge * diagonal + 1e-12)[..., None, None] if per_channel else ridge * float(diagonal) + 1e-12
    if not fit_bias:  # keep b: fit W to Y − b, i.e. XᵀY − (Σx)·bᵀ over the weights' unknowns only
        b = current[..., -1:, :]  # (1, outputs), or (channels, 1, 1)
        gram, cross, current = gram[..., :-1, :-1], cross[..., :-1, :] - gram[..., :-1, -1:] @ b, current[..., :-1, :]
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    solution = torch.linalg.solve(gram + damping * eye, cross + damping * current)
    if not fit_bias:
        solution = torch.cat([solution, b], -2)
    if not torch.isfinite(solution).all():
        return None
    solution = solution[..., 0] if per_channel else solution.t()  # (outputs, unknowns)
    weight = solution[:, :-1].reshape(layer.weight.shape).to(layer.weight.dtype)
    return weight, solution[:, -1].to(layer.weight.dtype)


def _moments(rows: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[X 1]ᵀ[X 1]`` and ``[X 1]ᵀY`` (batched over a leading channel axis for depthwise convs), in float64.

    Products in float32 (twice as fast as float64 on a CPU; the ridge dwarfs their rounding), summed in float64
    over the chunks by the caller; the ones column's blocks are sums, so no copy of ``rows`` is made."""
    count = torch.full((*rows.shape[:-2], 1, 1), float(rows.shape[-2]), dtype=torch.float64, device=rows.device)
    sums = rows.sum(-2, keepdim=True).double()  # (…, 1, k)
    gram = torch.cat(
        [
            torch.cat([(rows.transpose(-1, -2) @ rows).double(), sums.transpose(-1, -2)], -1),
            torch.cat([sums, count], -1),
        ],
        -2,
    )
    cross = torch.cat([(rows.transpose(-1, -2) @ targets).double(), targets.sum(-2, keepdim=True).double()], -2)
    return gram, cross


def layer_rows(
    layer: Layer, x: torch.Tensor, y: torch.Tensor, samples_per_image: int, gen: torch.Generator
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """(input rows, target rows) of one batch (``x`` the layer's input, ``y`` its target output): ``[R, unknowns−1]``
    and ``[R, outputs]``, or per channel ``[C, R, kh·kw]`` and ``[C, R, 1]`` for a depthwise conv; in chunks of
    images that keep the unfolded patches small. A conv keeps ``samples_per_image`` random output positions per
    image (drawn from ``gen``, the same for the images of a chunk; all of them when there are fewer).

    Example:
        >>> conv = nn.Conv2d(3, 4, 3, padding=1)
        >>> x = torch.randn(2, 3, 8, 8)
        >>> [(tuple(r.shape), tuple(t.shape)) for r, t in layer_rows(conv, x, conv(x), 10, torch.Generator())]
        [((20, 27), (20, 4))]
    """
    if isinstance(layer, nn.Linear):
        yield x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        return
    conv1d = isinstance(layer, nn.Conv1d)
    if conv1d:  # a Conv1d is a Conv2d of height 1
        x, y = x[:, :, None], y[:, :, None]
    kernel, stride, padding, dilation = (
        ((pad, *v) if conv1d else v)
        for v, pad in ((layer.kernel_size, 1), (layer.stride, 1), (layer.padding, 0), (layer.dilation, 1))
    )
    channels, k = x.shape[1], kernel[0] * kernel[1]
    positions = y.shape[2] * y.shape[3]
    if k == 1 and tuple(stride) == (1, 1) and tuple(padding) == (0, 0) and not depthwise(layer):
        yield from _pointwise_rows(x, y, samples_per_image, gen)  # a 1×1 conv's patches are its input pixels
        return
    sampled = min(positions, samples_per_image)
    chunk = max(1, int(2**24 // max(channels * k * sampled, 1)))  # ≤ 64 MB of float32 patches at a time
    for first in range(0, x.shape[0], chunk):
        targets = y[first : first + chunk].flatten(2)  # (B, out, L)
        if positions > samples_per_image:
            keep = torch.randperm(positions, generator=gen)[:samples_per_image].to(x.device)
            patches = _patches_at(x[first : first + chunk], kernel, stride, padding, dilation, y.shape[3], keep)
            targets = targets[..., keep]
        else:
            patches = F.unfold(x[first : first + chunk], kernel, dilation, padding, stride)  # (B, C·k, L)
        b, _, length = patches.shape
        if depthwise(layer):
            per_channel = patches.reshape(b, channels, k, length).permute(1, 0, 3, 2).reshape(channels, -1, k)
            yield per_channel, targets.permute(1, 0, 2).reshape(targets.shape[1], -1, 1)
        else:
            yield patches.transpose(1, 2).reshape(-1, channels * k), targets.transpose(1, 2).reshape(b * length, -1)


def _patches_at(
    x: torch.Tensor,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    out_width: int,
    keep: torch.Tensor,
) -> torch.Tensor:
    """``F.unfold``'s patches ``(B, C·kh·kw, S)`` at the flat output positions ``keep`` only, gathered offset by
    offset from the padded input (unfolding every position first costs ``L / S`` times more)."""
    padded = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    rows, cols = (keep // out_width) * stride[0], (keep % out_width) * stride[1]
    taps = [
        padded[:, :, rows + i * dilation[0], cols + j * dilation[1]] for i in range(kernel[0]) for j in range(kernel[1])
    ]
    return torch.stack(taps, 2).reshape(x.shape[0], -1, len(keep))


def _pointwise_rows(
    x: torch.Tensor, y: torch.Tensor, samples_per_image: int, gen: torch.Generator
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`layer_rows` of a 1×1 conv with stride 1 and no padding, without unfolding."""
    inputs, targets = x.flatten(2), y.flatten(2)  # (B, C, L)
    if inputs.shape[2] > samples_per_image:
        keep = torch.randperm(inputs.shape[2], generator=gen)[:samples_per_image].to(x.device)
        inputs, targets = inputs[..., keep], targets[..., keep]
    yield inputs.transpose(1, 2).reshape(-1, inputs.shape[1]), targets.transpose(1, 2).reshape(-1, targets.shape[1])


def assign_layer(layer: Layer, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """New weight and bias (a bias parameter is added where the layer had none: BN-followed convs often don't).

    Example:
        >>> conv = nn.Conv2d(2, 2, 1, bias=False)
        >>> with torch.no_grad():
        ...     assign_layer(conv, torch.zeros(2, 2, 1, 1), torch.ones(2))
        >>> conv.bias.tolist()
        [1.0, 1.0]
    """
    layer.weight.copy_(weight)
    if layer.bias is None:
        layer.bias = nn.Parameter(bias.clone(), requires_grad=layer.weight.requires_grad)
    else:
        layer.bias.copy_(bias)
