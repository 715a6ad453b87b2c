"""GPTQ choosing each output channel's grid among shrunk ranges (``GptqConfig.clip_ratios``)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

import leantorch as lt
from leantorch.ptq.gptq import gptq_grid_search, gptq_round
from leantorch.ptq.seq_mse import shrunk_encodings
from leantorch.quant.blocks import blockwise_encoding, to_block_rows
from leantorch.quant.encoding import Encoding, compute_encoding

from .test_gptq import _net as small_conv_net

RATIOS = (1.0, 0.85, 0.7, 0.55, 0.4)


def _layer_case(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Heavy-tailed weights ``[2 groups, 6 rows, 64]`` (where clipping pays at 3 bits) and correlated inputs' Gram."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(2, 6, 64, generator=gen) / torch.rand(2, 6, 64, generator=gen).clamp(min=0.05).sqrt()
    mix = torch.randn(2, 64, 64, generator=gen)
    x = mix @ torch.randn(2, 64, 400, generator=gen)
    return w, x @ x.transpose(1, 2) / 400


def _encoding(w: torch.Tensor, kind: str, symmetric: bool) -> Encoding:
    flat = w.reshape(-1, w.shape[-1])
    if kind == "tensor":
        return compute_encoding(flat.min(), flat.max(), 3, symmetric)
    if kind == "channel":
        return compute_encoding(flat.amin(1), flat.amax(1), 3, symmetric, axis=0)
    blocks = to_block_rows(flat, 0, 1, 8)
    rows = compute_encoding(blocks.amin(1), blocks.amax(1), 3, symmetric, axis=0)
    return blockwise_encoding(rows, flat.shape[0], 8, 1)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("kind", ["tensor", "channel", "block"])
def test_each_row_is_the_best_of_separate_gptq_runs_on_each_shrunk_grid(kind: str, symmetric: bool) -> None:
    """The batched search equals running GPTQ once per candidate grid and keeping, per output channel (per
    tensor: overall), the rounding with the least damped-Hessian error, computed here in float64 from scratch."""
    w, h = _layer_case(1)
    enc = _encoding(w, kind, symmetric)
    shape = (12, 64)
    damping = 0.05
    got, chosen = gptq_grid_search(w, h, enc, RATIOS, damping, block_size=4, weight_shape=shape, act_order=True)

    damped = h.double() + damping * h.double().diagonal(dim1=1, dim2=2).mean(-1)[:, None, None] * torch.eye(64)
    runs, errors = [], []
    for candidate in shrunk_encodings(w, enc, RATIOS, shape):
        q = gptq_round(w, h, candidate, damping, block_size=4, weight_shape=shape, act_order=True).double()
        e = w.double() - q
        runs.append(q)
        errors.append(torch.einsum("gok,gkl,gol->go", e, damped, e))
    runs_t, errors_t = torch.stack(runs), torch.stack(errors)  # [n, groups, out, K], [n, groups, out]
    if kind == "tensor":
        best = errors_t.sum((1, 2)).argmin().expand(2, 6)
    else:
        best = errors_t.argmin(0)
    want = runs_t.gather(0, best[None, :, :, None].expand(1, 2, 6, 64))[0]
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-6)
    if kind == "channel":
        assert len(best.unique()) > 1, "a case where channels choose different ranges"
    candidates = shrunk_encodings(w, enc, RATIOS, shape)
    for row in range(12):
        pick = candidates[int(best.flatten()[row])]
        if kind == "tensor":
            torch.testing.assert_close(chosen.scale, pick.scale)
        else:
            torch.testing.assert_close(chosen.scale[row], pick.scale[row])
            torch.testing.assert_close(chosen.offset[row], pick.offset[row])
    assert (chosen.block_size, chosen.axis, chosen.symmetric) == (enc.block_size, enc.axis, enc.symmetric)


def test_the_search_never_does_worse_than_the_full_range_per_row() -> None:
    w, h = _layer_case(2)
    enc = _encoding(w, "channel", symmetric=False)
    got, _ = gptq_grid_search(w, h, enc, RATIOS, 0.1)
    full = gptq_round(w, h, shrunk_encodings(w, enc, [1.0])[0], 0.1)
    damped = h.double() + 0.1 * h.double().diagonal(dim1=1, dim2=2).mean(-1)[:, None, None] * torch.eye(64)

    def err(q: torch.Tensor) -> torch.Tensor:
        e = w.double() - q.double()
        return torch.einsum("gok,gkl,gol->go", e, damped, e)

    assert bool((err(got) <= err(full) + 1e-9).all())
    assert float(err(got).sum()) < 0.9 * float(err(full).sum())  # heavy tails: clipping pays at 3 bits


def _net() -> nn.Module:
    """test_gptq's conv net, with heavy-tailed weights."""
    torch.manual_seed(0)
    net = small_conv_net()
    with torch.no_grad():  # heavy-tailed weights, as trained nets have
        for p in net.parameters():
            if p.dim() > 1:
                p.mul_(1 / torch.rand_like(p).clamp(min=0.05).sqrt())
    return net


@pytest.mark.parametrize("asymmetric,correct_bias", [(False, False), (True, False), (True, True)])
def test_gptq_with_clip_ratios_freezes_the_chosen_grids_and_beats_the_full_range(
    asymmetric: bool, correct_bias: bool, tmp_path
) -> None:
    """The encodings file carries each layer's chosen grid (the sim with it reproduces the rounded model exactly,
    a re-bias included), some channels clip, and the held-out output error is below GPTQ on the full ranges."""
    net = _net()
    before = copy.deepcopy(net.state_dict())
    data = [torch.randn(64, 3, 8, 8) for _ in range(2)]
    held_out = torch.randn(128, 3, 8, 8)
    common = dict(
        param_bw=3, act_bw=32, num_batches=2, progress=False, config={"per_channel": True, "param_symmetric": False},
        param_scheme="minmax", asymmetric=asymmetric, correct_bias=correct_bias, damping=0.01,
    )  # fmt: skip
    searched, enc = lt.gptq(net, data[0][:1], data, path=tmp_path, clip_ratios=RATIOS, **common)
    full, _ = lt.gptq(net, data[0][:1], data, path=tmp_path / "full", clip_ratios=(1.0,), **common)
    plain, _ = lt.gptq(net, data[0][:1], data, path=tmp_path / "plain", **common)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    # α = 1 alone is the minmax grid GPTQ uses without a search
    torch.testing.assert_close(full.state_dict(), plain.state_dict(), rtol=0, atol=1e-6)

    sim = lt.QuantSim(searched, data[0][:1], param_bw=3, act_bw=32, config=common["config"])
    sim.set_and_freeze_param_encodings(enc)
    sim.compute_encodings(data, progress=False)
    with torch.no_grad():
        torch.testing.assert_close(sim.model(held_out), searched(held_out), rtol=1e-5, atol=1e-5)  # on the grids
        target = net(held_out)
        err_search = (searched(held_out) - target).pow(2).mean()
        err_full = (full(held_out) - target).pow(2).mean()
    assert err_search < err_full
    scales = {n: q.encoding.scale for n, q in sim.param_quantizers().items() if q.encoding is not None}
    minmax = _minmax_sim(net, data, common["config"]).param_quantizers()
    widest = {n: q.encoding.scale for n, q in minmax.items() if q.encoding is not None}
    assert any(bool((scales[n] < 0.99 * widest[n]).any()) for n in scales if n.endswith("weight"))


def _minmax_sim(net: nn.Module, data: list[torch.Tensor], config: dict) -> lt.QuantSim:
    sim = lt.QuantSim(net, data[0][:1], param_bw=3, act_bw=32, config=config, param_scheme="minmax")
    sim.compute_encodings(data, progress=False)
    return sim


@pytest.mark.parametrize("lpbq", [None, 8])
def test_blockwise_gptq_with_clip_ratios_keeps_block_grids(lpbq: int | None, tmp_path) -> None:
    """Blockwise and LPBQ: the chosen grids are still block grids (LPBQ: integer multiples of a per-channel scale)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    data = [torch.randn(64, 32) for _ in range(2)]
    blocks = dict(param_bw=4, act_bw=32, param_block_size=8, decompressed_bw=lpbq)
    options = dict(num_batches=2, progress=False, param_scheme="minmax", **blocks)
    rounded, enc = lt.gptq(net, data[0][:1], data, path=tmp_path, clip_ratios=RATIOS, **options)
    sim = lt.QuantSim(rounded, data[0][:1], **blocks)
    sim.set_and_freeze_param_encodings(enc)
    sim.compute_encodings(data, progress=False)
    chosen = sim.param_quantizers()["0.weight"].encoding
    assert chosen.scale.shape == (16, 4) and chosen.decompressed_bw == lpbq
    if lpbq:
        per_channel = chosen.scale.amax(1, keepdim=True) / 2 ** (lpbq - 4)
        multipliers = chosen.scale / per_channel
        torch.testing.assert_close(multipliers, multipliers.round())
    with torch.no_grad():
        torch.testing.assert_close(sim.model(data[0]), rounded(data[0]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ratios", [(1.0, 0.0), (1.5,), "0.9", 0.9, (float("nan"),)])
def test_bad_clip_ratios_are_refused_before_any_work(ratios, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("leantorch.ptq.layer_rounding.prepare", lambda *a, **k: pytest.fail("traced"))
    with pytest.raises(lt.InvalidOptionError, match="clip_ratios"):
        lt.gptq(_net(), torch.zeros(1, 3, 8, 8), [torch.zeros(2, 3, 8, 8)], path=tmp_path, clip_ratios=ratios)


def test_a_list_of_ratios_is_kept_as_a_tuple() -> None:
    assert lt.GptqConfig(clip_ratios=[1, 0.5]).clip_ratios == (1.0, 0.5)
    assert dataclasses.replace(lt.GptqConfig(), clip_ratios=[0.9]).clip_ratios == (0.9,)


def test_amp_gptq_candidates_carry_the_searched_grids(tmp_path) -> None:
    """``mixed_precision(rounding="gptq", rounding_options=GptqConfig(clip_ratios=...))``: a group at W3A16 holds
    the weights and chosen grids of ``lt.gptq`` with the same ratios (not the sim's own MSE grids)."""
    from leantorch.ptq.mixed_precision import mixed_precision

    from .test_amp_rounding import _all_at, _weights, noise_score

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(128, 10))
    net = net.eval()
    gen = torch.Generator().manual_seed(1)
    calib, held_out = [torch.randn(32, 3, 8, 8, generator=gen) for _ in range(2)], [torch.randn(64, 3, 8, 8)]
    options = lt.GptqConfig(asymmetric=True, param_scheme="mse", clip_ratios=RATIOS, progress=False)
    amp = mixed_precision(
        net, calib[0][:1], calib, noise_score(net, held_out), candidates="W16A16,W3A16", allowed_drop=0.5,
        cost="memory", rounding="gptq", rounding_options=options, progress=False,
    )  # fmt: skip
    want, path = lt.gptq(
        net, calib[0][:1], calib, param_bw=3, act_bw=16, per_channel=True, num_batches=2, asymmetric=True,
        param_scheme="mse", clip_ratios=RATIOS, progress=False, path=tmp_path,
    )  # fmt: skip
    _all_at(amp, "W3A16")
    plain = lt.QuantSim(net, calib[0][:1], param_bw=3, act_bw=16, per_channel=True, param_scheme="mse")
    plain.compute_encodings(calib, progress=False)
    searched = lt.QuantSim(want, calib[0][:1], param_bw=3, act_bw=16, per_channel=True)
    searched.set_and_freeze_param_encodings(path)
    moved = 0
    for name, got in _weights(amp).items():
        assert torch.equal(got, want.get_parameter(name)), name
        q = amp.sim.param_quantizers()[name]
        torch.testing.assert_close(q.encoding.scale, searched.param_quantizers()[name].encoding.scale)
        moved += int(not torch.allclose(q.encoding.scale, plain.param_quantizers()[name].encoding.scale))
    assert moved > 0  # the search chose grids other than the MSE ones somewhere


def test_a_dead_input_does_not_steer_the_choice() -> None:
    """An input that is always zero carries no error on the data: the choice is scored on ``H`` plus the damping,
    not on the unit diagonal GPTQ gives that input to stay positive definite (which, beside inputs of small
    magnitude, would pick the grids that round the dead column best)."""
    from leantorch.ptq.gptq import damped_hessian

    w, h = _layer_case(3)
    h = h * 1e-4  # small inputs (post-activation scales)
    h[:, 5, :] = 0.0
    h[:, :, 5] = 0.0
    enc = _encoding(w, "channel", symmetric=False)
    _, chosen = gptq_grid_search(w, h, enc, RATIOS, 0.01)
    candidates = shrunk_encodings(w, enc, RATIOS)
    objective = h.double() + 0.01 * h.double().diagonal(dim1=1, dim2=2).mean(-1)[:, None, None] * torch.eye(64)
    with_unit = damped_hessian(h, 0.01)

    def best(hessian: torch.Tensor) -> torch.Tensor:
        errors = []
        for candidate in candidates:
            e = w.double() - gptq_round(w, h, candidate, 0.01).double()
            errors.append(torch.einsum("gok,gkl,gol->go", e, hessian, e))
        return torch.stack(errors).argmin(0).flatten()

    want, steered = best(objective), best(with_unit)
    assert not torch.equal(want, steered)  # the case where the unit would change the choice
    for row in range(12):
        torch.testing.assert_close(chosen.scale[row], candidates[int(want[row])].scale[row])
