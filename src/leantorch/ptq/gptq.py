"""GPTQ: round each layer's weights column by column, feeding every rounding error forward through the inverse
input Hessian (Frantar et al., 2023, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers").

Per layer (and per group of a grouped conv), with ``W`` the weight as ``[out, K]`` (K ordered like the layer's
input patches) and ``H = E[x̂ x̂ᵀ] + λ·mean(diag H)·I`` from the inputs the partially quantized model gives it::

    U = chol(H⁻¹)ᵀ (upper)
    for k in 0 … K-1:
        q_k = Q(w_k)                      # the weight quantizer's grid (per output channel or per tensor)
        e_k = (w_k − q_k) / U_kk
        w_j −= e_k · U_kj   for j > k     # the error is compensated by the columns not yet rounded

which greedily minimises ``E‖W x̂ − Ŵ x̂‖²``, one column at a time. Columns go in blocks of ``block_size``
(the updates of later blocks are one matrix product per block), in float64. Input channels that never carry
signal (``H_kk = 0``) are rounded as they are. Layers are visited in graph order with the layers before them
already rounded (:func:`~leantorch.ptq.layer_rounding.round_layers`, as AdaRound).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import fx, nn

from ..errors import InvalidOptionError
from ..options import check_count, check_flag, check_positive, check_ratios, with_overrides
from ..quant.encoding import Encoding
from .input_moments import CenteredMoments, QuadraticObjective, grouped_weight, require_moments
from .layer_rounding import LayerRoundingConfig, RoundedLayer, round_layers, round_to_grid, weight_grid
from .seq_mse import best_encoding, shrunk_encodings

__all__ = ["GptqConfig", "gptq", "gptq_round", "gptq_grid_search", "damped_hessian"]


@dataclass(frozen=True)
class GptqConfig(LayerRoundingConfig):
    """GPTQ's options (checked on construction); :func:`gptq` takes one, or the same names as keywords.

    Attributes:
        damping: λ, added to the Hessian's diagonal as a fraction of its mean: 10% (the paper's is 1%; on
            all-MiniLM-L6-v2 at W4 block-32, 10% gives +0.005 mean sentence-embedding cosine, and EfficientNet-
            Lite0's agreement does not change beyond noise; ``benchmarks/weights_rounding.py --attempts``).
        block_size: columns rounded before the later columns are updated (the paper's lazy batch updates).
        use_quantized_inputs: the Hessian of the partially quantized model's layer inputs (default), or of
            the float model's.
        param_scheme: ``minmax`` by default (the paper's per-row grids), not the MSE ranges AdaRound starts
            from: GPTQ feeds each column's rounding error into the later columns, and a clipped range turns an
            outlier weight's clipping error into a cascade (all-MiniLM-L6-v2's FFN output projections, W4
            per channel: relative weight error above 1, sentence-embedding cosine 0.26 with ``mse``).
        act_order: round the columns in decreasing order of their input energy (the Hessian's diagonal), the
            paper's "act-order", each on its own fixed grid ("static groups", so blockwise grids stay valid); on by
            default (MiniLM W4 block-32: +0.0015 mean cosine, and the 0.98 goal at W4A8 is reached with it).
        asymmetric: fit each layer to the *float* model's outputs ``W p`` from the inputs ``p̂`` the partially
            quantized model gives it (``E‖W p − Ŵ p̂‖²``, GPTAQ; Li et al., 2025), instead of to its own float
            weights' outputs on those inputs (``E‖W p̂ − Ŵ p̂‖²``, the paper's): each layer then also undoes what
            the quantization upstream (weights and activations) did to its input, where that is linear. Needs
            ``use_quantized_inputs``. EfficientNet-Lite0, top-1 agreement with FP32: W4A8 per channel 0.52 → 0.82,
            W8A8 per-tensor after CLE 0.87 (``benchmarks/ptq_efficientnet.py --only-gptq``); on all-MiniLM-L6-v2
            it loses to plain GPTQ (W4A8 per channel 0.957 → 0.900), hence off by default.
        clip_ratios: grids to choose from per output channel: for each ratio ``α`` the weight's range (per channel
            or per block) shrunk to ``α·[min, max]``, GPTQ-rounded on it; each output channel keeps the grid whose
            rounded row has the least error ``(w − ŵ) H (w − ŵ)ᵀ`` (GPTQ's own objective, damped ``H``: rows do
            not interact, so the choice per row is exact and every candidate rounds in one batched pass). Empty
            (default): the ``param_scheme`` grid only. Include ``1.0`` to keep the full range among them.
            all-MiniLM-L6-v2 W4A8 mean sentence cosine with ratios 1 … 0.6 in steps of 0.05: per channel 0.956 →
            0.975, block-32 0.980 → 0.983, at about twice the time (``benchmarks/weights_rounding.py --attempts``);
            EfficientNet-Lite0 from ``param_scheme="mse"`` grids: no change (20.75 dB against 20.68 dB).
        correct_bias: re-fit each layer's bias with its weights (the objective on centred inputs, and the bias
            takes the mean output error ``W E[p] − Ŵ E[p̂]``); layers without a bias keep none. It lost 0.01–0.02
            agreement on EfficientNet-Lite0 beside ``asymmetric`` alone.
        Others: :class:`~leantorch.ptq.layer_rounding.LayerRoundingConfig`.

    Example:
        >>> GptqConfig(damping=0.01).block_size
        128
    """

    filename_prefix: str = "gptq"
    param_scheme: str = "minmax"
    damping: float = 0.1
    block_size: int = 128
    use_quantized_inputs: bool = True
    act_order: bool = True
    asymmetric: bool = False
    correct_bias: bool = False
    clip_ratios: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        check_positive(
            "damping", self.damping, allow_zero=True, hint=" (a fraction of the Hessian's mean diagonal, e.g. 0.01)"
        )
        check_count("block_size", self.block_size, hint=" (columns per lazy update, e.g. 128)")
        super().__post_init__()
        check_flag("use_quantized_inputs", self.use_quantized_inputs)
        check_flag("act_order", self.act_order)
        check_flag("asymmetric", self.asymmetric)
        check_flag("correct_bias", self.correct_bias)
        object.__setattr__(self, "clip_ratios", check_ratios("clip_ratios", self.clip_ratios))  # a list → tuple
        if self.asymmetric and not self.use_quantized_inputs:
            raise InvalidOptionError(
                "gptq: asymmetric=True fits each layer to the float model's outputs from the quantized model's "
                "inputs, so it needs use_quantized_inputs=True (with float inputs it is plain GPTQ)"
            )


def gptq(
    model: nn.Module,
    example_input: Any,
    calibration: Iterable[Any],
    options: GptqConfig | None = None,
    **overrides: Any,
) -> tuple[fx.GraphModule, Path]:
    """Round every Conv/Linear weight with GPTQ; return the model and a frozen-encodings file.

    Same contract as :func:`~leantorch.ptq.adaround.adaround`: the returned model's weights lie on their
    quantization grids (chosen by ``param_scheme`` from the float weights); load the file into the QuantSim you
    evaluate with (``sim.set_and_freeze_param_encodings(path)``). One pass over the model, no iterations: each
    layer costs one Cholesky factorisation of its ``K × K`` input Hessian and ``O(out · K²)`` updates. Runs on the
    model's device; the input model is not modified.

    Args:
        options: a :class:`GptqConfig` (default: its defaults).
        overrides: any of its fields as keywords (``param_bw=4, damping=0.01, ...``), applied on top.

    Raises:
        InvalidOptionError: an unknown option; ``damping`` not finite and ≥ 0, ``block_size``/``num_batches`` not a
            whole number ≥ 1, a flag that is not a bool; also a layer whose input cannot be unfolded into patches
            (a conv with ``padding="same"`` or non-zero padding modes), named.
        OutputPathError, CalibrationDataError: as adaround, before any work.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
        >>> data = [torch.randn(8, 3, 10, 10)]
        >>> rounded, enc = gptq(net, data[0][:1], data, progress=False, path="/tmp")
        >>> enc.name
        'gptq.encodings'
    """
    cfg = with_overrides(GptqConfig, options, overrides, "gptq")

    def round_layer(
        name: str,
        fp_layer: nn.Module,
        encoding: Encoding,
        inputs: Sequence[torch.Tensor],
        quantized: Sequence[torch.Tensor] | None,
    ) -> RoundedLayer:
        require_moments(fp_layer, name, "gptq", "GPTQ")
        weight = cast(torch.Tensor, fp_layer.weight).detach()
        if cfg.asymmetric or cfg.correct_bias:
            seen = quantized if quantized is not None else inputs
            return _round_towards_float(fp_layer, weight, encoding, inputs, seen, cfg)
        hessian = QuadraticObjective(fp_layer, weight, quantized if quantized is not None else inputs).gram
        rows = grouped_weight(fp_layer, weight)
        rounded, chosen = _round_rows(rows, hessian, encoding, cfg, weight.shape)
        return RoundedLayer(rounded.reshape(weight.shape), encoding=chosen)

    return round_layers(model, example_input, calibration, round_layer, cfg, cfg.use_quantized_inputs, "gptq")


def gptq_round(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    encoding: Encoding,
    damping: float = 0.01,
    block_size: int = 128,
    weight_shape: Sequence[int] | None = None,
    act_order: bool = False,
) -> torch.Tensor:
    """GPTQ-rounded ``weight`` (``[groups, out/groups, K]``) for input Hessians ``hessian`` (``[groups, K, K]``),
        on ``encoding``'s grid (per tensor, per output channel along axis 0, or blockwise: then give the layer's
    ``weight_shape``, as each column has its block's scales). Returns ``weight``'s shape and dtype
    (computed in float64).

        Example:
            >>> from leantorch.quant.encoding import compute_encoding
            >>> _ = torch.manual_seed(0)
            >>> w = torch.randn(1, 4, 16)
            >>> x = torch.randn(16, 256) * torch.linspace(0.1, 2, 16)[:, None]   # inputs of unequal scale
            >>> enc = compute_encoding(w.amin((0, 2)), w.amax((0, 2)), 3, symmetric=True, axis=0)
            >>> q = gptq_round(w, (x @ x.T / 256)[None], enc)
            >>> nearest = gptq_round(w, torch.eye(16)[None], enc, damping=0.0)   # H = I: round to nearest
            >>> err = lambda v: float(((w - v)[0] @ x).pow(2).mean())
            >>> err(q) < err(nearest)
            True
    """
    groups, out, _ = weight.shape
    scale, offset = weight_grid(encoding, groups, out, weight.device, weight_shape)
    h = damped_hessian(hessian, damping).to(weight.device)
    rounded = _gptq(weight.detach().double(), h, scale, offset, encoding.num_steps, block_size, act_order)
    return rounded.to(weight.dtype)


def gptq_grid_search(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    encoding: Encoding,
    ratios: Sequence[float],
    damping: float = 0.01,
    block_size: int = 128,
    weight_shape: Sequence[int] | None = None,
    act_order: bool = False,
    ranges_of: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Encoding]:
    """GPTQ-rounded ``weight`` (as :func:`gptq_round`) on the best of the grids ``α·[min, max]`` (``α`` in
    ``ratios``, :func:`~leantorch.ptq.seq_mse.shrunk_encodings`; the ranges of ``ranges_of``, by default of
    ``weight``), chosen per output channel by its rounded row's error ``(w − ŵ) H (w − ŵ)ᵀ`` under the damped
    Hessian (the least sum for a per-tensor ``encoding``), and that grid's encoding.

    GPTQ rounds every row against the same ``H``, so rows never interact: each candidate's rows are stacked
    under the others and rounded in one pass, and the choice per row is exactly the best of the candidates.
    At 3–4 bits the full range wastes steps on a few large weights, which GPTQ cannot recover from (a step it
    lacks is lost for every column); shrinking it clips them instead, whose error GPTQ then spreads.

    Example:
        >>> from leantorch.quant.encoding import compute_encoding
        >>> _ = torch.manual_seed(0)
        >>> w = torch.randn(1, 8, 64); w[0, :, 0] *= 6            # one large weight per row stretches the grid
        >>> x = torch.randn(64, 1024)
        >>> h = (x @ x.T / 1024)[None]
        >>> full = compute_encoding(w.amin((0, 2)), w.amax((0, 2)), 3, symmetric=True, axis=0)
        >>> q, chosen = gptq_grid_search(w, h, full, [1.0, 0.8, 0.6, 0.4])
        >>> err = lambda v: float(((w - v)[0] @ x).pow(2).mean())
        >>> err(q) < err(gptq_round(w, h, full)), bool((chosen.scale <= full.scale * 1.0001).all())
        (True, True)
    """
    groups, out, k = weight.shape
    n = len(ratios)
    w = weight.detach().double()
    candidates = shrunk_encodings(w if ranges_of is None else ranges_of, encoding, ratios, weight_shape)
    grids = [weight_grid(c, groups, out, w.device, weight_shape) for c in candidates]
    scale = torch.cat([s.expand(groups, out, *s.shape[2:]) for s, _ in grids], dim=1)  # [groups, n·out, ...]
    offset = torch.cat([o.expand(groups, out, *o.shape[2:]) for _, o in grids], dim=1)
    h = damped_hessian(hessian, damping).to(w.device)
    stacked = _gptq(w.repeat(1, n, 1), h, scale, offset, encoding.num_steps, block_size, act_order)
    rounded = stacked.reshape(groups, n, out, k).transpose(0, 1)  # [n, groups, out, K]
    # The choice is scored on H plus the damping only: the unit diagonal that keeps a dead input's H positive
    # definite for GPTQ is not data, and would outweigh every real input of small magnitude.
    objective = damped_hessian(hessian, damping, decouple_dead=False).to(w.device)
    errors = torch.stack([(torch.bmm(w - r, objective) * (w - r)).sum(-1) for r in rounded])  # [n, groups, out]
    if encoding.axis is None:
        best = errors.sum(dim=(1, 2)).argmin().expand(groups, out)
    else:
        best = errors.argmin(0)
    chosen = rounded.gather(0, best[None, :, :, None].expand(1, groups, out, k))[0]
    return chosen.to(weight.dtype), best_encoding(encoding, candidates, errors)


def damped_hessian(hessian: torch.Tensor, damping: float, decouple_dead: bool = True) -> torch.Tensor:
    """``hessian`` (``[groups, K, K]``) in float64, ready for GPTQ: an input channel that is always zero
    (``H_kk = 0``: nothing to compensate with, nothing to compensate for) is decoupled with a unit diagonal,
    which keeps ``H`` positive definite, and ``damping · mean(diag H)`` is added to the diagonal.
    ``decouple_dead=False``: no unit diagonal (the damped data alone, for scoring a rounding).

    Example:
        >>> damped_hessian(torch.tensor([[[2.0, 0.0], [0.0, 0.0]]]), 0.5).tolist()
        [[[2.75, 0.0], [0.0, 1.75]]]
        >>> damped_hessian(torch.tensor([[[2.0, 0.0], [0.0, 0.0]]]), 0.5, decouple_dead=False).tolist()
        [[[2.5, 0.0], [0.0, 0.5]]]
    """
    h = hessian.detach().to(torch.float64).clone()
    k = h.shape[-1]
    diag = h.diagonal(dim1=-2, dim2=-1)
    if decouple_dead:
        dead = diag == 0
        diag.add_(dead.to(h.dtype))
        h.masked_fill_(dead[:, :, None] & ~torch.eye(k, dtype=torch.bool, device=h.device), 0.0)
    diag.add_(damping * diag.mean(-1, keepdim=True))
    return h


def _gptq(
    w: torch.Tensor,
    h: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor,
    num_steps: int,
    block_size: int,
    act_order: bool,
) -> torch.Tensor:
    """GPTQ's column sweep (module docstring) of the float64 rows ``w`` (``[groups, rows, K]``) against the damped
    ``h``, on the grid ``scale``/``offset`` (``[groups, rows]``, ``[1, 1]`` or per element ``[groups, rows, K]``)."""
    groups, out, k = w.shape
    w = w.clone()
    per_column = scale.dim() == 3  # blockwise: the grid of column k is that of k's block
    order = None
    if act_order:
        # Columns with the largest inputs first, while most later columns can still absorb their error (the
        # paper's "act-order"); each column keeps its own block's grid, fixed beforehand ("static groups").
        order = h.diagonal(dim1=-2, dim2=-1).argsort(dim=-1, descending=True, stable=True)  # [groups, K]
        w = w.gather(2, order[:, None, :].expand(-1, out, -1))
        h = h.gather(1, order[:, :, None].expand(-1, -1, k)).gather(2, order[:, None, :].expand(-1, k, -1))
        if per_column:
            scale = scale.gather(2, order[:, None, :].expand(-1, out, -1))
            offset = offset.gather(2, order[:, None, :].expand(-1, out, -1))
    upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    rounded = torch.empty_like(w)
    for start in range(0, k, block_size):
        end = min(start + block_size, k)
        block = w[:, :, start:end].clone()
        errors = torch.empty_like(block)
        u = upper[:, start:end, start:end]
        for j in range(end - start):
            column = block[:, :, j]
            grid = (scale[:, :, start + j], offset[:, :, start + j]) if per_column else (scale, offset)
            q = round_to_grid(column, *grid, num_steps)
            rounded[:, :, start + j] = q
            err = (column - q) / u[:, j, j][:, None]
            block[:, :, j:] -= err[:, :, None] * u[:, None, j, j:]
            errors[:, :, j] = err
        w[:, :, end:] -= errors @ upper[:, start:end, end:]
    if order is not None:
        rounded = torch.empty_like(rounded).scatter_(2, order[:, None, :].expand(-1, out, -1), rounded)
    return rounded


def _round_rows(
    rows: torch.Tensor,
    hessian: torch.Tensor,
    encoding: Encoding,
    cfg: GptqConfig,
    shape: Sequence[int],
    ranges_of: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Encoding | None]:
    """``rows`` GPTQ-rounded on ``encoding``'s grid, or on the best of ``cfg.clip_ratios``' grids (then with it)."""
    if cfg.clip_ratios:
        return gptq_grid_search(
            rows, hessian, encoding, cfg.clip_ratios, cfg.damping, cfg.block_size, shape, cfg.act_order, ranges_of
        )
    return gptq_round(rows, hessian, encoding, cfg.damping, cfg.block_size, shape, cfg.act_order), None


def _round_towards_float(
    layer: nn.Module,
    weight: torch.Tensor,
    encoding: Encoding,
    inputs: Sequence[torch.Tensor],
    quantized: Sequence[torch.Tensor],
    cfg: GptqConfig,
) -> RoundedLayer:
    """GPTQ of the float layer's *outputs* ``W p`` from the quantized inputs ``p̂`` (``asymmetric``), and/or with
    the bias re-fitted to the mean output error (``correct_bias``).

    ``E‖W p − Ŵ p̂‖² = E‖W* p̂ − Ŵ p̂‖² + const`` for the least-squares ``W* = W C H⁻¹`` (``C = E[p p̂ᵀ]``,
    ``H = E[p̂ p̂ᵀ]``: the residual ``W p − W* p̂`` is orthogonal to every ``p̂``), so rounding ``W*`` with GPTQ
    on ``H`` minimises the error against the float model, upstream quantization errors included (GPTAQ, Li et
    al., 2025). ``W*`` is ridge-regularised towards ``W`` by the damping. With a free bias the same holds for
    the centred moments, and the bias takes ``W E[p] − Ŵ E[p̂]``."""
    moments = CenteredMoments(layer, inputs, quantized)
    center = cfg.correct_bias and getattr(layer, "bias", None) is not None
    gram, cross = moments.gram, moments.cross
    if not center:  # no bias to absorb the means: the raw second moments
        mean, mean_q = moments.mean, moments.mean_quantized
        gram = gram + mean_q[:, :, None] * mean_q[:, None, :]
        cross = cross + mean[:, :, None] * mean_q[:, None, :]
    rows = grouped_weight(layer, weight).double()
    target = rows
    if cfg.asymmetric:
        ridge = cfg.damping * gram.diagonal(dim1=-2, dim2=-1).mean(-1).clamp(min=1e-30)[:, None, None]
        eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        lhs = gram + ridge * eye
        target = torch.linalg.solve(lhs, (rows @ cross + ridge * rows).transpose(1, 2)).transpose(1, 2)
    # the grids shrink the float weight's ranges (α = 1: the grid the weight quantizer has), not the fit's
    rounded, chosen = _round_rows(target, gram, encoding, cfg, weight.shape, ranges_of=rows)
    if not center:
        return RoundedLayer(rounded.to(weight.dtype).reshape(weight.shape), encoding=chosen)
    shift = (rows @ moments.mean[:, :, None]).squeeze(-1) - (rounded @ moments.mean_quantized[:, :, None]).squeeze(-1)
    bias = cast(torch.Tensor, layer.bias).detach()
    new_bias = bias + shift.reshape(-1).to(bias.dtype)
    return RoundedLayer(rounded.to(weight.dtype).reshape(weight.shape), new_bias, chosen)
