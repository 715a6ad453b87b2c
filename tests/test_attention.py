"""Attention as quantizable ops: nn.MultiheadAttention, nn.TransformerEncoderLayer and
F.scaled_dot_product_attention are traced as projections, matmuls, masks and a softmax that compute torch's
function in float, get their own quantizers, and export to ONNX that ONNX Runtime runs like the sim."""

from __future__ import annotations

import doctest
import importlib
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import leantorch as lt
from leantorch.graph import op_type

from .conftest import assert_unchanged, state_snapshot

E, H, B, L, S = 12, 4, 3, 5, 7  # head_dim 3: a scale that is not a power of two


class MHANet(nn.Module):
    """Calls its attention with the masks as forward inputs (traced values) and fixed options."""

    def __init__(self, mha: nn.MultiheadAttention, mask_names: tuple[str, ...] = (), **options: Any) -> None:
        super().__init__()
        self.mha, self.mask_names, self.options = mha, mask_names, options

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, masks: tuple[torch.Tensor, ...]) -> Any:
        return self.mha(q, k, v, **dict(zip(self.mask_names, masks)), **self.options)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Any:
        return self.attend(q, k, v, ())


class MHANet1(MHANet):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, m1: torch.Tensor) -> Any:
        return self.attend(q, k, v, (m1,))


class MHANet2(MHANet):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, m1: torch.Tensor, m2: torch.Tensor) -> Any:
        return self.attend(q, k, v, (m1, m2))


#: fx gives every forward argument a placeholder, so each number of mask inputs has its own forward.
MHA_NETS = (MHANet, MHANet1, MHANet2)


def _mask(kind: str, batched: bool) -> torch.Tensor:
    """attn_mask / key_padding_mask of each kind; every query keeps at least key 0 (no fully masked row)."""
    if kind.startswith("kpm"):
        bool_mask = torch.zeros(B, S, dtype=torch.bool)
        bool_mask[1:, -3:] = True
        bool_mask = bool_mask if batched else bool_mask[1]
    else:
        shape = (B * H, L, S) if kind.endswith("3d") and batched else (H, L, S) if kind.endswith("3d") else (L, S)
        bool_mask = torch.rand(shape) < 0.4
        bool_mask[..., 0] = False
    if "bool" in kind:
        return bool_mask
    # A float mask: -inf where masked (torch's convention), a small bias elsewhere.
    return torch.randn(bool_mask.shape).mul(0.3).masked_fill(bool_mask, float("-inf"))


MHA_CASES = [
    dict(batch_first=True),
    dict(batch_first=False, average_attn_weights=False),
    dict(batch_first=True, unbatched=True, masks=("attn_bool2d",)),
    dict(batch_first=False, unbatched=True, masks=("attn_float3d", "kpm_bool"), average_attn_weights=False),
    dict(batch_first=True, kdim=10, vdim=6, masks=("kpm_bool",)),
    dict(batch_first=False, kdim=10, vdim=6, bias=False, masks=("attn_float3d", "kpm_float")),
    dict(batch_first=True, masks=("attn_bool3d", "kpm_bool"), need_weights=False),
    dict(batch_first=False, bias=False, masks=("attn_float2d",), need_weights=False),
    dict(batch_first=True, masks=("causal",), is_causal=True, need_weights=False),
    dict(batch_first=True, dropout=0.2, masks=("causal",), is_causal=True),
]


@pytest.mark.parametrize("case", MHA_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_multihead_attention_decomposition_matches_torch(case: dict[str, Any]) -> None:
    case = dict(case)
    unbatched, masks = case.pop("unbatched", False), case.pop("masks", ())
    call = {k: case.pop(k) for k in ("need_weights", "average_attn_weights", "is_causal") if k in case}
    kdim, vdim = case.get("kdim", E), case.get("vdim", E)
    mha = nn.MultiheadAttention(E, H, **case).eval()
    with torch.no_grad():  # a non-zero bias, so that splitting in_proj_bias is tested
        for p in mha.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    first = case.get("batch_first", False)
    lead = () if unbatched else (B,)

    def sequence(n: int, d: int) -> torch.Tensor:
        return torch.randn(*lead, n, d) if first or unbatched else torch.randn(n, B, d)

    query = sequence(L, E)
    key, value = (sequence(L, E), sequence(L, E)) if "causal" in masks else (sequence(S, kdim), sequence(S, vdim))
    names, tensors = [], []
    for kind in masks:
        if kind == "causal":
            names.append("attn_mask")
            tensors.append(nn.Transformer.generate_square_subsequent_mask(L))
        else:
            names.append("key_padding_mask" if kind.startswith("kpm") else "attn_mask")
            tensors.append(_mask(kind, batched=not unbatched))
    model = MHA_NETS[len(names)](mha, tuple(names), **call).eval()
    inputs = (query, key, value, *tensors)
    snapshot = state_snapshot(model)

    gm = lt.prepare(model, inputs)

    assert_unchanged(model, snapshot)
    assert type(model.mha) is nn.MultiheadAttention
    types = [op_type(m) for m in gm.modules()]
    assert "MultiheadAttention" not in types
    assert types.count("Linear") == 4 and types.count("MatMul") == 2 and types.count("Softmax") == 1
    assert types.count("AttentionMask") == len(masks)
    with torch.no_grad():
        want, got = model(*inputs), gm(*inputs)
    assert got[0].shape == want[0].shape
    assert (got[0] - want[0]).abs().max() <= 1e-5
    if call.get("need_weights", True):
        assert got[1].shape == want[1].shape
        assert (got[1] - want[1]).abs().max() <= 1e-5
    else:
        assert got[1] is None and want[1] is None


def test_multihead_attention_matches_a_float64_reference() -> None:
    # Against torch in float64 (not just against torch's float32 kernels).
    mha = nn.MultiheadAttention(E, H, batch_first=True).eval()
    model = MHANet1(mha, ("key_padding_mask",))
    x, kpm = torch.randn(B, L, E), _mask("kpm_bool", batched=True)[:, :L]
    gm = lt.prepare(model, (x, x, x, kpm))
    with torch.no_grad():
        want = MHANet1(mha.double(), ("key_padding_mask",))(x.double(), x.double(), x.double(), kpm)
        got = gm(x, x, x, kpm)
    assert (got[0].double() - want[0]).abs().max() <= 1e-5
    assert (got[1].double() - want[1]).abs().max() <= 1e-5


def test_fully_masked_rows_are_finite_and_other_rows_unchanged() -> None:
    mha = nn.MultiheadAttention(E, H, batch_first=True).eval()
    model = MHANet1(mha, ("key_padding_mask",))
    x = torch.randn(B, S, E)
    gm = lt.prepare(model, (x, x, x, _mask("kpm_bool", batched=True)))
    kpm = torch.zeros(B, S, dtype=torch.bool)
    kpm[0] = True  # batch 0 attends to nothing: torch gives NaN there
    with torch.no_grad():
        got, want = gm(x, x, x, kpm)[0], model(x, x, x, kpm)[0]
    assert torch.isfinite(got).all()
    assert (got[1:] - want[1:]).abs().max() <= 1e-5


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("norm_first,masks", [(False, False), (True, True), (False, True)])
def test_transformer_encoder_layer_matches_torch_fast_path(batch_first: bool, norm_first: bool, masks: bool) -> None:
    # In eval, torch runs a fused kernel (batch_first) or the reference path; prepare traces the reference
    # path, which must give the same results either way.
    layer = nn.TransformerEncoderLayer(
        16, 4, dim_feedforward=24, batch_first=batch_first, norm_first=norm_first, activation="gelu"
    )

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x)

    class MaskedNet(Net):
        def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
            causal = nn.Transformer.generate_square_subsequent_mask(6)
            return self.layer(x, src_mask=causal, src_key_padding_mask=padding, is_causal=True)

    model = (MaskedNet() if masks else Net()).eval()
    x = torch.randn(B, 6, 16) if batch_first else torch.randn(6, B, 16)
    padding = torch.zeros(B, 6, dtype=torch.bool)
    padding[1, -2:] = True
    inputs = (x, padding) if masks else (x,)
    snapshot = state_snapshot(model)
    gm = lt.prepare(model, inputs)
    assert_unchanged(model, snapshot)
    with torch.no_grad():
        diff = (gm(*inputs) - model(*inputs)).abs().max()
    assert diff <= 1e-5
    assert {"Linear", "MatMul", "Softmax", "GELU", "LayerNorm", "Add"} <= {op_type(m) for m in gm.modules()}


class SDPANet(nn.Module):
    """Self-attention written with F.scaled_dot_product_attention (as in many LLM codebases)."""

    def __init__(self, dim: int = 16, heads: int = 4, kv_heads: int = 4, **options: Any) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.options = heads, kv_heads, options
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim // heads * kv_heads)
        self.proj = nn.Linear(dim, dim)

    def attend(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, d = x.shape
        q = self.q(x).reshape(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.kv(x).reshape(b, n, 2, self.kv_heads, -1).permute(2, 0, 3, 1, 4)
        options = self.options if mask is None else dict(self.options, attn_mask=mask)
        out = F.scaled_dot_product_attention(q, k, v, **options)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(x, None)


class MaskedSDPANet(SDPANet):
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.attend(x, mask)


@pytest.mark.parametrize(
    "options,mask",
    [
        ({}, None),
        ({"is_causal": True}, None),
        ({"scale": 0.3}, "bool"),
        ({}, "float"),
        ({"is_causal": True, "enable_gqa": True, "kv_heads": 2}, None),
    ],
)
def test_sdpa_decomposition_matches_torch(options: dict[str, Any], mask: str | None) -> None:
    model = (SDPANet if mask is None else MaskedSDPANet)(**options).eval()
    x = torch.randn(B, 6, 16)
    inputs: tuple[torch.Tensor, ...] = (x,)
    if mask is not None:
        keep = torch.rand(B, 1, 6, 6) < 0.7
        keep[..., 0] = True
        inputs = (x, keep if mask == "bool" else torch.zeros(keep.shape).masked_fill(~keep, float("-inf")))
    gm = lt.prepare(model, inputs)
    assert F.scaled_dot_product_attention not in {n.target for n in gm.graph.nodes}
    types = [op_type(m) for m in gm.modules()]
    assert types.count("MatMul") == 2 and types.count("Softmax") == 1 and types.count("Mul") == 1
    assert types.count("AttentionMask") == (mask is not None or bool(options.get("is_causal")))
    with torch.no_grad():
        assert (gm(*inputs) - model(*inputs)).abs().max() <= 1e-5


def test_sdpa_decides_a_traced_is_causal_on_the_example_and_refuses_dropout() -> None:
    class TracedCausal(nn.Module):
        # Common in decoder code: causal only when there is more than one query (a bool at run time, but a
        # traced value while tracing): decided on the example input, as a branch is.
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(x, x, x, is_causal=x.size(-2) > 1)

    x = torch.randn(1, 2, 4, 8)
    gm = lt.prepare(TracedCausal(), x)
    with torch.no_grad():
        assert torch.allclose(gm(x), F.scaled_dot_product_attention(x, x, x, is_causal=True), atol=1e-6)
    with pytest.raises(lt.TraceError, match="dropout_p"):
        lt.prepare(SDPANet(dropout_p=0.1), torch.randn(1, 4, 16), verify=False)


@pytest.mark.parametrize("option", ["add_bias_kv", "add_zero_attn"])
def test_unsupported_options_raise_and_leaf_modules_keep_them_float(option: str) -> None:
    model = MHANet(nn.MultiheadAttention(E, H, batch_first=True, **{option: True})).eval()
    x = torch.randn(B, L, E)
    with pytest.raises(lt.TraceError, match=rf"mha: .*{option}=True.*leaf_modules"):
        lt.prepare(model, (x, x, x))
    gm = lt.prepare(model, (x, x, x), leaf_modules=[nn.MultiheadAttention])
    assert isinstance(gm.get_submodule("mha"), nn.MultiheadAttention)
    with torch.no_grad():
        assert torch.equal(gm(x, x, x)[0], model(x, x, x)[0])


class EncoderNet(nn.Module):
    """Embedding, an encoder layer with a padding mask input, a causal SDPA block, mean pooling, head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.encoder = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, batch_first=True)
        self.causal = SDPANet(is_causal=True)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(x), src_key_padding_mask=padding)
        return self.head(self.causal(h).mean(dim=1))


def _padding(batch: int, fully_masked: bool = False) -> torch.Tensor:
    padding = torch.zeros(batch, 7, dtype=torch.bool)
    padding[1::2, -3:] = True
    if fully_masked:
        padding[0] = True
    return padding


def test_quantsim_quantizes_every_attention_op_and_onnx_matches(tmp_path) -> None:
    model = EncoderNet().eval()
    data = [(torch.randn(8, 7, 6), _padding(8)) for _ in range(3)]
    sim = lt.QuantSim(model, data[0], param_bw=8, act_bw=8, per_channel=True)

    layers = sim.layers()
    # No attention weight stays float: every weight of the sim has an active quantizer, the projections are
    # Linear layers quantized per channel, and the packed in_proj_weight is gone.
    weights = [n for n, _ in sim.model.named_parameters() if n.endswith(".weight")]
    assert not any("in_proj" in n for n in weights) and len(weights) > 10
    assert all(layers[n.removesuffix(".module.weight")].param_quantizers["weight"].is_active for n in weights)
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        weight = layers[f"encoder.self_attn.{name}"].param_quantizers["weight"]
        assert weight.is_active and weight.axis == 0
    active_outputs = {n for n, w in layers.items() if any(q.is_active for q in w.output_quantizers)}
    for block in ("encoder.self_attn", "causal"):
        assert {f"{block}.matmul", f"{block}.mul", f"{block}.softmax", f"{block}.matmul_1"} <= active_outputs
    masks = [n for n, w in layers.items() if w.op_type == "AttentionMask"]
    # Masked scores hold the lowest float: a quantizer there would have to span it (see ops/attention.py).
    mask_quantizers = [q for n in masks for q in [*layers[n].input_quantizers, *layers[n].output_quantizers]]
    assert len(masks) == 2 and not any(q.is_active for q in mask_quantizers)

    # Quantization off: the sim is the float model.
    x, padding = torch.randn(16, 7, 6), _padding(16)
    sim.set_param_quantization(False)
    sim.set_activation_quantization(False)
    with torch.no_grad():
        assert (sim.model(x, padding) - model(x, padding)).abs().max() <= 1e-5
    sim.set_param_quantization(True)
    sim.set_activation_quantization(True)

    sim.compute_encodings(data, progress=False)
    files = sim.export(tmp_path, "encoder")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(files["onnx"]), options, providers=["CPUExecutionProvider"])
    step = float(layers["head"].output_quantizers[0].scale)
    for fully_masked in (False, True):
        padding = _padding(16, fully_masked)
        got = session.run(None, {"input0": x.numpy(), "input1": padding.numpy()})[0]
        with torch.no_grad():
            want = sim.model(x, padding).numpy()
        assert np.isfinite(got).all() and np.isfinite(want).all()
        assert np.abs(got - want).max() <= step * 1.001


def test_docstring_examples_run() -> None:
    module = importlib.import_module("leantorch.ops.attention")
    result = doctest.testmod(module, extraglobs={"torch": torch, "nn": nn})
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize("nested,float_mask", [(True, False), (True, True), (False, False)])
def test_transformer_encoder_stack_matches_torch_nested_path(nested: bool, float_mask: bool) -> None:
    # fx keeps torch.nn containers opaque; the encoder is replaced so its layers are traced into. In inference
    # torch's nested-tensor path returns zeros at padded positions, which the decomposition reproduces.
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(16), enable_nested_tensor=nested)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
            return self.encoder(x, src_key_padding_mask=padding)

    model = Net().eval()
    x, padding = torch.randn(B, 6, 16), torch.zeros(B, 6, dtype=torch.bool)
    padding[1, -2:] = True
    if float_mask:
        padding = torch.zeros(B, 6).masked_fill(padding, float("-inf"))
    gm = lt.prepare(model, (x, padding))
    types = [op_type(m) for m in gm.modules()]
    assert "TransformerEncoder" not in types and types.count("Linear") == 2 * 6 and types.count("Softmax") == 2
    with torch.no_grad():
        assert (gm(x, padding) - model(x, padding)).abs().max() <= 1e-5
