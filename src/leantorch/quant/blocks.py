"""Blockwise weight grids: one scale per block of ``block_size`` input channels of each output channel; LPBQ.

A weight with output-channel axis ``axis`` and input-channel axis ``block_axis`` (Linear/Conv: 0 and 1)
gets ``scale[c, b]`` for ``W[c, b·bs:(b+1)·bs, ...]`` (a conv's block spans its kernel positions too).
Blockwise quantization *is* per-channel quantization of a reshaped view: the rows of
:func:`to_block_rows` are the blocks (``C · n_blocks`` rows), so the per-channel machinery (range
estimators, the fake-quant kernels, LSQ gradients) serves blocks unchanged.

**LPBQ** (AIMET's low-power blockwise quantization): the block scales are themselves quantized,
``scale[c, b] = per_block_int_scale[c, b] · per_channel_float_scale[c]`` with integers in
``[1, 2**(decompressed_bw - bw)]``: a runtime dequantizes the ``bw``-bit weights to ``decompressed_bw``-bit
integers with the small integer scale and keeps one float scale per channel. The float scale is the
channel's largest block scale over ``2**(decompressed_bw - bw)``; each integer is the block scale over it,
rounded (:func:`lpbq_compress`).

Example:
    >>> w = torch.arange(16.0).reshape(2, 8)
    >>> rows = to_block_rows(w, axis=0, block_axis=1, block_size=4)
    >>> rows.shape, torch.equal(from_block_rows(rows, w.shape, 0, 1, 4), w)
    (torch.Size([4, 4]), True)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import InvalidOptionError
from .encoding import Encoding

__all__ = [
    "block_axis_for",
    "blocks_fit",
    "to_block_rows",
    "from_block_rows",
    "lpbq_compress",
    "lpbq_scale",
    "check_block_size",
    "blockwise_encoding",
    "expand_blocks",
]


def check_block_size(block_size: object, what: str = "param_block_size") -> int | None:
    """``block_size`` if None or a positive int, else :class:`InvalidOptionError`.

    Example:
        >>> check_block_size(32), check_block_size(None)
        (32, None)
    """
    if block_size is None:
        return None
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise InvalidOptionError(
            f"{what}={block_size!r}: give a positive number of input channels per block (e.g. 32 or 64), "
            "or None for per-channel weights"
        )
    return block_size


def block_axis_for(weight_axis: int) -> int:
    """The input-channel axis of a weight whose output channels are on ``weight_axis`` (0 ↔ 1).

    Example:
        >>> block_axis_for(0), block_axis_for(1)  # Linear/Conv; ConvTranspose or GPT-2's Conv1D
        (1, 0)
    """
    return 0 if weight_axis == 1 else 1


def blocks_fit(shape: Sequence[int], block_axis: int, block_size: int) -> bool:
    """Whether the input channels split into whole blocks (at least one).

    Example:
        >>> blocks_fit((8, 64), 1, 32), blocks_fit((8, 3, 3, 3), 1, 32)
        (True, False)
    """
    channels = shape[block_axis]
    return channels >= block_size and channels % block_size == 0


def _order(ndim: int, axis: int, block_axis: int) -> list[int]:
    axis, block_axis = axis % ndim, block_axis % ndim
    return [axis, block_axis] + [d for d in range(ndim) if d not in (axis, block_axis)]


def to_block_rows(x: torch.Tensor, axis: int, block_axis: int, block_size: int) -> torch.Tensor:
    """``x`` as a 2-D tensor with one row per (output channel, block), channel-major.

    Example:
        >>> to_block_rows(torch.zeros(4, 8, 3, 3), 0, 1, 4).shape
        torch.Size([8, 36])
    """
    moved = x.permute(_order(x.dim(), axis, block_axis))
    channels, inputs = moved.shape[0], moved.shape[1]
    return moved.reshape(channels * (inputs // block_size), -1)


def from_block_rows(
    rows: torch.Tensor, shape: Sequence[int], axis: int, block_axis: int, block_size: int
) -> torch.Tensor:
    """Inverse of :func:`to_block_rows` for a tensor of ``shape``.

    Example:
        >>> w = torch.randn(3, 4, 2)
        >>> torch.equal(from_block_rows(to_block_rows(w, 0, 1, 2), w.shape, 0, 1, 2), w)
        True
    """
    order = _order(len(shape), axis, block_axis)
    moved = rows.reshape([shape[d] for d in order])
    return moved.permute([order.index(d) for d in range(len(shape))])


def lpbq_compress(block_scale: torch.Tensor, bitwidth: int, decompressed_bw: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(per_channel_float_scale (C,), per_block_int_scale (C, n_blocks) int64)`` of block scales (C, n_blocks).

    Example:
        >>> f, i = lpbq_compress(torch.tensor([[0.5, 1.6, 0.05]]), bitwidth=4, decompressed_bw=8)
        >>> f.tolist(), i.tolist()
        ([0.10000000149011612], [[5, 16, 1]])
    """
    levels = 2 ** (decompressed_bw - bitwidth)
    float_scale = (block_scale.double().amax(dim=1) / levels).to(torch.float32)
    ints = torch.round(block_scale.double() / float_scale.double()[:, None]).clamp(1, levels).to(torch.int64)
    return float_scale, ints


def lpbq_scale(float_scale: torch.Tensor, int_scale: torch.Tensor) -> torch.Tensor:
    """The block scales (float32) an LPBQ encoding stands for: ``int_scale · float_scale`` per channel.

    Example:
        >>> lpbq_scale(torch.tensor([0.1]), torch.tensor([[5, 16]])).tolist()
        [[0.5, 1.600000023841858]]
    """
    return int_scale.to(torch.float32) * float_scale.to(torch.float32)[:, None]


def blockwise_encoding(
    rows: Encoding, channels: int, block_size: int, block_axis: int, decompressed_bw: int | None = None
) -> Encoding:
    """The blockwise encoding of a weight from the per-row encoding of its block view (one scale per row of
    :func:`to_block_rows`): scales shaped ``(channels, n_blocks)``, snapped to LPBQ's grid when
    ``decompressed_bw`` is given (symmetric grids only).

    Example:
        >>> from leantorch.quant.encoding import compute_encoding
        >>> rows = compute_encoding(-torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 2.0, 3.0, 4.0]), 4, True)
        >>> enc = blockwise_encoding(rows, channels=2, block_size=8, block_axis=1, decompressed_bw=8)
        >>> enc.scale.shape, enc.block_size
        (torch.Size([2, 2]), 8)
    """
    scale, offset = rows.scale.reshape(channels, -1), rows.offset.reshape(channels, -1)
    if decompressed_bw is not None:
        scale = lpbq_scale(*lpbq_compress(scale, rows.bitwidth, decompressed_bw))
    return Encoding(rows.bitwidth, rows.symmetric, scale, offset, rows.axis, block_size, block_axis, decompressed_bw)


def expand_blocks(
    values: torch.Tensor, shape: Sequence[int], axis: int, block_axis: int, block_size: int
) -> torch.Tensor:
    """Per-block ``values`` ``(C, n_blocks)`` at every element of a weight of ``shape`` (a view, not a copy).

    Example:
        >>> expand_blocks(torch.tensor([[1.0, 2.0]]), (1, 4), axis=0, block_axis=1, block_size=2).tolist()
        [[1.0, 1.0, 2.0, 2.0]]
    """
    ndim = len(shape)
    axis, block_axis = axis % ndim, block_axis % ndim
    per_input = values.repeat_interleave(block_size, dim=1)  # (C, K)
    if axis > block_axis:
        per_input = per_input.T
    view = [1] * ndim
    view[axis], view[block_axis] = shape[axis], shape[block_axis]
    return per_input.reshape(view).expand(*shape)
