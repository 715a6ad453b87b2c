"""Scores plus an attention mask built from the model's integer inputs (Hugging Face eager attention) is an
AttentionMask, not a quantized Add: GPT-Neo's masked score plus the mask's lowest value is -inf."""

from __future__ import annotations

import torch
from torch import nn

import leantorch as lt
from leantorch.ops.attention_mask import AttentionMask


class _MaskedScores(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        scores = self.q(x) @ x.transpose(1, 2)  # (B, L, L)
        lowest = torch.finfo(scores.dtype).min
        causal = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril()
        scores = torch.where(causal, scores, torch.tensor(lowest))  # GPT-Neo's causal fill
        additive = (1.0 - attention_mask[:, None, :].to(scores.dtype)) * lowest  # from the integer input only
        return torch.softmax(scores + additive, dim=-1) @ x + x * 0.5


def test_an_additive_mask_add_is_an_attention_mask_and_calibrates() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    model = _MaskedScores().eval()
    with torch.no_grad():
        assert torch.isinf(model.q(x) @ x.transpose(1, 2) + torch.finfo(torch.float32).min * 2).any()
    sim = lt.QuantSim(model, (x, mask))
    kinds = {name: type(w.module).__name__ for name, w in sim.layers().items()}
    masks = [w.module for w in sim.layers().values() if isinstance(w.module, AttentionMask)]
    assert len(masks) == 1 and masks[0].kind == "additive", kinds
    sim.compute_encodings([(x, mask)], progress=False)  # used to raise: the Add's output held -inf
    with torch.no_grad():
        assert torch.isfinite(sim.model(x, mask)).all()
        for q in sim.quantizers().values():
            q.enabled = False
        assert torch.allclose(sim.model(x, mask), model(x, mask), atol=1e-5)  # the mask op computes the same
    # the mask's own arithmetic ((1 - m) * lowest) stays unquantized function calls; the residual add is an Add
    assert sorted(w.op_type for w in sim.layers().values()) == sorted(
        ["Linear", "MatMul", "AttentionMask", "Softmax", "MatMul", "Mul", "Add"]
    )
