"""AdaRound (Nagel et al., "Up or Down? Adaptive Rounding for Post-Training Quantization", ICML 2020).

Per layer, in graph order, the rounding of each weight (down or up) is learned instead of taken to the
nearest: ``W̃ = s · (clamp(⌊W/s⌋ + h(V) − offset', 0, 2**bw − 1) + offset')`` with the rectified sigmoid
``h(V) = clip(σ(V)·(ζ − γ) + γ, 0, 1)``, ``ζ = 1.1``, ``γ = −0.1``. ``V`` starts where ``h(V)`` equals the
fractional part of ``W/s`` (so the start is round-to-nearest-like) and is trained with Adam on

    E‖W x − W̃ x̂‖²  +  λ · Σ (1 − |2 h(V) − 1|^β)

(reconstruction summed over output channels, averaged over samples and positions; the regulariser pushes
every h to 0 or 1). ``β`` anneals from 20 to 2 (cosine) after a warm-up (20% of the iterations) during
which ``λ = 0``. Defaults follow the paper (λ = 0.01, β schedule, warm-up) except the schedule length:
500 iterations at Adam lr 2e-2 instead of 10,000 at 1e-3, the same result in a twentieth of the time.

``x`` is the float model's input to the layer. ``x̂`` is, by default, the input the simulated model gives
the layer with the layers before already adarounded and activations quantized (the paper's "asymmetric
reconstruction"), so each layer also compensates the error that reaches it; ``use_quantized_inputs=False``
makes ``x̂ = x``. Targets always come from an untouched copy of the float model. Both inputs come from one
sweep of the calibration batches through each model, node by node (:class:`~leantorch.ptq.frontier.Frontier`),
rather than from re-running the model up to every layer: gathering them costs about one forward pass of
each model, not one per layer. On EfficientNet-Lite0 at W4A8 per-channel the asymmetric form is what makes
AdaRound work: top-1 agreement with FP32 is 0.13 with round-to-nearest, 0.27 with AdaRound on float inputs
and 0.80 with quantized inputs (``benchmarks/ptq_efficientnet.py``), because each layer corrects the error
that reaches it instead of letting it compound over depth.

Deviations from the paper, and why:

- ``objective="moments"`` (default): the expectation is computed exactly over all calibration samples
  from the input second moments (:mod:`leantorch.ptq.input_moments`) instead of estimated on random
  mini-batches of 32 cached inputs. Same objective, no sampling noise, memory independent of the
  number of samples, and a step costs no convolution: its gradient is ``2 (W̃ E[x̂x̂ᵀ] − W E[xx̂ᵀ])``, one
  product per step (:class:`~leantorch.ptq.input_moments.QuadraticObjective`), and the chain rule through
  ``h(V)`` and the regulariser is written out (no autograd graph), which makes AdaRound affordable on a CPU.
  ``objective="minibatch"`` is the paper's procedure (cached inputs, ``batch_size`` samples per step); it
  is also used for layers whose input cannot be unfolded (ConvTranspose, Conv3d, non-zero padding).
- The loss is on the layer's pre-activation output (no activation function inside the loss), as AIMET
  does; it needs no knowledge of what follows and keeps the objective quadratic.

Only weights change (biases stay); the scales/offsets are the sim's weight encodings, then frozen.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.conv import _ConvNd

from ..errors import InvalidOptionError
from ..options import check_count, check_flag, check_fraction, check_positive, with_overrides
from ..quant.blocks import expand_blocks
from ..quant.encoding import Encoding
from .input_moments import layer_objective, supports_moments
from .layer_rounding import LayerRoundingConfig, round_layers
from .layer_rounding import save_param_encodings as _save_param_encodings  # noqa: F401  (tests' old import path)

__all__ = ["OBJECTIVES", "Gradient", "rectified_sigmoid", "initial_v", "AdaroundConfig", "adaround"]

log = logging.getLogger(__name__)

ZETA, GAMMA = 1.1, -0.1
OBJECTIVES = ("moments", "minibatch")

Gradient = Callable[[torch.Tensor], torch.Tensor]  # ∂(reconstruction error)/∂W̃ at a candidate W̃


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """h(V) = clip(σ(V)·(ζ − γ) + γ, 0, 1).

    Example:
        >>> rectified_sigmoid(torch.tensor([-20.0, 0.0, 20.0])).tolist()
        [0.0, 0.5, 1.0]
    """
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def initial_v(fraction: torch.Tensor) -> torch.Tensor:
    """V such that h(V) = fraction (inverse of the rectified sigmoid inside (0, 1)): where AdaRound starts.

    Example:
        >>> round(float(rectified_sigmoid(initial_v(torch.tensor(0.3)))), 6)
        0.3
    """
    p = ((fraction - GAMMA) / (ZETA - GAMMA)).clamp(1e-6, 1 - 1e-6)
    return torch.log(p / (1 - p))


_initial_v = initial_v  # its earlier private name (tests/test_adaround.py reaches it)


@dataclass(frozen=True)
class AdaroundConfig(LayerRoundingConfig):
    """AdaRound's options (checked on construction); :func:`adaround` takes one, or the same names as keywords.

    Attributes:
        iterations, reg_param (λ), beta_range, warm_start, lr: optimisation. The paper uses 10,000 iterations
            at lr 1e-3; 500 at 2e-2 (the default) reach the same agreement on EfficientNet-Lite0 W4A8
            (top-1 with FP32 on 1,000 held-out crops: 0.801, 0.800 at 1,000/1e-2, 0.796 at 10,000/1e-3) in a
            twentieth of the time.
        batch_size: samples per step of ``objective="minibatch"``.
        use_quantized_inputs: reconstruct from the partially quantized model's layer inputs (asymmetric,
            the paper's choice); ``False`` uses the float model's.
        objective: ``"moments"`` (exact expectation, default) or ``"minibatch"`` (the paper's sampling).
        seed: of the mini-batch sampling.
        Others: :class:`~leantorch.ptq.layer_rounding.LayerRoundingConfig`.

    Example:
        >>> AdaroundConfig(iterations=100).iterations
        100
        >>> AdaroundConfig(objective="sampled")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        leantorch.errors.InvalidOptionError: objective='sampled': use one of 'moments', 'minibatch'
    """

    filename_prefix: str = "adaround"
    iterations: int = 500
    batch_size: int = 32
    reg_param: float = 0.01
    beta_range: tuple[float, float] = (20.0, 2.0)
    warm_start: float = 0.2
    lr: float = 2e-2
    use_quantized_inputs: bool = True
    objective: str = "moments"
    seed: int = 0

    def __post_init__(self) -> None:
        # Refused before any work: ``range(0)`` would learn nothing without a word, a NaN or negative rate would
        # only fail inside Adam, after the model was traced and calibrated.
        if self.objective not in OBJECTIVES:
            raise InvalidOptionError(f"objective={self.objective!r}: use one of {', '.join(map(repr, OBJECTIVES))}")
        check_count("iterations", self.iterations, hint=" (optimisation steps per layer; the paper uses 10,000)")
        check_positive("lr", self.lr, hint=" (Adam's learning rate; the paper uses 1e-3)")
        check_positive(
            "reg_param", self.reg_param, allow_zero=True, hint=" (the rounding regulariser's weight λ; 0.01)"
        )
        beta_range = self.beta_range
        if not (isinstance(beta_range, (tuple, list)) and len(beta_range) == 2):
            raise InvalidOptionError(f"beta_range={beta_range!r}: pass (start, end), two numbers > 0 such as (20, 2)")
        for i, value in enumerate(beta_range):
            check_positive(f"beta_range[{i}]", value, hint=" (both ends of the β schedule, e.g. (20, 2))")
        check_fraction("warm_start", self.warm_start, hint=" (the share of iterations without the regulariser; 0.2)")
        check_count("batch_size", self.batch_size)
        super().__post_init__()
        check_flag("use_quantized_inputs", self.use_quantized_inputs)


def adaround(
    model: nn.Module,
    example_input: Any,
    calibration: Iterable[Any],
    options: AdaroundConfig | None = None,
    **overrides: Any,
) -> tuple[fx.GraphModule, Path]:
    """Learn the rounding of every Conv/Linear weight; return the model and a frozen-encodings file.

    The returned model's weights lie on their quantization grids. Load the file into the QuantSim you
    evaluate with (``sim.set_and_freeze_param_encodings(path)``) so recalibration keeps those grids.
    Runs on the model's device (CUDA when the model is there). The input model is not modified.

    Args:
        calibration: iterable of batches; the first ``num_batches`` are used (for every layer).
        options: an :class:`AdaroundConfig` (default: its defaults).
        overrides: any of its fields as keywords (``param_bw=4, iterations=500, ...``), applied on top.

    Raises:
        InvalidOptionError: an unknown option or ``objective``; ``iterations``, ``batch_size`` or ``num_batches``
            not a whole number ≥ 1; ``lr`` not finite and > 0; ``reg_param`` < 0; ``beta_range`` not two numbers
            > 0; ``warm_start`` outside [0, 1]; a flag that is not a bool; ``filename_prefix`` not a string.
        OutputPathError: ``path`` cannot be a directory or written, ``filename_prefix`` empty or path-like.
        CalibrationDataError: no calibration batch (``None``, empty), a batch that is not a tensor or a tuple
            of the model's inputs (then labels), or NaN/Inf in one.
    All of these are checked before any work.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
        >>> data = [torch.randn(8, 3, 10, 10)]
        >>> rounded, enc = adaround(net, data[0][:1], data, iterations=50, progress=False, path="/tmp")
        >>> enc.name
        'adaround.encodings'
    """
    cfg = with_overrides(AdaroundConfig, options, overrides, "adaround")
    gen = torch.Generator().manual_seed(cfg.seed)

    def learn(
        name: str,
        fp_layer: nn.Module,
        encoding: Encoding,
        inputs: Sequence[torch.Tensor],
        quantized: Sequence[torch.Tensor] | None,
    ) -> torch.Tensor:
        weight = cast(torch.Tensor, fp_layer.weight).detach()
        gradient: Gradient
        if cfg.objective == "moments" and supports_moments(fp_layer):
            gradient = layer_objective(fp_layer, weight, inputs, quantized).gradient
        else:
            gradient = _minibatch_gradient(fp_layer, inputs, quantized, cfg.batch_size, gen)
        del inputs, quantized  # the objective holds what it needs; the activations can go
        return _learn_rounding(
            weight, encoding, gradient, cfg.iterations, cfg.reg_param, cfg.beta_range, cfg.warm_start, cfg.lr
        )

    return round_layers(model, example_input, calibration, learn, cfg, cfg.use_quantized_inputs, "adaround")


def _minibatch_gradient(
    fp_layer: nn.Module,
    inputs: Sequence[torch.Tensor],
    quantized: Sequence[torch.Tensor] | None,
    batch_size: int,
    gen: torch.Generator,
) -> Gradient:
    """The paper's estimate: each call draws ``batch_size`` cached samples and differentiates their error."""
    with torch.no_grad():
        targets = torch.cat([_apply(fp_layer, cast(torch.Tensor, fp_layer.weight), x) for x in inputs])
    x_all = torch.cat(list(quantized if quantized is not None else inputs))  # AdaRound samples across all batches

    def gradient(candidate: torch.Tensor) -> torch.Tensor:
        idx = torch.randint(len(x_all), (min(batch_size, len(x_all)),), generator=gen).to(x_all.device)
        weight = candidate.detach().requires_grad_(True)
        out = _apply(fp_layer, weight, x_all[idx], grad=True)
        channel_dim = 1 if out.dim() > 2 else -1
        with torch.enable_grad():
            loss = (out - targets[idx]).pow(2).sum(channel_dim).mean()
            return torch.autograd.grad(loss, weight)[0]

    return gradient


def _apply(layer: nn.Module, weight: torch.Tensor, x: torch.Tensor, grad: bool = False) -> torch.Tensor:
    with torch.set_grad_enabled(grad):
        if isinstance(layer, nn.Linear):
            return F.linear(x, weight, layer.bias)
        conv = cast(_ConvNd, layer)
        return conv._conv_forward(x, weight, conv.bias)


@torch.no_grad()
def _learn_rounding(
    weight: torch.Tensor,
    enc: Encoding,
    gradient: Gradient,
    iterations: int,
    reg_param: float,
    beta_range: tuple[float, float],
    warm_start: float,
    lr: float,
) -> torch.Tensor:
    """Optimise V for one layer; return the weight rounded by the final hard decisions ``h(V) ≥ 0.5``.

    The gradient with respect to V is written out (chain rule through W̃(h), h(V) and the regulariser)
    rather than left to autograd: it saves the graph and about half of the elementwise passes over the
    weights, which dominate a step once the reconstruction term is a single matrix product."""
    shape = [1] * weight.dim()
    if enc.axis is not None:
        shape[enc.axis] = -1
    if enc.is_blockwise:  # one grid per block: scale and offset at every weight element
        assert enc.axis is not None and enc.block_axis is not None and enc.block_size is not None
        where = (weight.shape, enc.axis, enc.block_axis, enc.block_size)
        scale = expand_blocks(enc.scale.to(weight.device), *where).to(weight.dtype)
        offset = expand_blocks(enc.offset.to(weight.device), *where).to(weight.dtype)
    else:
        scale = enc.scale.to(weight.device).reshape(shape).to(weight.dtype)
        offset = enc.offset.to(weight.device).reshape(shape).to(weight.dtype)
    w_floor = torch.floor(weight / scale)
    v = initial_v(weight / scale - w_floor)
    grid = w_floor - offset  # the floor's index on the integer grid
    # W̃ = base + slope·h: rounding up moves W̃ by one step, except where the grid's clamp holds it still
    base = scale * (grid.clamp(0, enc.num_steps) + offset)
    slope = scale * ((grid >= 0) & (grid <= enc.num_steps - 1)).to(weight.dtype)
    optimizer = torch.optim.Adam([v], lr=lr, **_fused_if_supported(v))
    warm = int(warm_start * iterations)
    beta_start, beta_end = beta_range
    for step in range(iterations):
        sig = torch.sigmoid(v)
        h_raw = sig * (ZETA - GAMMA) + GAMMA
        h = h_raw.clamp(0.0, 1.0)
        grad = gradient(torch.addcmul(base, slope, h)).to(weight.dtype).mul_(slope)
        passes = h_raw.eq(h)  # where the rectifier does not clip (h is overwritten below)
        if step >= warm and reg_param > 0:
            progress = (step - warm) / max(1, iterations - warm)
            beta = beta_end + 0.5 * (beta_start - beta_end) * (1 + math.cos(progress * math.pi))
            # ∂/∂h λ(1 − |r|^β) = −2λβ·sign(r)·|r|^(β−1), r = 2h − 1 (exp∘log: twice as fast as pow on CPU)
            r = h.mul_(2.0).sub_(1.0)
            grad.addcmul_(r.sign(), r.abs_().log_().mul_(beta - 1).exp_(), value=-2.0 * reg_param * beta)
        # ∂h/∂V = (ζ − γ)·σ(1 − σ) where the rectifier passes, 0 where it clips
        grad.mul_(sig).mul_(1.0 - sig).mul_(passes).mul_(ZETA - GAMMA)
        v.grad = grad
        optimizer.step()
    hard = (rectified_sigmoid(v) >= 0.5).to(weight.dtype)
    return scale * (torch.clamp(w_floor + hard - offset, 0, enc.num_steps) + offset)


def _fused_if_supported(v: torch.Tensor) -> dict[str, Any]:
    """Adam's fused kernel (one pass over V instead of about ten) where this torch build has it."""
    try:
        torch.optim.Adam([torch.zeros(1, device=v.device, dtype=v.dtype, requires_grad=True)], fused=True)
    except (RuntimeError, ValueError, TypeError):
        return {}
    return {"fused": True}
