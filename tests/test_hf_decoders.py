"""Hugging Face decoders (GPT-2, OPT) trace as the library gives them and export (:mod:`leantorch.hf_support`).

Tiny random configs; skipped when ``transformers`` is not installed.
"""

from __future__ import annotations

import doctest
import importlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import leantorch as lt
from leantorch.hf_support import cache_as_tensors, is_kv_cache, tracing_without_cache

transformers = pytest.importorskip("transformers")


def _gpt2(tied: bool = True) -> nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=100,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=tied,
    )
    return transformers.GPT2LMHeadModel(config).eval()


def _opt() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.OPTConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        ffn_dim=64,
        word_embed_proj_dim=32,
        max_position_embeddings=32,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    )
    return transformers.OPTForCausalLM(config).eval()


def _tokens(seed: int, batch: int = 2, length: int = 8) -> torch.Tensor:
    return torch.randint(2, 100, (batch, length), generator=torch.Generator().manual_seed(seed))


class _Logits(nn.Module):
    """What a user writes: token ids and mask in, logits out (the model's cache default, use_cache=True)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits  # type: ignore[no-any-return]


@pytest.mark.parametrize("build", [_gpt2, _opt], ids=["gpt2", "opt"])
def test_decoder_traces_as_given_without_the_cache(build: Any) -> None:
    model = build()
    assert model.config.use_cache
    ids = _tokens(0)
    gm = lt.prepare(model, (ids,))
    assert model.config.use_cache  # restored on the user's model (prepare traces a copy anyway)
    other = _tokens(1, batch=3)  # another batch size: the graph is not specialised to the example's
    with torch.no_grad():
        assert torch.allclose(gm(other)["logits"], model(other).logits, atol=1e-5)
    # No cache bookkeeping in the graph: no concatenation with the cache's empty placeholder.
    assert not any("cat" in str(n.target) for n in gm.graph.nodes)


def test_an_explicit_cache_is_returned_as_key_value_tensors() -> None:
    model = _gpt2()

    class WithCache(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
            out = self.model(input_ids=input_ids, use_cache=True)
            return out.logits, out.past_key_values

    ids = _tokens(0)
    gm = lt.prepare(WithCache().eval(), (ids,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' deprecation note on the past_key_values name
        with torch.no_grad():
            logits, cache = gm(ids)
            want_logits, want_cache = WithCache().eval()(ids)
    assert is_kv_cache(want_cache) and not is_kv_cache(cache)
    assert torch.allclose(logits, want_logits, atol=1e-5)
    assert len(cache) == 2
    for (key, value), (want_key, want_value) in zip(cache, cache_as_tensors(want_cache)):
        assert torch.allclose(key, want_key, atol=1e-5) and torch.allclose(value, want_value, atol=1e-5)


def test_tracing_without_cache_restores_the_config_after_an_error() -> None:
    model = _gpt2()
    with pytest.raises(RuntimeError), tracing_without_cache(model):
        assert not model.config.use_cache
        raise RuntimeError("boom")
    assert model.config.use_cache


def test_cache_as_tensors_refuses_an_unknown_layout() -> None:
    with pytest.raises(TypeError, match="unknown key/value cache layout"):
        cache_as_tensors(object())


def _ort_steps(model: nn.Module, tmp_path: Path) -> float:
    """Max |ONNX Runtime (graph optimizations off) - sim.model| on held-out tokens, in output steps."""
    wrapped = _Logits(model).eval()
    x = (_tokens(0), torch.ones(2, 8, dtype=torch.long))
    sim = lt.QuantSim(wrapped, x, per_channel=True)
    sim.compute_encodings([(_tokens(10 + i, 4), torch.ones(4, 8, dtype=torch.long)) for i in range(2)], progress=False)
    files = sim.export(tmp_path, "decoder")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(files["onnx"]), options, providers=["CPUExecutionProvider"])
    held_out = (_tokens(99, 4), torch.ones(4, 8, dtype=torch.long))
    names = [i.name for i in session.get_inputs()]
    got = session.run(None, {n: t.numpy() for n, t in zip(names, held_out)})[0]
    with torch.no_grad():
        want = sim.model(*held_out).numpy()
    step = float(sim.model.get_submodule("model.lm_head").output_quantizers[0].scale)
    return float(np.abs(got - want).max()) / step


def test_gpt2_exports_and_onnx_runtime_matches_the_sim(tmp_path: Path) -> None:
    # The wrapper calls the model with its default use_cache=True: the export used to fail on the cache's
    # concatenation with an empty 1-D placeholder ("All tensors must have the same rank").
    assert _ort_steps(_gpt2(tied=False), tmp_path) <= 1.001


def test_gpt2_tied_lm_head_weight_is_exported_on_its_own_grid(tmp_path: Path) -> None:
    # The export snaps each quantized weight onto its grid in place: a tied weight (lm_head = wte) was snapped by
    # both quantizers, leaving lm_head off its own grid (3 output steps ORT vs sim); now each gets its own copy.
    model = _gpt2(tied=True)
    x = (_tokens(0), torch.ones(2, 8, dtype=torch.long))
    sim = lt.QuantSim(_Logits(model).eval(), x, per_channel=True)
    sim.compute_encodings([x], progress=False)
    files = sim.export(tmp_path, "decoder")
    proto = onnx.load(str(files["onnx"]))
    initializers = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    dequantize = next(
        n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.output[0].startswith("/lm_head/")
    )
    quantize = next(n for n in proto.graph.node if n.output[0] == dequantize.input[0])
    weight, scale, zero = (initializers[name].astype(np.float64) for name in quantize.input)
    scale, zero = scale[:, None], zero[:, None]  # per output channel (axis 0)
    exported = (np.clip(np.round(weight / scale) + zero, -128, 127) - zero) * scale
    lm_head = sim.model.get_submodule("model.lm_head")
    with torch.no_grad():
        want = lm_head.param_quantizers["weight"](lm_head.module.weight).double().numpy()
    assert np.abs(exported - want).max() <= 1e-6


def test_docstring_examples_run() -> None:
    module = importlib.import_module("leantorch.hf_support")
    result = doctest.testmod(module, extraglobs={"torch": torch, "nn": nn})
    assert result.failed == 0 and result.attempted > 0
