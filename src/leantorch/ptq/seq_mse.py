"""Sequential MSE (AIMET's SeqMSE): per layer, in graph order, pick the weight encoding whose quantized weight
minimises the layer's output error on calibration data, with the layers before it already quantized.

Candidates, as AIMET defines them: the weight's range per output channel (per tensor for per-tensor
quantizers), shrunk towards zero by ``α = i / n`` for ``i = 1 … n`` (``n = num_candidates``); each gives a grid
and the weight rounded to nearest on it. The error of a candidate ``W̃`` is the layer's mean squared output
error over the calibration positions, computed exactly from second moments of the layer's input patches
(:class:`~leantorch.ptq.input_moments.QuadraticObjective`: ``G = E[x̂ x̂ᵀ]``, ``C = E[x x̂ᵀ]``)::

    err(W̃) − err(W) = e G eᵀ − 2 e (W G − W C)ᵀ      with e = W − W̃, per output channel

so every candidate costs one product with ``G`` instead of a pass over the data. Per-channel quantizers pick
the best candidate for each output channel (channels do not interact), per-tensor ones the best sum.

Inputs (AIMET's ``inp_symmetry``): ``"asym"`` (default) compares the float layer's output ``W x`` with ``W̃ x̂``
on the quantized model's inputs ``x̂``; ``"symqt"`` (AIMET's default) compares ``W x̂`` with ``W̃ x̂``;
``"symfp"`` uses float inputs on both sides. On EfficientNet-Lite0 at W4A8 per channel, ``asym`` keeps 0.53
top-1 agreement with FP32 and ``symqt`` 0.37 (``benchmarks/ptq_efficientnet.py``-style crops): a layer that
sees the quantized model's inputs can also make up for the error of the layers before it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import torch
from torch import fx, nn

from ..options import check_choice, check_count, with_overrides
from ..quant.blocks import blockwise_encoding, to_block_rows
from ..quant.encoding import Encoding, compute_encoding
from .input_moments import QuadraticObjective, grouped_weight, require_moments
from .layer_rounding import LayerRoundingConfig, RoundedLayer, round_layers, round_to_grid, weight_grid

__all__ = [
    "SeqMseConfig",
    "seq_mse",
    "seq_mse_search",
    "candidate_errors",
    "shrunk_encodings",
    "best_encoding",
    "INPUT_MODES",
]

#: AIMET's ``inp_symmetry`` choices (see the module docstring).
INPUT_MODES = ("asym", "symqt", "symfp")


@dataclass(frozen=True)
class SeqMseConfig(LayerRoundingConfig):
    """SeqMSE's options (checked on construction); :func:`seq_mse` takes one, or the same names as keywords.

    Attributes:
        num_candidates: ranges tried per layer (``α = 1/n … 1`` of the weight's range; AIMET's default 20).
        inputs: ``"asym"``, ``"symqt"`` or ``"symfp"`` (module docstring).
        param_scheme: the scheme of the starting grids (only their bitwidth, symmetry and axis matter here).
        Others: :class:`~leantorch.ptq.layer_rounding.LayerRoundingConfig`.

    Example:
        >>> SeqMseConfig(inputs="symqt").num_candidates
        20
    """

    param_scheme: str = "minmax"
    filename_prefix: str = "seq_mse"
    num_candidates: int = 20
    inputs: str = "asym"

    def __post_init__(self) -> None:
        check_count("num_candidates", self.num_candidates, hint=" (ranges tried per layer, e.g. 20)")
        super().__post_init__()
        check_choice("inputs", self.inputs, INPUT_MODES)


def seq_mse(
    model: nn.Module,
    example_input: Any,
    calibration: Iterable[Any],
    options: SeqMseConfig | None = None,
    **overrides: Any,
) -> tuple[fx.GraphModule, Path]:
    """Choose every Conv/Linear weight encoding by Sequential MSE; return the model and a frozen-encodings file.

    Same contract as :func:`~leantorch.ptq.adaround.adaround`: the returned model's weights lie on their chosen
    grids (rounded to nearest); load the file into the QuantSim you evaluate with
    (``sim.set_and_freeze_param_encodings(path)``). Layers are visited once, in graph order, with the layers
    before them already quantized; activations are advanced layer by layer (linear cost in depth). Runs on
    the model's device; the input model is not modified.

    Args:
        options: a :class:`SeqMseConfig` (default: its defaults).
        overrides: any of its fields as keywords (``param_bw=4, num_candidates=20, ...``), applied on top.

    Raises:
        InvalidOptionError: an unknown option; ``num_candidates``/``num_batches`` not a whole number ≥ 1, an unknown
            ``inputs``; a layer whose input cannot be unfolded into patches (a conv with ``padding="same"`` or
            non-zero padding modes), named.
        OutputPathError, CalibrationDataError: as adaround, before any work.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
        >>> data = [torch.randn(8, 3, 10, 10)]
        >>> chosen, enc = seq_mse(net, data[0][:1], data, progress=False, path="/tmp")
        >>> enc.name
        'seq_mse.encodings'
    """
    cfg = with_overrides(SeqMseConfig, options, overrides, "seq_mse")
    inputs = cfg.inputs

    def choose(
        name: str,
        fp_layer: nn.Module,
        encoding: Encoding,
        float_inputs: Sequence[torch.Tensor],
        quantized: Sequence[torch.Tensor] | None,
    ) -> RoundedLayer:
        require_moments(fp_layer, name, "seq_mse", "SeqMSE")
        weight = cast(torch.Tensor, fp_layer.weight).detach()
        if inputs == "asym":
            objective = QuadraticObjective(fp_layer, weight, float_inputs, quantized)
        else:  # both sides on the same inputs: quantized ones (symqt), or float ones (symfp)
            objective = QuadraticObjective(fp_layer, weight, quantized if quantized is not None else float_inputs)
        rows = grouped_weight(fp_layer, weight)
        best = seq_mse_search(rows, objective.gram, objective.target, encoding, cfg.num_candidates, weight.shape)
        nearest = _nearest(rows.double(), best, rows.shape, weight.shape)
        return RoundedLayer(nearest.reshape(weight.shape).to(weight.dtype), encoding=best)

    return round_layers(model, example_input, calibration, choose, cfg, inputs != "symfp", "seq_mse")


def seq_mse_search(
    weight: torch.Tensor,
    gram: torch.Tensor,
    target: torch.Tensor,
    encoding: Encoding,
    num_candidates: int = 20,
    weight_shape: Sequence[int] | None = None,
) -> Encoding:
    """The encoding, among ``num_candidates`` shrunk ranges, with the least output error (module docstring).

    ``weight``: ``[groups, out/groups, K]``; ``gram``: ``[groups, K, K]`` (``E[x̂ x̂ᵀ]``); ``target``: like ``weight``
    (``W E[x x̂ᵀ]``; ``W G`` when both sides see the same inputs). ``encoding`` gives the bitwidth, symmetry
    and axis (per tensor, or per output channel along axis 0, or blockwise: then give the layer's ``weight_shape``;
    every block's range shrinks by the factor its output channel picks). Returns an encoding of the same kind.

    Example:
        >>> from leantorch.quant.encoding import compute_encoding
        >>> _ = torch.manual_seed(0)
        >>> w = torch.randn(1, 4, 16); w[0, :, 0] = 8.0           # an outlier column the data never uses
        >>> x = torch.randn(16, 512); x[0] = 0.0
        >>> gram = (x @ x.T / 512)[None]
        >>> full = compute_encoding(w.amin((0, 2)), w.amax((0, 2)), 4, symmetric=True, axis=0)
        >>> chosen = seq_mse_search(w, gram, w @ gram, full)
        >>> bool((chosen.scale < full.scale).all())               # the grid no longer spends steps on it
        True
    """
    errors, encodings = candidate_errors(weight, gram, target, encoding, num_candidates, weight_shape)
    return best_encoding(encoding, encodings, errors)


def best_encoding(encoding: Encoding, encodings: Sequence[Encoding], errors: torch.Tensor) -> Encoding:
    """The candidate ``encodings``' grids with the least ``errors`` (``[candidates, groups, out/groups]``): per
    output channel (channels do not interact), or the least sum for a per-tensor ``encoding``; the first of
    equal candidates.

    Example:
        >>> from leantorch.quant.encoding import compute_encoding
        >>> wide = compute_encoding(-torch.ones(2), torch.ones(2), 4, symmetric=True, axis=0)
        >>> narrow = compute_encoding(-torch.ones(2) / 2, torch.ones(2) / 2, 4, symmetric=True, axis=0)
        >>> errors = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])   # channel 0 prefers narrow, 1 wide
        >>> (best_encoding(wide, [wide, narrow], errors).scale / wide.scale).tolist()
        [0.5, 1.0]
    """
    if encoding.axis is None:
        return encodings[int(errors.sum(dim=(1, 2)).argmin())]
    best_per_channel = errors.flatten(1).argmin(0)[None]  # [1, out]: each output channel's best candidate
    scale = torch.stack([e.scale for e in encodings])  # [n, out] or, blockwise, [n, out, n_blocks]
    offset = torch.stack([e.offset for e in encodings])
    index = best_per_channel.to(scale.device).reshape(1, -1, *[1] * (scale.dim() - 2)).expand(1, *scale.shape[1:])
    return replace(encoding, scale=scale.gather(0, index)[0], offset=offset.gather(0, index)[0])


def candidate_errors(
    weight: torch.Tensor,
    gram: torch.Tensor,
    target: torch.Tensor,
    encoding: Encoding,
    num_candidates: int,
    weight_shape: Sequence[int] | None = None,
) -> tuple[torch.Tensor, list[Encoding]]:
    """Output error (minus the float weight's own) of each candidate, ``[num_candidates, groups, out/groups]``
    in float64, and the candidates' encodings (ranges ``α·[min, max]`` of the weight, ``α = i/n``)."""
    w = weight.detach().double()
    g = gram.detach().to(device=w.device, dtype=torch.float64)
    # W G − W C per row: zero when both sides see the same inputs.
    drift = torch.bmm(w, g) - target.detach().to(device=w.device, dtype=torch.float64)
    alphas = [i / num_candidates for i in range(1, num_candidates + 1)]
    encodings, errors = shrunk_encodings(w, encoding, alphas, weight_shape), []
    for candidate in encodings:
        e = w - _nearest(w, candidate, weight.shape, weight_shape)
        errors.append((torch.bmm(e, g) * e).sum(-1) - 2 * (e * drift).sum(-1))
    return torch.stack(errors), encodings


def shrunk_encodings(
    weight: torch.Tensor, encoding: Encoding, alphas: Sequence[float], weight_shape: Sequence[int] | None = None
) -> list[Encoding]:
    """Encodings like ``encoding`` (bitwidth, symmetry, axis, blocks, LPBQ) of the ranges ``α·[min, max]`` of
    ``weight`` (``[groups, out/groups, K]``), one per ``α``: per tensor, per output channel or per block (then
    give the layer's ``weight_shape``).

    Example:
        >>> from leantorch.quant.encoding import compute_encoding
        >>> w = torch.tensor([[[-1.0, 2.0], [-4.0, 1.0]]])
        >>> like = compute_encoding(torch.zeros(2), torch.ones(2), 3, symmetric=True, axis=0)
        >>> [e.max.float().tolist() for e in shrunk_encodings(w, like, [1.0, 0.5])]  # 3 steps above zero
        [[2.0, 4.0], [1.0, 2.0]]
    """
    w = weight.detach().double()
    if encoding.axis is None:
        lo, hi = w.min(), w.max()
    elif encoding.is_blockwise:  # one range per block (row of the block view)
        assert weight_shape is not None and encoding.block_axis is not None and encoding.block_size is not None
        blocks = to_block_rows(w.reshape(weight_shape), 0, encoding.block_axis, encoding.block_size)
        lo, hi = blocks.amin(dim=1), blocks.amax(dim=1)
    else:
        lo, hi = w.amin(dim=2).reshape(-1), w.amax(dim=2).reshape(-1)
    unsigned = encoding.symmetric and not encoding.is_signed
    encodings = []
    for alpha in alphas:
        candidate = compute_encoding(
            lo * alpha,
            hi * alpha,
            encoding.bitwidth,
            encoding.symmetric,
            unsigned_symmetric=unsigned,
            axis=encoding.axis,
        )
        if encoding.is_blockwise:
            assert weight_shape is not None and encoding.block_axis is not None and encoding.block_size is not None
            channels = weight_shape[0]
            candidate = blockwise_encoding(
                candidate, channels, encoding.block_size, encoding.block_axis, encoding.decompressed_bw
            )
        encodings.append(candidate)
    return encodings


def _nearest(
    w: torch.Tensor, encoding: Encoding, shape: torch.Size, weight_shape: Sequence[int] | None = None
) -> torch.Tensor:
    """``w`` (float64, ``[groups, out/groups, K]``) rounded to nearest on ``encoding``'s grid."""
    scale, offset = weight_grid(encoding, shape[0], shape[1], w.device, weight_shape)
    if scale.dim() == 2:  # per channel or per tensor: one grid for the whole row
        scale, offset = scale[..., None], offset[..., None]
    return round_to_grid(w, scale, offset, encoding.num_steps)
