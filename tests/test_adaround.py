"""AdaRound's layer inputs come from one node-by-node sweep (Frontier); the rounding must be exactly what the
previous per-layer path (re-running the model prefix for every layer) gave."""

from __future__ import annotations

import json
from typing import Iterator

import pytest
import torch
from torch import nn

import leantorch as lt
from leantorch.ptq import adaround as adaround_module
from leantorch.ptq.layer_io import layer_io
from leantorch.models import ResNetSmall


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
            patch.setattr(adaround_module, "_layer_inputs", _prefix_rerun_inputs)
        torch.manual_seed(0)
        data = [torch.randn(4, 3, 12, 12) for _ in range(3)]
        out = tmp_path / ("old" if old else "new")
        out.mkdir()
        rounded, enc = lt.adaround(_net(), data[0][:1], data, param_bw=3, act_bw=4, num_batches=3,
                                   path=out, progress=False, **kwargs)
    return rounded, json.loads(enc.read_text())


@pytest.mark.parametrize("objective", ["moments", "minibatch"])
@pytest.mark.parametrize("use_quantized_inputs", [True, False])
def test_frontier_sweep_rounds_exactly_like_rerunning_each_prefix(tmp_path, monkeypatch, objective: str,
                                                                  use_quantized_inputs: bool) -> None:
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
