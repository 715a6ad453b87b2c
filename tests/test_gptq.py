"""GPTQ (leantorch.ptq.gptq): the blocked, batched rounding equals the paper's column loop in float64; the
model-level sweep lands on the grid and beats round-to-nearest."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest
import torch
from torch import nn

import leantorch as lt
from leantorch.ptq.gptq import gptq_round
from leantorch.quant.encoding import compute_encoding


def reference_gptq(
    w: torch.Tensor, h: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, steps: int, damping: float
) -> torch.Tensor:
    """The paper's algorithm for one group, one column at a time, float64 (no blocks, no batching)."""
    w, h = w.double().clone(), h.double().clone()
    h += damping * h.diagonal().mean() * torch.eye(h.shape[0], dtype=torch.float64)
    u = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)
    q = torch.zeros_like(w)
    for k in range(w.shape[1]):
        col = w[:, k]
        q[:, k] = scale * (torch.clamp(torch.round(col / scale) - offset, 0, steps) + offset)
        err = (col - q[:, k]) / u[k, k]
        w[:, k:] -= err[:, None] * u[k, k:][None, :]
    return q


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("block_size", [1, 5, 128])
def test_blocked_batched_rounding_equals_the_papers_column_loop(per_channel: bool, block_size: int) -> None:
    gen = torch.Generator().manual_seed(3)
    groups, out, k = 3, 4, 12
    w = torch.randn(groups, out, k, generator=gen)
    x = torch.randn(groups, k, 200, generator=gen) * torch.linspace(0.2, 2.0, k)[None, :, None]
    h = x @ x.transpose(1, 2) / 200
    flat = w.reshape(groups * out, k)
    if per_channel:
        enc = compute_encoding(flat.amin(1), flat.amax(1), 4, symmetric=False, axis=0)
        scale, offset = enc.scale.double().reshape(groups, out), enc.offset.double().reshape(groups, out)
    else:
        enc = compute_encoding(flat.min(), flat.max(), 4, symmetric=False)
        scale, offset = enc.scale.double().expand(groups, out), enc.offset.double().expand(groups, out)
    got = gptq_round(w, h, enc, damping=0.01, block_size=block_size)
    for g in range(groups):
        want = reference_gptq(w[g], h[g], scale[g], offset[g], enc.num_steps, 0.01)
        torch.testing.assert_close(got[g].double(), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("per_channel", [True, False])
def test_act_order_is_the_papers_loop_over_columns_sorted_by_input_energy(per_channel: bool) -> None:
    gen = torch.Generator().manual_seed(5)
    out, k = 6, 10
    w = torch.randn(1, out, k, generator=gen)
    x = torch.randn(k, 300, generator=gen) * torch.rand(k, 1, generator=gen).mul(3)  # unequal input energies
    h = x @ x.T / 300
    if per_channel:
        enc = compute_encoding(w[0].amin(1), w[0].amax(1), 3, symmetric=False, axis=0)
        scale, offset = enc.scale.double(), enc.offset.double()
    else:
        enc = compute_encoding(w.min(), w.max(), 3, symmetric=False)
        scale, offset = enc.scale.double().expand(out), enc.offset.double().expand(out)
    order = h.diagonal().argsort(descending=True)
    assert not torch.equal(order, torch.arange(k))  # the order matters in this case
    want = torch.empty(out, k, dtype=torch.float64)
    want[:, order] = reference_gptq(w[0][:, order], h[order][:, order], scale, offset, enc.num_steps, 0.01)
    got = gptq_round(w, h[None], enc, damping=0.01, block_size=4, act_order=True)
    torch.testing.assert_close(got[0].double(), want, rtol=0, atol=1e-6)
    assert not torch.equal(got, gptq_round(w, h[None], enc, damping=0.01, block_size=4))


def test_act_order_keeps_each_column_on_its_own_blocks_grid() -> None:
    gen = torch.Generator().manual_seed(6)
    layer = nn.Linear(16, 3)
    w = layer.weight.detach()[None]
    x = torch.randn(16, 200, generator=gen) * torch.linspace(3, 0.1, 16)[torch.randperm(16, generator=gen)][:, None]
    blocks = w[0].reshape(3, 4, 4)  # block size 4: per row, 4 blocks of 4 columns
    flat = compute_encoding(blocks.amin(2).reshape(-1), blocks.amax(2).reshape(-1), 3, symmetric=False, axis=0)
    scale, offset = flat.scale.reshape(3, 4), flat.offset.reshape(3, 4)
    enc = dataclasses.replace(flat, scale=scale, offset=offset, block_size=4, block_axis=1)
    got = gptq_round(w, (x @ x.T / 200)[None], enc, weight_shape=(3, 16), act_order=True)[0]
    scale, offset = scale.repeat_interleave(4, 1), offset.repeat_interleave(4, 1)
    steps = torch.round(got / scale) - offset
    torch.testing.assert_close(got, scale * (steps + offset))
    assert bool((steps >= 0).all()) and bool((steps <= enc.num_steps).all())


def test_identity_hessian_without_damping_is_round_to_nearest_and_dead_inputs_stay_finite() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(1, 6, 8, generator=gen)
    enc = compute_encoding(w[0].amin(1), w[0].amax(1), 3, symmetric=True, axis=0)
    s, o = enc.scale[:, None], enc.offset[:, None].float()
    nearest = s * (torch.clamp(torch.round(w[0] / s) - o, 0, enc.num_steps) + o)
    torch.testing.assert_close(gptq_round(w, torch.eye(8)[None], enc, damping=0.0)[0], nearest)
    h = torch.eye(8)[None].clone()
    h[0, 2, 2] = h[0, 5, 5] = 0.0  # inputs 2 and 5 are always zero
    q = gptq_round(w, h, enc)
    assert bool(torch.isfinite(q).all())
    torch.testing.assert_close(q[0][:, [2, 5]], nearest[:, [2, 5]])


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),
        nn.ReLU(),
        nn.Conv2d(16, 8, 1),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),
    ).eval()


@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_lands_on_the_grid_beats_round_to_nearest_and_leaves_the_model_alone(symmetric: bool, tmp_path) -> None:
    """Also on asymmetric weight grids (a zero point per channel), which GPTQ rounds to through the offset."""
    torch.manual_seed(0)
    net = _net()
    before = copy.deepcopy(net.state_dict())
    data = [torch.randn(32, 3, 8, 8) for _ in range(2)]
    held_out = torch.randn(64, 3, 8, 8)
    config = {"per_channel": True, "param_symmetric": symmetric}
    rounded, enc = lt.gptq(
        net, data[0][:1], data, param_bw=3, act_bw=32, num_batches=2, path=tmp_path, progress=False, config=config
    )
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    sim = lt.QuantSim(rounded, data[0][:1], param_bw=3, act_bw=32, config=config)
    sim.set_and_freeze_param_encodings(enc)
    sim.compute_encodings(data, progress=False)
    offsets = torch.cat([q.encoding.offset.flatten() for q in sim.param_quantizers().values() if q.encoding])
    assert bool((offsets == -4).all()) == symmetric  # 3-bit symmetric grids sit at offset -4
    rtn = lt.QuantSim(net, data[0][:1], param_bw=3, act_bw=32, config=config, param_scheme="mse")
    rtn.compute_encodings(data, progress=False)
    with torch.no_grad():
        target = net(held_out)
        torch.testing.assert_close(sim.model(held_out), rounded(held_out), rtol=1e-5, atol=1e-5)  # on the grid
        err_gptq = (rounded(held_out) - target).pow(2).mean()
        err_rtn = (rtn.model(held_out) - target).pow(2).mean()
    assert err_gptq < 0.7 * err_rtn


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(damping=-0.1), "damping"),
        (dict(block_size=0), "block_size"),
        (dict(num_batches=0), "num_batches"),
        (dict(use_quantized_inputs="yes"), "use_quantized_inputs"),
        (dict(act_order="yes"), "act_order"),
        (dict(asymmetric="yes"), "asymmetric"),
        (dict(correct_bias=1), "correct_bias"),
        (dict(asymmetric=True, use_quantized_inputs=False), "use_quantized_inputs=True"),
    ],
)
def test_bad_options_are_refused_before_any_work(kwargs, match, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("leantorch.ptq.layer_rounding.prepare", lambda *a, **k: pytest.fail("traced"))
    with pytest.raises(lt.InvalidOptionError, match=match):
        lt.gptq(_net(), torch.zeros(1, 3, 8, 8), [torch.zeros(2, 3, 8, 8)], path=tmp_path, **kwargs)


def _quantized_inputs(net: nn.Module, data: list[torch.Tensor], **options) -> torch.Tensor:
    """What the Linear ``net[1]`` multiplies its weight with in a sim of ``net`` built and calibrated like GPTQ's."""
    sim = lt.QuantSim(net, data[0][:1], **options)
    sim.compute_encodings(data, progress=False)
    wrapper, seen = sim.layers()["1"], []
    handle = wrapper.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    with torch.no_grad():
        for batch in data:
            sim.model(batch)
        handle.remove()
        return torch.cat([wrapper.input_quantizers[0](x) if len(wrapper.input_quantizers) else x for x in seen])


def test_asymmetric_gptq_with_bias_is_the_float64_least_squares_fit_of_float_outputs_from_quantized_inputs(
    tmp_path,
) -> None:
    """On a fine weight grid (16 bits) GPTQ rounds nothing away, so the asymmetric weight and re-fitted bias must be
    the least-squares solution of ``[x̂, 1] → W x + b`` (x̂: the 3-bit quantized input), computed here in float64."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.ReLU(), nn.Linear(6, 5)).eval()
    data = [torch.randn(64, 6) * torch.linspace(0.5, 2.0, 6) + 0.3 for _ in range(2)]
    options = dict(param_bw=16, act_bw=3, per_channel=True, scheme="minmax", param_scheme="minmax")
    rounded, _ = lt.gptq(
        net, data[0][:1], data, num_batches=2, damping=0.0, asymmetric=True, correct_bias=True,
        path=tmp_path, progress=False, **options,
    )  # fmt: skip
    x_hat = _quantized_inputs(net, data, **options).double()
    with torch.no_grad():
        x = torch.cat(data).relu().double()
        target = x @ net[1].weight.double().T + net[1].bias.double()
    assert (x_hat - x).abs().max() > 0.05  # the inputs are coarsely quantized: there is something to compensate
    design = torch.cat([x_hat, torch.ones(len(x_hat), 1, dtype=torch.float64)], dim=1)
    solution = torch.linalg.lstsq(design, target).solution  # [7, 5]
    torch.testing.assert_close(rounded.get_submodule("1").weight.double(), solution[:6].T, rtol=0, atol=2e-3)
    torch.testing.assert_close(rounded.get_submodule("1").bias.double(), solution[6], rtol=0, atol=2e-3)
    symmetric, _ = lt.gptq(net, data[0][:1], data, num_batches=2, damping=0.0, path=tmp_path, progress=False, **options)
    torch.testing.assert_close(
        symmetric.get_submodule("1").weight, net[1].weight, rtol=0, atol=2e-4
    )  # plain GPTQ keeps W


def test_bias_correction_zeroes_the_mean_output_error_on_the_calibration_data(tmp_path) -> None:
    torch.manual_seed(1)
    net = nn.Sequential(nn.ReLU(), nn.Linear(6, 5)).eval()
    data = [torch.randn(64, 6) + 1.0 for _ in range(2)]
    options = dict(param_bw=3, act_bw=4, per_channel=True, scheme="minmax")
    rounded, _ = lt.gptq(
        net, data[0][:1], data, num_batches=2, correct_bias=True, path=tmp_path, progress=False, **options
    )
    x_hat = _quantized_inputs(net, data, **options)
    with torch.no_grad():
        x = torch.cat(data)
        error = net(x) - rounded.get_submodule("1")(x_hat)
    assert error.mean(0).abs().max() < 1e-4 * error.abs().mean()  # zero up to float32 rounding
    plain, _ = lt.gptq(net, data[0][:1], data, num_batches=2, path=tmp_path, progress=False, **options)
    with torch.no_grad():
        plain_error = net(x) - plain.get_submodule("1")(x_hat)
    assert plain_error.mean(0).abs().max() > 100 * error.mean(0).abs().max()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_asymmetric_gptq_compensates_upstream_rounding_errors_on_correlated_inputs(seed: int, tmp_path) -> None:
    """Inputs from a 4-dimensional subspace of 16 (as real activations are correlated): an upstream layer's 3-bit
    rounding error is then mostly a linear function of what the next layer sees, which the asymmetric fit undoes
    and plain GPTQ (fitted to its own weights' outputs) cannot. Held-out error against the float model."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    basis = torch.randn(4, 16)
    data = [torch.randn(256, 4) @ basis for _ in range(2)]
    held_out = torch.randn(1024, 4) @ basis
    options = dict(param_bw=3, act_bw=16, per_channel=True)
    errors = {}
    for label, extra in (("gptq", {}), ("asymmetric", dict(asymmetric=True, correct_bias=True))):
        rounded, enc = lt.gptq(net, data[0][:1], data, num_batches=2, path=tmp_path, progress=False, **options, **extra)
        sim = lt.QuantSim(rounded, data[0][:1], param_scheme="mse", **options)
        sim.set_and_freeze_param_encodings(enc)
        sim.compute_encodings(data, progress=False)
        with torch.no_grad():
            errors[label] = float((sim.model(held_out) - net(held_out)).pow(2).mean())
    assert errors["asymmetric"] < 0.7 * errors["gptq"], errors


def test_a_constant_input_with_a_large_value_is_taken_as_constant_not_as_negative_variance(tmp_path) -> None:
    """A saturated channel (constant 500, as CLE can scale a ReLU6 that always clips) has E[x²] − E[x]² equal to
    float32 rounding noise, which can be negative; it must be taken as constant (zero variance) so the fit runs."""
    from leantorch.ptq.input_moments import CenteredMoments

    torch.manual_seed(0)
    x = torch.randn(4096, 8)
    x[:, 3] = 535.17
    moments = CenteredMoments(nn.Linear(8, 2), [x], [x])
    assert moments.gram[0, 3].abs().max() == 0 and moments.cross[0, :, 3].abs().max() == 0
    torch.testing.assert_close(moments.gram[0, :3, :3], torch.cov(x[:, :3].double().T, correction=0))
    net = nn.Sequential(nn.ReLU(), nn.Linear(8, 2)).eval()
    rounded, _ = lt.gptq(
        net, x[:1], [x[:2048], x[2048:]], num_batches=2, param_bw=4, asymmetric=True, correct_bias=True,
        path=tmp_path, progress=False,
    )  # fmt: skip
    assert torch.isfinite(rounded.get_submodule("1").weight).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_asymmetric_gptq_on_cuda_matches_cpu(tmp_path) -> None:
    torch.manual_seed(0)
    net = _net()
    data = [torch.randn(16, 3, 8, 8) for _ in range(2)]
    options = dict(param_bw=4, act_bw=8, num_batches=2, asymmetric=True, correct_bias=True, progress=False)
    on_cpu, _ = lt.gptq(net, data[0][:1], data, path=tmp_path, filename_prefix="cpu", **options)
    on_gpu, _ = lt.gptq(
        copy.deepcopy(net).cuda(), data[0][:1].cuda(), [d.cuda() for d in data], path=tmp_path, **options
    )
    assert next(on_gpu.parameters()).is_cuda
    with torch.no_grad():  # the same fit up to float rounding (a weight near a tie may round the other way)
        x = torch.randn(32, 3, 8, 8)
        reference, error = on_cpu(x), on_gpu(x.cuda()).cpu() - on_cpu(x)
    assert error.abs().max() < 0.05 * reference.abs().max()


def test_bias_correction_leaves_a_layer_without_bias_without_one(tmp_path) -> None:
    torch.manual_seed(2)
    net = nn.Sequential(nn.ReLU(), nn.Linear(6, 5, bias=False)).eval()
    data = [torch.randn(64, 6) + 1.0 for _ in range(2)]
    rounded, _ = lt.gptq(
        net, data[0][:1], data, num_batches=2, param_bw=4, act_bw=4, asymmetric=True, correct_bias=True,
        path=tmp_path, progress=False,
    )  # fmt: skip
    layer = rounded.get_submodule("1")
    assert layer.bias is None and torch.isfinite(layer.weight).all()
    assert not torch.equal(layer.weight, net[1].weight)


@pytest.mark.parametrize("asymmetric", [False, True])
def test_gptq_with_every_activation_spilled_to_disk_equals_the_in_memory_run(asymmetric: bool, tmp_path, monkeypatch):
    """Layer inputs are read from the frontier one batch at a time (``BatchInputs``): with a memory budget of 0
    bytes every value lives in a temporary file, and the rounding is bit for bit the in-memory one."""
    import leantorch.ptq.frontier as frontier

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Flatten(), nn.Linear(288, 4))
    data = [torch.randn(6, 3, 8, 8) for _ in range(3)]
    options = {"param_bw": 4, "num_batches": 3, "asymmetric": asymmetric, "progress": False}
    in_memory, _ = lt.gptq(net, data[0][:1], data, path=tmp_path / "a", **options)
    spilled: list[int] = []
    original = frontier.Frontier.argument_of

    def counting(self: Any, node: Any, batch: int, position: int = 0) -> Any:
        spilled.append(self.spilled_bytes)
        return original(self, node, batch, position)

    monkeypatch.setattr(frontier, "_memory_budget", lambda batches: 0)
    monkeypatch.setattr(frontier.Frontier, "argument_of", counting)
    on_disk, _ = lt.gptq(net, data[0][:1], data, path=tmp_path / "b", **options)
    assert spilled and min(spilled) > 0  # every read came from a frontier with values on disk
    for (name, a), (_, b) in zip(in_memory.state_dict().items(), on_disk.state_dict().items()):
        assert torch.equal(a, b), name
