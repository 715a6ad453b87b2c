"""prepare() traces Python control flow on shapes and dtypes the way the example input goes (Hugging Face style code),
keeps shapes symbolic where it can, and still refuses branches on the input's values."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import leantorch as lt


class ShapeChecks(nn.Module):
    """Shape/dtype checks and arithmetic of the kind transformers' models are full of."""

    def __init__(self) -> None:
        super().__init__()
        self.channels = 3
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 4)

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False, **kwargs) -> torch.Tensor:
        kwargs["seen"] = True  # a plain dict while tracing, not a proxy
        if pixel_values.shape[1] != self.channels:  # a check on a shape
            raise ValueError("wrong number of channels")
        height = int(pixel_values.shape[-2])  # "TF same" padding computed in Python from the input size
        pad = max(3 - (height % 1 or 1), 0) // 2
        x = self.conv(F.pad(pixel_values, (pad, pad, pad, pad)))
        hidden = () if output_hidden_states else None  # a default argument, a real bool
        b, c, h, w = x.shape  # unpacking a shape stays symbolic
        x = x.reshape(b, c, h * w).mean(-1)
        x = self.fc(x).masked_fill(torch.zeros(b, 4, dtype=torch.bool), torch.finfo(x.dtype).min)
        return x if hidden is None else x + 0


def _decorated(forward):
    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):  # as transformers' @can_return_tuple: fx cannot re-parse this signature
        return forward(self, *args, **kwargs)

    return wrapper


class Decorated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    @_decorated
    def forward(self, x, mask=None, past=None, use_cache=False, output_attentions=False, return_dict=None):
        return self.fc(x)


def test_shape_branches_defaults_and_kwargs_trace_and_follow_the_batch_size() -> None:
    torch.manual_seed(0)
    model = ShapeChecks().eval()
    gm = lt.prepare(model, torch.randn(2, 3, 8, 8))
    for batch in (1, 5):  # the traced graph is not fixed to the example's batch size
        x = torch.randn(batch, 3, 8, 8)
        with torch.no_grad():
            assert torch.allclose(gm(x), model(x), atol=1e-6)
    sim = lt.QuantSim(model, torch.randn(2, 3, 8, 8))
    sim.compute_encodings([torch.randn(6, 3, 8, 8)], progress=False)
    assert math.isfinite(float(sim.model(torch.randn(3, 3, 8, 8)).abs().max()))


def test_a_decorated_forward_with_many_defaults_traces() -> None:
    model = Decorated().eval()
    x = torch.randn(3, 4)
    gm = lt.prepare(model, x)
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))
    assert [n.name for n in gm.graph.nodes if n.op == "placeholder"] == ["x"]


class ValueBranch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = float(x.abs().max())  # depends on the input's values: not the same for every input
        return x / scale


def test_control_flow_on_input_values_is_still_refused() -> None:
    with pytest.raises(lt.TraceError, match="float"):
        lt.prepare(ValueBranch(), torch.randn(2, 4))


class WindowPad(nn.Module):
    """Swin's padding to a multiple of the window size, computed from the input's size."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, h, w, c)
        _, height, width, _ = x.shape
        pad_h, pad_w = (3 - height % 3) % 3, (3 - width % 3) % 3
        return self.proj(F.pad(x, (0, 0, 0, pad_w, 0, pad_h)))


class BufferedIds(nn.Module):
    """BERT's token-type ids: a buffer sliced to the sequence length and expanded to the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("token_type_ids", torch.zeros(1, 32, dtype=torch.long), persistent=False)
        self.embed = nn.Embedding(2, 8)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        batch_size, seq_length = input_ids.shape
        token_type_ids = self.token_type_ids[:, :seq_length].expand(batch_size, seq_length)
        return self.embed(token_type_ids) + input_ids.unsqueeze(-1)


@pytest.mark.parametrize(
    "make, example, other",
    [
        (WindowPad, torch.randn(2, 7, 8, 4), torch.randn(3, 7, 8, 4)),
        (BufferedIds, torch.randn(2, 10), torch.randn(5, 10)),
    ],
)
def test_sizes_computed_from_the_input_stay_in_the_graph(make, example, other) -> None:
    model = make().eval()
    gm = lt.prepare(model, example)
    with torch.no_grad():
        assert torch.allclose(gm(other), model(other), atol=1e-6)
    sim = lt.QuantSim(model, example)
    sim.compute_encodings([other], progress=False)
    assert float((sim.model(other) - model(other)).abs().max()) < 0.1


def test_an_empty_tensor_is_skipped_by_calibration(tmp_path) -> None:
    class EmptyCache(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            past = torch.zeros(x.shape[0], 0, x.shape[2])  # an empty cache (not on any grid), concatenated in front
            return self.fc(torch.cat([past, x], dim=1))

    x = torch.randn(2, 3, 4)
    sim = lt.QuantSim(EmptyCache().eval(), x)
    empty = [q for q in sim.quantizers().values() if q.is_active]
    sim.compute_encodings([x], progress=False)
    # a quantizer that only ever saw the empty cache is switched off; every other one has its encoding
    assert all(q.encoding is not None for q in sim.quantizers().values() if q.is_active)
    assert any(not q.is_active for q in empty)
    with torch.no_grad():
        assert torch.isfinite(sim.model(x)).all()
    files = sim.export(tmp_path, "empty")
    assert files["onnx"].exists()


class GPT2Conv1D(nn.Module):
    """transformers.pytorch_utils.Conv1D: a dense layer with its weight stored (in, out), applied with addmm."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.1)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size_out = x.size()[:-1] + (self.nf,)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)


class GPT2MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c_fc, self.c_proj = GPT2Conv1D(16, 8), GPT2Conv1D(8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(torch.relu(self.c_fc(x)))


def test_gpt2_conv1d_becomes_a_quantized_transposed_linear(tmp_path) -> None:
    import numpy as np
    import onnxruntime as ort

    torch.manual_seed(0)
    model, x = GPT2MLP().eval(), torch.randn(2, 5, 8)
    gm = lt.prepare(model, x)
    assert [type(m).__name__ for m in gm.modules()].count("TransposedLinear") == 2
    other = torch.randn(3, 5, 8)
    with torch.no_grad():
        assert torch.allclose(gm(other), model(other), atol=1e-6)
    sim = lt.QuantSim(model, x, per_channel=True)
    sim.compute_encodings([torch.randn(8, 5, 8)], progress=False)
    for name in ("c_fc", "c_proj"):
        q = sim.layers()[name].param_quantizers["weight"]
        assert q.is_active and q.axis == 1  # per output channel: axis 1 of an (in, out) weight
    files = sim.export(tmp_path, "gpt2_mlp")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    got = ort.InferenceSession(str(files["onnx"]), options, providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()}
    )[0]
    with torch.no_grad():
        want = sim.model(x).numpy()
    assert np.abs(got - want).max() <= float(sim.layers()["c_proj"].output_quantizers[0].scale) * 1.001
