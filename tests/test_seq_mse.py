"""Sequential MSE: the closed-form candidate errors equal a brute-force output MSE, the choice is the best
candidate, and the end-to-end flow returns weights on the chosen (frozen) grids."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import leantorch as lt
from leantorch.errors import InvalidOptionError
from leantorch.ptq.seq_mse import candidate_errors, seq_mse_search
from leantorch.quant.encoding import compute_encoding


def _brute_force(w: torch.Tensor, x: torch.Tensor, xq: torch.Tensor, enc, n: int) -> torch.Tensor:
    """Per candidate and output channel: mean over samples of (W x − W̃ x̂)², in float64, minus the same with
    W̃ = W (the constant the closed form drops)."""
    errors = []
    lo, hi = (w.amin(1), w.amax(1)) if enc.axis is not None else (w.min(), w.max())
    base = ((w @ x - w @ xq) ** 2).mean(1)
    for i in range(1, n + 1):
        cand = compute_encoding(
            lo * i / n, hi * i / n, enc.bitwidth, enc.symmetric, unsigned_symmetric=not enc.is_signed, axis=enc.axis
        )
        s = cand.scale.double().reshape(-1, 1) if enc.axis is not None else cand.scale.double()
        o = cand.offset.double().reshape(-1, 1) if enc.axis is not None else cand.offset.double()
        wq = s * (torch.clamp(torch.round(w / s) - o, 0, cand.num_steps) + o)
        errors.append(((w @ x - wq @ xq) ** 2).mean(1) - base)
    return torch.stack(errors)


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("same_inputs", [True, False])
def test_candidate_errors_equal_brute_force_output_mse(per_channel: bool, symmetric: bool, same_inputs: bool) -> None:
    gen = torch.Generator().manual_seed(int(per_channel) + 2 * int(symmetric) + 4 * int(same_inputs))
    f64 = torch.float64
    w = torch.randn(6, 12, generator=gen, dtype=f64) * torch.linspace(0.2, 3, 6, dtype=f64)[:, None]
    x = torch.randn(12, 400, generator=gen, dtype=f64) * torch.linspace(0.1, 2, 12, dtype=f64)[:, None]
    xq = x if same_inputs else x + 0.05 * torch.randn(12, 400, generator=gen, dtype=torch.float64)
    axis = 0 if per_channel else None
    lo, hi = (w.amin(1), w.amax(1)) if per_channel else (w.min(), w.max())
    enc = compute_encoding(lo, hi, 4, symmetric, axis=axis)
    gram = xq @ xq.T / 400
    target = w @ (x @ xq.T / 400)
    closed, _ = candidate_errors(w[None], gram[None], target[None], enc, 10)
    assert torch.allclose(closed[:, 0], _brute_force(w, x, xq, enc, 10), rtol=1e-9, atol=1e-12)


def test_search_picks_each_channels_best_candidate_and_beats_the_full_range() -> None:
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(1, 5, 20, generator=gen)
    w[0, :, 3] *= 10  # heavy columns the data barely uses: clipping them costs little
    x = torch.randn(20, 600, generator=gen)
    x[3] *= 0.01
    gram = (x @ x.T / 600)[None]
    full = compute_encoding(w.amin((0, 2)), w.amax((0, 2)), 4, symmetric=True, axis=0)
    errors, encodings = candidate_errors(w, gram, w @ gram, full, 20)
    chosen = seq_mse_search(w, gram, w @ gram, full, 20)
    best = errors[:, 0].argmin(0)
    for c in range(5):
        assert float(chosen.scale[c]) == float(encodings[int(best[c])].scale[c])
    assert bool((errors[:, 0].min(0).values <= errors[-1, 0]).all())  # never worse than α = 1 (the full range)
    assert bool((chosen.scale < full.scale).any())


def test_per_tensor_search_minimises_the_summed_error() -> None:
    gen = torch.Generator().manual_seed(6)
    w = torch.randn(1, 4, 16, generator=gen)
    x = torch.randn(16, 300, generator=gen)
    gram = (x @ x.T / 300)[None]
    enc = compute_encoding(w.min(), w.max(), 3, symmetric=False)
    errors, encodings = candidate_errors(w, gram, w @ gram, enc, 15)
    chosen = seq_mse_search(w, gram, w @ gram, enc, 15)
    assert chosen.axis is None
    assert float(chosen.scale) == float(encodings[int(errors.sum((1, 2)).argmin())].scale)


@pytest.mark.slow
@pytest.mark.parametrize("inputs", ["symqt", "asym", "symfp"])
def test_seq_mse_end_to_end_weights_on_frozen_grids_and_better_than_nearest(tmp_path, inputs: str) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, groups=4, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 8 * 8, 10),
    ).eval()
    with torch.no_grad():
        net[0].weight[:, :, 0, 0] *= 6  # outlier weights: the full range wastes 4-bit steps on them
    data = [torch.randn(16, 3, 8, 8) for _ in range(4)]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    chosen, path = lt.seq_mse(
        net, data[0][:1], data, param_bw=4, act_bw=8, inputs=inputs, path=tmp_path, progress=False
    )
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # the input model is untouched
    sim = lt.QuantSim(chosen, data[0][:1], param_bw=4, act_bw=8, per_channel=True)
    sim.set_and_freeze_param_encodings(path)
    sim.compute_encodings(data, progress=False)
    for name, q in sim.param_quantizers().items():
        if name.endswith("weight") and q.is_active:
            layer = name.rpartition(".")[0]
            weight = sim.layers()[layer].module.weight.detach()
            assert torch.equal(q(weight), weight), name  # on its grid: quantizing changes nothing
    nearest = lt.QuantSim(net, data[0][:1], param_bw=4, act_bw=8, per_channel=True, param_scheme="minmax")
    nearest.compute_encodings(data, progress=False)
    test = torch.randn(64, 3, 8, 8)
    with torch.no_grad():
        ref = net(test)
        err_seq = (sim.model(test) - ref).pow(2).mean()
        err_rtn = (nearest.model(test) - ref).pow(2).mean()
    assert float(err_seq) < float(err_rtn)


def test_seq_mse_refuses_bad_options(tmp_path) -> None:
    net = nn.Sequential(nn.Linear(4, 4)).eval()
    data = [torch.randn(8, 4)]
    with pytest.raises(InvalidOptionError, match="inputs"):
        lt.seq_mse(net, data[0][:1], data, inputs="both", path=tmp_path, progress=False)
    with pytest.raises(InvalidOptionError, match="num_candidates"):
        lt.seq_mse(net, data[0][:1], data, num_candidates=0, path=tmp_path, progress=False)
