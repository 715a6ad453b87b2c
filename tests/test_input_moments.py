"""The exact AdaRound objective from input second moments equals the direct average over all positions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from leantorch.ptq.input_moments import InputMoments, factorize, grouped_weight, supports_moments

LAYERS = {
    "conv2d strided, padded, dilated": lambda: nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2),
    "conv2d grouped": lambda: nn.Conv2d(4, 6, (3, 1), groups=2, padding=(1, 0)),
    "depthwise": lambda: nn.Conv2d(4, 4, 3, groups=4, padding=1),
    "conv1d": lambda: nn.Conv1d(4, 5, 3, stride=2, padding=1),
    "linear on tokens": lambda: nn.Linear(4, 3),
}


def _input(layer: nn.Module, n: int) -> torch.Tensor:
    shape = {nn.Conv2d: (n, 4, 9, 7), nn.Conv1d: (n, 4, 11), nn.Linear: (n, 5, 4)}[type(layer)]
    return torch.randn(*shape, dtype=torch.float64)


def _direct(layer: nn.Module, w: torch.Tensor, x: torch.Tensor, w_hat: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Mean over samples and positions of the output error summed over channels (float64)."""

    def run(weight: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        if isinstance(layer, nn.Linear):
            return nn.functional.linear(inp, weight)
        return layer._conv_forward(inp, weight, None)

    err = run(w, x) - run(w_hat, x_hat)
    channel_dim = -1 if isinstance(layer, nn.Linear) else 1
    return float(err.pow(2).sum(channel_dim).mean())


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("asymmetric", [False, True])
def test_factorized_objective_equals_direct_average_float64(name: str, asymmetric: bool) -> None:
    torch.manual_seed(0)
    layer = LAYERS[name]().double()
    assert supports_moments(layer)
    w = layer.weight.detach()
    w_hat = w + 0.1 * torch.randn_like(w)
    xs = [_input(layer, 3), _input(layer, 2)]  # batches of different sizes: weighting by positions
    x_hats = [x + 0.2 * torch.randn_like(x) for x in xs] if asymmetric else xs
    moments = InputMoments(layer)
    for x, x_hat in zip(xs, x_hats):
        moments.add(x, x_hat if asymmetric else None)
    a, b = factorize(moments.second_moment(), split=asymmetric)
    factorized = (
        (
            grouped_weight(layer, w).float() @ a.transpose(1, 2)
            - grouped_weight(layer, w_hat).float() @ b.transpose(1, 2)
        )
        .pow(2)
        .sum()
    )
    expected = _direct(layer, w, torch.cat(xs), w_hat, torch.cat(x_hats))
    assert float(factorized) == pytest.approx(expected, rel=1e-4)


def test_rank_is_cut_to_what_the_data_spans() -> None:
    """Fewer positions than inputs (a Linear on a few samples): the factor has only that many rows."""
    layer = nn.Linear(50, 3)
    moments = InputMoments(layer)
    moments.add(torch.randn(7, 50))
    a, b = factorize(moments.second_moment(), split=False)
    assert a.shape == (1, 7, 50) and a is b


def test_unsupported_layers_are_reported() -> None:
    assert not supports_moments(nn.ConvTranspose2d(3, 3, 3))
    assert not supports_moments(nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"))
