"""AdaRound's layer inputs come from one node-by-node sweep (Frontier); the rounding must be exactly what the
previous per-layer path (re-running the model prefix for every layer) gave."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import leantorch as lt
from leantorch.models import ResNetSmall
from leantorch.ptq import adaround as adaround_module
from leantorch.ptq import layer_rounding
from leantorch.ptq.input_moments import LowRankObjective, QuadraticObjective, layer_objective
from leantorch.ptq.layer_io import layer_io
from leantorch.quant.encoding import compute_encoding


def _prefix_rerun_inputs(reference, sim, layers, data, use_quantized_inputs) -> Iterator:  # type: ignore[no-untyped-def]
    """The old path, kept as the reference: run each model up to the layer (early stop), once per layer."""
    for name in layers:
        fp_layer, wrapper = reference.get_submodule(name), sim.layers()[name]
        inputs = [layer_io(reference, fp_layer, [x], capture_output=False)[0][0] for x in data]
        quantized = None
        if use_quantized_inputs:
            with torch.no_grad():
                seen = [layer_io(sim.model, wrapper, [x], capture_output=False)[0][0] for x in data]
                quantized = [wrapper.input_quantizers[0](x) if len(wrapper.input_quantizers) else x for x in seen]
        yield name, inputs, quantized


def _net() -> nn.Module:
    """Residual blocks (branches and joins), strided convs, a Linear head: inputs depend on earlier roundings."""
    model = ResNetSmall(num_classes=5, width=4).eval()
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model


def _run(tmp_path, monkeypatch, old: bool, **kwargs):  # type: ignore[no-untyped-def]
    with monkeypatch.context() as patch:
        if old:
            patch.setattr(layer_rounding, "layer_inputs", _prefix_rerun_inputs)
        torch.manual_seed(0)
        data = [torch.randn(4, 3, 12, 12) for _ in range(3)]
        out = tmp_path / ("old" if old else "new")
        out.mkdir()
        rounded, enc = lt.adaround(
            _net(), data[0][:1], data, param_bw=3, act_bw=4, num_batches=3, path=out, progress=False, **kwargs
        )
    return rounded, json.loads(enc.read_text())


@pytest.mark.parametrize("objective", ["moments", "minibatch"])
@pytest.mark.parametrize("use_quantized_inputs", [True, False])
def test_frontier_sweep_rounds_exactly_like_rerunning_each_prefix(
    tmp_path, monkeypatch, objective: str, use_quantized_inputs: bool
) -> None:
    kwargs = dict(objective=objective, use_quantized_inputs=use_quantized_inputs, iterations=30, lr=1e-2)
    new_model, new_enc = _run(tmp_path, monkeypatch, old=False, **kwargs)
    old_model, old_enc = _run(tmp_path, monkeypatch, old=True, **kwargs)
    assert new_enc == old_enc
    new_state, old_state = new_model.state_dict(), old_model.state_dict()
    assert set(new_state) == set(old_state)
    weights = [k for k in new_state if k.endswith("weight") and new_state[k].dim() > 1]
    assert len(weights) >= 8
    for key in new_state:
        assert torch.equal(new_state[key], old_state[key]), key
    # the rounding was learned, not a copy of the float weights
    float_state = _net().state_dict()
    changed = [k for k in weights if k in float_state and not torch.equal(new_state[k], float_state[k])]
    assert changed


# --------------------------------------------------------------------------- the per-layer optimisation
LAYERS = {
    "conv2d strided, padded, dilated": lambda: nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2),
    "conv2d grouped": lambda: nn.Conv2d(4, 6, (3, 1), groups=2, padding=(1, 0)),
    "depthwise": lambda: nn.Conv2d(4, 4, 3, groups=4, padding=1),
    "pointwise (no unfold)": lambda: nn.Conv2d(4, 6, 1),
    "pointwise grouped": lambda: nn.Conv2d(4, 6, 1, groups=2),
    "pointwise strided": lambda: nn.Conv2d(4, 6, 1, stride=2),
    "conv1d": lambda: nn.Conv1d(4, 5, 3, stride=2, padding=1),
    "linear on tokens": lambda: nn.Linear(4, 3),
}


def _inputs(layer: nn.Module, n: int) -> torch.Tensor:
    shape = {nn.Conv2d: (n, 4, 9, 7), nn.Conv1d: (n, 4, 11), nn.Linear: (n, 5, 4)}[type(layer)]
    return torch.randn(*shape, dtype=torch.float64)


def _direct_error(
    layer: nn.Module, w: torch.Tensor, x: torch.Tensor, w_hat: torch.Tensor, x_hat: torch.Tensor
) -> torch.Tensor:
    """Mean over samples and positions of the output error summed over channels (float64, differentiable)."""

    def run(weight: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        return (
            nn.functional.linear(inp, weight)
            if isinstance(layer, nn.Linear)
            else layer._conv_forward(inp, weight, None)
        )

    err = run(w, x) - run(w_hat, x_hat)
    return err.pow(2).sum(-1 if isinstance(layer, nn.Linear) else 1).mean()


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("asymmetric", [False, True])
@pytest.mark.parametrize("form", [QuadraticObjective, LowRankObjective])
def test_objective_gradients_equal_autograd_of_the_direct_error_float64(name: str, asymmetric: bool, form) -> None:
    torch.manual_seed(0)
    layer = LAYERS[name]().double()
    w = layer.weight.detach()
    xs = [_inputs(layer, 3), _inputs(layer, 2)]  # batches of different sizes: weighting by positions
    x_hats = [x + 0.2 * torch.randn_like(x) for x in xs] if asymmetric else xs
    objective = form(layer, w, xs, x_hats if asymmetric else None)
    w_hat = (w + 0.1 * torch.randn_like(w)).requires_grad_(True)
    (expected,) = torch.autograd.grad(_direct_error(layer, w, torch.cat(xs), w_hat, torch.cat(x_hats)), w_hat)
    got = objective.gradient(w_hat.detach())
    assert got.shape == w.shape
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def test_layer_objective_picks_the_patches_only_when_they_are_fewer_than_half_the_inputs() -> None:
    layer = nn.Linear(64, 4)
    assert isinstance(layer_objective(layer, layer.weight, [torch.randn(31, 64)]), LowRankObjective)
    assert isinstance(layer_objective(layer, layer.weight, [torch.randn(32, 64)]), QuadraticObjective)


def _autograd_rounding(weight, enc, loss_fn, iterations, reg_param, beta_range, warm_start, lr):  # type: ignore[no-untyped-def]
    """The optimisation as first written (autograd through W̃(h(V)) and the regulariser), kept as the reference."""
    shape = [1] * weight.dim()
    shape[enc.axis] = -1
    scale, offset = enc.scale.reshape(shape).to(weight.dtype), enc.offset.reshape(shape).to(weight.dtype)
    w_floor = torch.floor(weight / scale)
    v = adaround_module._initial_v(weight / scale - w_floor).requires_grad_(True)
    optimizer = torch.optim.Adam([v], lr=lr)

    def soft_weight(h: torch.Tensor) -> torch.Tensor:
        return scale * (torch.clamp(w_floor + h - offset, 0, enc.num_steps) + offset)

    warm = int(warm_start * iterations)
    for step in range(iterations):
        h = adaround_module.rectified_sigmoid(v)
        loss = loss_fn(soft_weight(h))
        if step >= warm:
            progress = (step - warm) / max(1, iterations - warm)
            beta = beta_range[1] + 0.5 * (beta_range[0] - beta_range[1]) * (1 + math.cos(progress * math.pi))
            loss = loss + reg_param * (1 - (2 * h - 1).abs().pow(beta)).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return soft_weight((adaround_module.rectified_sigmoid(v) >= 0.5).to(weight.dtype))


def test_written_out_gradient_steps_like_autograd_float64() -> None:
    """The chain rule written out in _learn_rounding takes the same steps as autograd through the original
    formulation (float64): identical rounding decisions, on a grid that clamps some weights at both ends."""
    torch.manual_seed(0)
    layer = nn.Conv2d(6, 8, 3).double()
    weight = layer.weight.detach()
    enc = compute_encoding(
        weight.amin(dim=(1, 2, 3)) * 0.7, weight.amax(dim=(1, 2, 3)) * 0.7, bitwidth=3, symmetric=False, axis=0
    )
    x, x_hat = torch.randn(4, 6, 8, 8, dtype=torch.float64), torch.randn(4, 6, 8, 8, dtype=torch.float64)

    def loss_fn(w_hat: torch.Tensor) -> torch.Tensor:
        return _direct_error(layer, weight, x, w_hat, x_hat)

    def gradient(w_hat: torch.Tensor) -> torch.Tensor:
        w_hat = w_hat.detach().requires_grad_(True)
        with torch.enable_grad():
            return torch.autograd.grad(loss_fn(w_hat), w_hat)[0]

    options = dict(iterations=300, reg_param=0.01, beta_range=(20.0, 2.0), warm_start=0.2, lr=1e-2)
    expected = _autograd_rounding(weight, enc, loss_fn, **options)
    got = adaround_module._learn_rounding(weight, enc, gradient, **options)
    assert torch.equal(got, expected)
    nearest = enc.scale.reshape(-1, 1, 1, 1) * (
        torch.clamp(torch.round(weight / enc.scale.reshape(-1, 1, 1, 1)) - enc.offset.reshape(-1, 1, 1, 1), 0, 7)
        + enc.offset.reshape(-1, 1, 1, 1)
    )
    assert not torch.equal(got, nearest)  # the rounding was learned
