"""Modules called in a forward without being submodules of the model: stateless ones (a global function wrapped in
an ``nn.Module``, as the ``kernels`` package does to Llama's ``apply_rotary_pos_emb``; an ``nn.GELU()`` built
inline) are traced into; one with weights still raises :class:`leantorch.TraceError`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import leantorch as lt


class _Rotate(nn.Module):
    """A function in a module's clothes, as a global (never a submodule of any model)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-x[..., 1::2], x[..., ::2]], dim=-1) * 0.5


_rotate = _Rotate()


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.GELU()(_rotate(self.fc(x)))  # both modules unregistered, neither holds state


def test_stateless_modules_outside_the_model_are_traced_into() -> None:
    torch.manual_seed(0)
    model, x = _Net().eval(), torch.randn(3, 8)
    gm = lt.prepare(model, x)
    other = torch.randn(5, 8)
    assert torch.allclose(gm(other), model(other), atol=1e-6)
    # Their operations are in the graph (the GELU became leantorch's op, with its quantizer in a QuantSim).
    assert "GELU" in {type(m).__name__ for m in gm.modules()}
    sim = lt.QuantSim(model, x)
    assert "GELU" in {w.op_type for w in sim.layers().values()}


def test_a_module_with_weights_outside_the_model_is_still_refused() -> None:
    outside = nn.Linear(8, 8)

    class Net(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return outside(x)

    with pytest.raises(lt.TraceError, match="not installed as a submodule"):
        lt.prepare(Net().eval(), torch.randn(2, 8))


def test_llama_traces_as_given() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    gm = lt.prepare(model, (ids,))
    other = torch.randint(0, 100, (3, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(gm(other)["logits"], model(other).logits, atol=1e-5)
