"""The ``transformer`` preset on a ViT-style embedding: the class token joined to the patch embeddings by a
``torch.cat`` keeps its precision (16-bit Concat output), where an 8-bit grid over the patches' range rounds it
away (``benchmarks/vit.py``: ViT-tiny logits 16 dB with an 8-bit Concat, 30 dB with the preset)."""

from __future__ import annotations

import torch
from torch import nn

import leantorch as lt


class _Embed(nn.Module):
    """Patch embedding (large values) with a small learned class token in front, as in ViT/DeiT."""

    def __init__(self) -> None:
        super().__init__()
        self.patches = nn.Linear(16, 32)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patches(x) * 20.0  # patch values spanning about ±100
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)


def _class_token_error(config: str) -> tuple[float, int]:
    torch.manual_seed(0)
    model = _Embed().eval()
    data = [torch.randn(4, 9, 16) for _ in range(2)]
    sim = lt.QuantSim(model, data[0], config=config)
    sim.compute_encodings(data, progress=False)
    concat = [w for w in sim.layers().values() if w.op_type == "Concat"]
    assert len(concat) == 1
    with torch.no_grad():
        want, got = model(data[0])[:, 0], sim.model(data[0])[:, 0]
    return float((got - want).norm() / want.norm()), concat[0].output_quantizers[0].bitwidth


def test_transformer_preset_keeps_the_class_token_that_an_8_bit_concat_rounds_away() -> None:
    error_8, bits_8 = _class_token_error("per_channel")
    error_16, bits_16 = _class_token_error("transformer")
    assert (bits_8, bits_16) == (8, 16)
    assert error_8 > 0.9  # the class token lies within half a step of 0 on the 8-bit grid: rounded to 0
    assert error_16 < 0.05
    assert lt.QuantSimConfig.preset("transformer").rule("Concat").act_bw == 16
