"""Recurrent layers (nn.LSTM, nn.GRU, nn.RNN): float-exact replacement, quantizers as AIMET places them,
calibration, and an ONNX export that ONNX Runtime runs within one output step of sim.model."""

from __future__ import annotations

import doctest
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import leantorch as lt
from leantorch.errors import TraceError
from leantorch.ops import rnn as rnn_ops

# (class, constructor options): every supported option appears at least once.
CASES = [
    (nn.LSTM, {}),
    (nn.LSTM, {"num_layers": 2, "bidirectional": True, "batch_first": True}),
    (nn.LSTM, {"num_layers": 3, "bias": False, "dropout": 0.3}),
    (nn.GRU, {}),
    (nn.GRU, {"num_layers": 2, "bidirectional": True}),
    (nn.GRU, {"batch_first": True, "bias": False}),
    (nn.RNN, {"nonlinearity": "tanh", "num_layers": 2}),
    (nn.RNN, {"nonlinearity": "relu", "bidirectional": True, "batch_first": True}),
]
IDS = [f"{cls.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'plain'}" for cls, kw in CASES]


class Seq(nn.Module):
    """A recurrent layer between two Linears; returns the output and every final state."""

    def __init__(self, cls: type[nn.RNNBase], hidden: int = 12, state: bool = False, **options: object) -> None:
        super().__init__()
        self.state = state  # forward takes the initial state(s) after x
        self.lstm = cls is nn.LSTM  # decided here: prepare swaps self.rnn for a loop that is not an nn.LSTM
        self.proj = nn.Linear(5, 6)
        self.rnn = cls(6, hidden, **options)
        self.head = nn.Linear(hidden * (2 if options.get("bidirectional") else 1), 3)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None, c0: torch.Tensor | None = None) -> tuple:
        hx = (h0, c0) if self.state and self.lstm else h0 if self.state else None
        if self.lstm:
            out, (h, c) = self.rnn(self.proj(x), hx)
            return self.head(out), h, c
        out, h = self.rnn(self.proj(x), hx)
        return self.head(out), h


def _inputs(rnn: nn.RNNBase, steps: int = 6, batch: int = 3, state: bool = False) -> tuple[torch.Tensor, ...]:
    x = torch.randn(batch, steps, 5) if rnn.batch_first else torch.randn(steps, batch, 5)
    if not state:
        return (x,)
    shape = (rnn.num_layers * (2 if rnn.bidirectional else 1), batch, rnn.hidden_size)
    return (x, *(torch.randn(shape) for _ in range(2 if isinstance(rnn, nn.LSTM) else 1)))


def _flat(out: tuple) -> tuple[torch.Tensor, ...]:
    """(output, h_n[, c_n]) of a recurrent layer's return value."""
    return (out[0], *(out[1] if isinstance(out[1], tuple) else (out[1],)))


def _max_diff(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> float:
    assert len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b))
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


@pytest.mark.parametrize("cls,options", CASES, ids=IDS)
@pytest.mark.parametrize("state", [False, True], ids=["zero-state", "given-state"])
def test_prepared_model_equals_torch_in_float(cls: type[nn.RNNBase], options: dict, state: bool) -> None:
    torch.manual_seed(0)
    model = Seq(cls, state=state, **options).eval()
    inputs = _inputs(model.rnn, state=state)
    gm = lt.prepare(model, inputs)
    assert isinstance(gm.get_submodule("rnn"), rnn_ops.RecurrentLoop)
    # Other lengths and batch sizes too: nothing is fixed to the example in float.
    for other in (inputs, _inputs(model.rnn, steps=9, batch=2, state=state)):
        with torch.no_grad():
            assert _max_diff(model(*other), gm(*other)) <= 1e-5
    # Parameter names are torch's, so checkpoints load either way.
    assert gm.state_dict().keys() == model.state_dict().keys()
    gm.load_state_dict(model.state_dict())


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
def test_unbatched_input_and_dropout_in_training_match_torch(cls: type[nn.RNNBase]) -> None:
    torch.manual_seed(0)
    rnn = cls(4, 5, num_layers=2, dropout=0.5, bidirectional=True)
    loop = rnn_ops.to_loop(rnn)
    x = torch.randn(7, 4)
    state = torch.randn(4, 5)
    hx = (state, torch.randn(4, 5)) if cls is nn.LSTM else state
    rnn.eval(), loop.eval()
    assert _max_diff(_flat(rnn(x, hx)), _flat(loop(x, hx))) <= 1e-5
    # Dropout between layers in training, as torch applies it (same random draws for the same seed).
    rnn.train(), loop.train()
    xb = torch.randn(7, 2, 4)
    torch.manual_seed(1)
    want = _flat(rnn(xb))
    torch.manual_seed(1)
    assert _max_diff(want, _flat(loop(xb))) <= 1e-5


def _calibrated(model: nn.Module, inputs: tuple[torch.Tensor, ...], **options: object) -> lt.QuantSim:
    sim = lt.QuantSim(model, inputs, **options)
    batches = [tuple(torch.randn(x.shape[0] * 2, *x.shape[1:]) if i == 0 else x for i, x in enumerate(inputs))]
    if len(inputs) > 1 or not model.rnn.batch_first:  # state or time-major input: keep the example's batch
        batches = [tuple(torch.randn_like(x) for x in inputs) for _ in range(2)]
    sim.compute_encodings(batches, progress=False)
    return sim


@pytest.mark.parametrize("cls,options", [CASES[1], CASES[4], CASES[7]], ids=[IDS[1], IDS[4], IDS[7]])
def test_every_weight_and_state_is_quantized_once_per_layer_and_direction(cls: type[nn.RNNBase], options: dict) -> None:
    torch.manual_seed(0)
    model = Seq(cls, state=True, **options).eval()
    inputs = _inputs(model.rnn, state=True)
    sim = _calibrated(model, inputs, per_channel=True)
    wrapper = sim.layers()["rnn"]
    assert wrapper.op_type == cls.__name__  # "LSTM", "GRU", "RNN": what configs name
    # No weight matrix stays float: one quantizer per torch parameter tensor, per channel along its rows.
    weights = [n for n, _ in model.rnn.named_parameters() if n.startswith("weight_")]
    assert sorted(weights) == sorted(n for n in wrapper.param_quantizers if n.startswith("weight_"))
    for name in weights:
        q = wrapper.param_quantizers[name]
        assert q.is_active and q.axis == 0 and q.encoding.scale.numel() == getattr(model.rnn, name).shape[0]
    float_weights = sum(p.numel() for n, p in model.named_parameters() if not sim.param_quantizers()[n].is_active)
    biases = sum(p.numel() for n, p in model.named_parameters() if ".bias" in n)
    assert float_weights == biases  # the default config leaves biases float, nothing else
    # Gate and state quantizers: one set per layer and direction, whatever the sequence length.
    inner = dict(wrapper.module.recurrent_quantizers.items())
    directions = 2 if options.get("bidirectional") else 1
    per_direction = rnn_ops.STATE_QUANTIZERS[wrapper.module.kind]
    layers = model.rnn.num_layers
    assert len(inner) == layers * directions * len(per_direction) + layers - 1
    assert all(q.is_active and q.bitwidth == 8 and q.encoding is not None for q in inner.values())
    # The quantizers are in the computation: the sim differs from float, and turning them off restores float.
    with torch.no_grad():
        quantized = sim.model(*inputs)
        assert _max_diff(quantized, model(*inputs)) > 1e-4
        sim.set_activation_quantization(False)  # also switches the gate and state quantizers inside the op
        assert not any(q.enabled for q in inner.values())
        sim.set_param_quantization(False)
        assert _max_diff(sim.model(*inputs), model(*inputs)) <= 1e-5
        sim.set_activation_quantization(True)  # and back to what the config chose
        assert all(q.enabled for q in inner.values())


def test_config_rules_reach_the_inner_quantizers() -> None:
    torch.manual_seed(0)
    model = Seq(nn.LSTM).eval()
    x = _inputs(model.rnn)
    sim = lt.QuantSim(model, x, act_bw=4, param_bw=6, config={"quantize_bias": True})
    loop = sim.layers()["rnn"]
    assert {q.bitwidth for q in loop.module.recurrent_quantizers.values()} == {4}
    assert {q.bitwidth for q in loop.param_quantizers.values()} == {6}
    assert all(q.is_active for q in loop.param_quantizers.values())  # biases too, by the bias rule
    off = lt.QuantSim(model, x, config={"op_types": {"LSTM": {"output_quantized": False}}})
    assert not any(q.enabled for q in off.layers()["rnn"].module.recurrent_quantizers.values())


@pytest.mark.parametrize(
    "cls,options,per_channel",
    [(nn.LSTM, {"num_layers": 2, "bidirectional": True, "batch_first": True}, True), (nn.GRU, {}, False)],
    ids=["LSTM-2-layers-bidirectional-per-channel", "GRU-time-major"],
)
def test_onnx_export_runs_in_onnx_runtime_within_one_output_step(
    tmp_path, cls: type[nn.RNNBase], options: dict, per_channel: bool
) -> None:
    torch.manual_seed(0)

    class Head(Seq):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            return super().forward(x)[0]

    model = Head(cls, **options).eval()
    x = _inputs(model.rnn)[0]
    sim = _calibrated(model, (x,), per_channel=per_channel)
    files = sim.export(tmp_path, "rnn")
    options_ort = ort.SessionOptions()
    options_ort.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(files["onnx"]), options_ort, providers=["CPUExecutionProvider"])
    step = float(sim.layers()["head"].output_quantizers[0].scale)
    batch_axis = 0 if model.rnn.batch_first else 1
    for trial in range(2):
        # A batch-first export keeps the batch symbolic; a time-major one is fixed to the example's shape.
        shape = list(x.shape)
        shape[batch_axis] = 5 if model.rnn.batch_first and trial else shape[batch_axis]
        xt = torch.randn(shape)
        got = session.run(None, {"input": xt.numpy()})[0]
        with torch.no_grad():
            want = sim.model(xt).numpy()
        assert np.abs(got - want).max() <= step * 1.001
    # The time loop is unrolled for the example's length: another length is refused, not truncated.
    longer = list(x.shape)
    longer[1 - batch_axis] += 1
    with pytest.raises(Exception, match="(?i)dimension|reshape"):
        session.run(None, {"input": torch.randn(longer).numpy()})
    # Every active quantizer, inner ones included, is named in the encodings file, which loads back.
    enc = json.loads(files["encodings"].read_text())
    named = {q for section in enc["quantizer_names"].values() for qs in section.values() for q in qs}
    active = {n for n, q in sim.quantizers().items() if q.is_active}
    assert {n for n in active if ".recurrent_quantizers." in n} <= named <= active
    assert {f"rnn.{n}" for n in dict(model.rnn.named_parameters()) if "weight" in n} <= set(enc["param_encodings"])
    # (An output the model never uses, like the GRU's h_n here, is not in the ONNX graph nor in the file.)
    again = _calibrated(model, (torch.randn_like(x),), per_channel=per_channel)
    assert set(again.load_encodings(files["encodings"], strict=False)) == active - named
    with torch.no_grad():
        assert torch.equal(again.model(x), sim.model(x))


def test_gradients_reach_the_recurrent_weights() -> None:
    torch.manual_seed(0)
    model = Seq(nn.GRU, bidirectional=True)
    x = _inputs(model.rnn)
    sim = _calibrated(model.eval(), x)
    sim.model.train()
    sim.model(*x)[0].square().mean().backward()
    loop = sim.layers()["rnn"].module
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in loop.parameters())


def test_unsupported_constructs_raise_with_the_fix() -> None:
    model = nn.Sequential(nn.LSTM(4, 6, proj_size=3))
    with pytest.raises(TraceError, match=r"^0: LSTM with proj_size=3 .*leaf_modules=\[nn.LSTM\]"):
        lt.prepare(model, torch.randn(5, 2, 4))
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(5, 2, 4), [5, 3])
    with pytest.raises(TraceError, match="PackedSequence.*pad_packed_sequence"):
        rnn_ops.to_loop(nn.GRU(4, 6))(packed)


def test_leaf_modules_keeps_a_recurrent_layer_float() -> None:
    torch.manual_seed(0)
    model = Seq(nn.LSTM).eval()
    x = _inputs(model.rnn)
    sim = lt.QuantSim(model, x, leaf_modules=["rnn"])
    wrapper = sim.layers()["rnn"]
    assert type(wrapper.module) is nn.LSTM  # not replaced: its weights are read by torch's kernel
    assert not any(q.enabled for q in wrapper.param_quantizers.values())


def test_module_docstrings() -> None:
    result = doctest.testmod(rnn_ops, extraglobs={"torch": torch, "nn": nn})
    assert result.attempted > 0 and result.failed == 0
