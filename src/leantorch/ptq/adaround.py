"""AdaRound (Nagel et al., "Up or Down? Adaptive Rounding for Post-Training Quantization", ICML 2020).

Per layer, in graph order, the rounding of each weight (down or up) is learned instead of taken to the
nearest: ``W̃ = s · (clamp(⌊W/s⌋ + h(V) − offset', 0, 2**bw − 1) + offset')`` with the rectified sigmoid
``h(V) = clip(σ(V)·(ζ − γ) + γ, 0, 1)``, ``ζ = 1.1``, ``γ = −0.1``. ``V`` starts where ``h(V)`` equals the
fractional part of ``W/s`` (so the start is round-to-nearest-like) and is trained with Adam on

    ‖W x − W̃ x‖²  +  λ · Σ (1 − |2 h(V) − 1|^β)

(reconstruction summed over output channels, averaged over positions; the regulariser pushes every h to
0 or 1). ``β`` anneals from 20 to 2 after a warm-up (20% of the iterations) during which ``λ = 0``.
Defaults follow the paper: 10,000 iterations, λ = 0.01, Adam with lr 1e-3, batches of 32 samples.

Inputs ``x`` are cached once per layer, from the float model or (``use_quantized_inputs=True``) from the
simulated model with the layers before already adarounded and activations quantized. Targets are always
the float model's layer outputs. Deviation from the paper: the loss is on the layer's pre-activation
output (no activation function inside the loss), as AIMET does; it needs no knowledge of what follows.
Only weights change (biases stay); the scales/offsets are the sim's weight encodings, then frozen.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import fx, nn
from tqdm.auto import tqdm

from ..graph import as_tuple, prepare
from ..quant.sim import QuantSim
from .layer_io import layer_io

log = logging.getLogger(__name__)

ZETA, GAMMA = 1.1, -0.1


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """h(V) = clip(σ(V)·(ζ − γ) + γ, 0, 1).

    Example:
        >>> rectified_sigmoid(torch.tensor([-20.0, 0.0, 20.0])).tolist()
        [0.0, 0.5, 1.0]
    """
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _initial_v(fraction: torch.Tensor) -> torch.Tensor:
    """V such that h(V) = fraction (inverse of the rectified sigmoid inside (0, 1))."""
    p = ((fraction - GAMMA) / (ZETA - GAMMA)).clamp(1e-6, 1 - 1e-6)
    return torch.log(p / (1 - p))


def adaround(
    model: nn.Module,
    example_input: Any,
    calibration: Iterable[Any],
    param_bw: int = 4,
    act_bw: int = 8,
    per_channel: bool = True,
    scheme: str = "minmax",
    config: Any = "default",
    num_batches: int = 4,
    iterations: int = 10_000,
    batch_size: int = 32,
    reg_param: float = 0.01,
    beta_range: tuple[float, float] = (20.0, 2.0),
    warm_start: float = 0.2,
    lr: float = 1e-3,
    use_quantized_inputs: bool = False,
    path: str | Path = ".",
    filename_prefix: str = "adaround",
    seed: int = 0,
    progress: bool = True,
) -> tuple[fx.GraphModule, Path]:
    """Learn the rounding of every Conv/Linear weight; return the model and a frozen-encodings file.

    The returned model's weights lie on their quantization grids. Load the file into the QuantSim you
    evaluate with (``sim.set_and_freeze_param_encodings(path)``) so recalibration keeps those grids.
    Runs on the model's device (CUDA when the model is there).

    Args:
        calibration: iterable of batches; the first ``num_batches`` are cached per layer.
        param_bw, per_channel, scheme: the weight quantization to round for (``scheme`` picks the scales).
        act_bw, config: activation quantization of the sim used for ``use_quantized_inputs``.
        iterations, batch_size, reg_param (λ), beta_range, warm_start, lr: optimisation (paper defaults).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
        >>> data = [torch.randn(8, 3, 10, 10)]
        >>> rounded, enc = adaround(net, data[0][:1], data, iterations=50, progress=False, path="/tmp")
        >>> enc.name
        'adaround.encodings'
    """
    gm = prepare(model, example_input)
    data = [as_tuple(b)[0] for _, b in zip(range(num_batches), calibration)]
    if not data:
        raise ValueError("adaround needs calibration data")
    sim = QuantSim(gm, example_input, param_bw=param_bw, act_bw=act_bw, scheme=scheme, per_channel=per_channel,
                   config=config)
    sim.compute_encodings(data, progress=False)
    if not use_quantized_inputs:
        sim.set_activation_quantization(False)
    layers = [n for n, w in sim.layers().items() if w.op_type in ("Conv", "Linear")
              and w.param_quantizers["weight"].is_active]
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(layers, desc="adaround", unit="layer", disable=not progress, leave=False)
    for name in bar:
        wrapper = sim.layers()[name]
        fp_layer = gm.get_submodule(name)
        source = sim.model if use_quantized_inputs else gm
        source_layer = wrapper if use_quantized_inputs else fp_layer
        inputs, _ = layer_io(source, source_layer, data, capture_output=False)
        if use_quantized_inputs:
            inputs = [wrapper.input_quantizers[0](x) if len(wrapper.input_quantizers) else x for x in inputs]
        fp_inputs = inputs if not use_quantized_inputs else layer_io(gm, fp_layer, data, capture_output=False)[0]
        targets = [_apply(fp_layer, fp_layer.weight, x) for x in fp_inputs]
        rounded = _optimize_layer(fp_layer, wrapper.param_quantizers["weight"], inputs, targets, iterations,
                                  batch_size, reg_param, beta_range, warm_start, lr, gen)
        with torch.no_grad():
            fp_layer.weight.copy_(rounded)
            wrapper.module.weight.copy_(rounded)
        wrapper.param_quantizers["weight"].frozen = True
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    enc_path = out / f"{filename_prefix}.encodings"
    _save_param_encodings(sim, enc_path)
    return gm, enc_path


def _apply(layer: nn.Module, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        if isinstance(layer, nn.Linear):
            return F.linear(x, weight, layer.bias)
        return layer._conv_forward(x, weight, layer.bias)


def _optimize_layer(layer: nn.Module, quantizer: Any, inputs: list[torch.Tensor], targets: list[torch.Tensor],
                    iterations: int, batch_size: int, reg_param: float, beta_range: tuple[float, float],
                    warm_start: float, lr: float, gen: torch.Generator) -> torch.Tensor:
    enc = quantizer.encoding
    w = layer.weight.detach()
    shape = [1] * w.dim()
    if enc.axis is not None:
        shape[enc.axis] = -1
    scale = enc.scale.to(w.device).reshape(shape).to(w.dtype)
    offset = enc.offset.to(w.device).reshape(shape).to(w.dtype)
    w_floor = torch.floor(w / scale)
    v = _initial_v(w / scale - w_floor).requires_grad_(True)
    optimizer = torch.optim.Adam([v], lr=lr)
    x_all, y_all = torch.cat(inputs), torch.cat(targets)
    qmax = enc.num_steps

    def soft_weight(h: torch.Tensor) -> torch.Tensor:
        return scale * (torch.clamp(w_floor + h - offset, 0, qmax) + offset)

    warm = int(warm_start * iterations)
    for step in range(iterations):
        idx = torch.randint(len(x_all), (min(batch_size, len(x_all)),), generator=gen).to(x_all.device)
        x, y = x_all[idx], y_all[idx]
        h = rectified_sigmoid(v)
        out = F.linear(x, soft_weight(h), layer.bias) if isinstance(layer, nn.Linear) else \
            layer._conv_forward(x, soft_weight(h), layer.bias)
        channel_dim = 1 if out.dim() > 2 else -1
        recon = (out - y).pow(2).sum(channel_dim).mean()
        loss = recon
        if step >= warm:
            progress = (step - warm) / max(1, iterations - warm)
            beta = beta_range[1] + 0.5 * (beta_range[0] - beta_range[1]) * (1 + torch.cos(torch.tensor(progress * torch.pi)))
            loss = loss + reg_param * (1 - (2 * h - 1).abs().pow(beta)).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        hard = (rectified_sigmoid(v) >= 0.5).to(w.dtype)
        return soft_weight(hard)


def _save_param_encodings(sim: QuantSim, path: Path) -> None:
    import json

    from ..quant.sim import ENCODINGS_VERSION

    params = {n: q.encoding.to_aimet() for n, q in sim.param_quantizers().items() if q.is_active and q.encoding}
    path.write_text(json.dumps({"version": ENCODINGS_VERSION, "activation_encodings": {},
                                "param_encodings": params}, indent=2))
