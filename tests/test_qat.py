"""Quantization-aware training: LSQ gradients against a float64 reference, learned encodings that export
exactly, and a training helper that recovers accuracy lost to quantization."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import leantorch as lt
from leantorch.quant.quantizer import learnable_fake_quantize

from .conftest import assert_unchanged, state_snapshot


def lsq_reference(x: np.ndarray, scale: float, offset: int, bw: int) -> tuple[np.ndarray, float, float]:
    """Output, d(sum out)/d scale and d(sum out)/d offset of LSQ fake quantization, in float64.

    x̂ = (clamp(round(x/s) - o, 0, qmax) + o) * s; the rounding is straight-through (Esser et al., 2020).
    """
    qmax = 2**bw - 1
    v = x / scale
    q = np.round(v) - offset  # numpy rounds half to even, as torch does
    inside = (q >= 0) & (q <= qmax)
    out = (np.clip(q, 0, qmax) + offset) * scale
    d_scale = np.where(inside, np.round(v) - v, np.where(q < 0, offset, qmax + offset))
    # d/d offset: zero inside (offset cancels); the clamped value moves with the offset outside.
    d_offset = np.where(inside, 0.0, scale)
    return out, float(d_scale.sum()), float(d_offset.sum())


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 8), st.floats(0.01, 1.0), st.integers(0, 2**31 - 1))
def test_learnable_kernel_matches_lsq_reference(bw: int, scale: float, seed: int) -> None:
    qmax = 2**bw - 1
    gen = np.random.default_rng(seed)
    offset = -int(gen.integers(0, qmax + 1))
    x = gen.normal(0.0, scale * qmax / 3, size=200)
    # Stay away from half-step ties, where float32 and float64 may round differently.
    ties = np.abs((x / np.float32(scale)) % 1.0 - 0.5) < 1e-3
    x = x[~ties]
    s = nn.Parameter(torch.tensor(scale, dtype=torch.float32))
    o = nn.Parameter(torch.tensor(float(offset)))
    out = learnable_fake_quantize(torch.tensor(x, dtype=torch.float32), s, o, bw, grad_factor=1.0)
    out.sum().backward()
    want, d_scale, d_offset = lsq_reference(x, float(np.float32(scale)), offset, bw)
    np.testing.assert_allclose(out.detach().double().numpy(), want, atol=1e-4 * scale * qmax)
    assert float(s.grad) == pytest.approx(d_scale, rel=1e-3, abs=1e-3)
    assert float(o.grad) == pytest.approx(d_offset, rel=1e-3, abs=1e-3)


def tiny_task(seed: int = 0):
    """A 3-class problem a small MLP learns quickly; W2A3 quantization hurts it visibly."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, 8, generator=gen) * 2
    y = torch.randint(0, 3, (600,), generator=gen)
    x = centers[y] + 0.8 * torch.randn(600, 8, generator=gen)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x, y


def test_range_learning_trains_encodings_and_exports_them(tmp_path) -> None:
    model, x, y = tiny_task()
    sim = lt.QuantSim(model, x[:1], param_bw=2, act_bw=3, scheme="minmax", range_learning=True)
    sim.compute_encodings([x[:200]], progress=False)
    learnable = {n: q for n, q in sim.quantizers().items() if q.is_learnable}
    assert learnable and all(isinstance(q.scale, nn.Parameter) for q in learnable.values())
    before = {n: float(q.scale.detach().reshape(-1)[0]) for n, q in learnable.items()}
    batches = list(zip(torch.split(x, 50), torch.split(y, 50)))
    losses = lt.qat.fit(sim, batches, F.cross_entropy, epochs=3, lr=1e-3, range_lr=1e-2, progress=False)
    assert losses[-1] < losses[0]
    assert any(float(q.scale.detach().reshape(-1)[0]) != before[n] for n, q in learnable.items())
    # Export writes the learned grid, and ONNX Runtime computes what the trained sim computes.
    files = sim.export(tmp_path, "qat")
    encodings = json.loads(files["encodings"].read_text())
    weight = sim.quantizers()["0.param_quantizers.weight"]
    assert encodings["param_encodings"]["0.weight"][0]["scale"] == pytest.approx(float(weight.encoding.scale))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(files["onnx"]), options, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = sim.model(x[:64]).numpy()
    got = session.run(None, {"input": x[:64].numpy()})[0]
    step = float(sim.layers()["2"].output_quantizers[0].encoding.scale)
    assert np.abs(got - want).max() <= step * 1.001


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.mark.slow  # model-level: minutes on 2 cores
def test_qat_recovers_accuracy_lost_to_quantization() -> None:
    model, x, y = tiny_task(seed=1)
    fp32 = accuracy(model, x, y)
    snapshot = state_snapshot(model)
    batches = list(zip(torch.split(x, 50), torch.split(y, 50)))
    scores = {}
    for range_learning in (False, True):
        sim = lt.QuantSim(model, x[:1], param_bw=2, act_bw=2, scheme="minmax", range_learning=range_learning)
        sim.compute_encodings([x], progress=False)
        scores["ptq"] = accuracy(sim.model, x, y)
        lt.qat.fit(sim, batches, F.cross_entropy, epochs=4, lr=3e-3, progress=False)
        scores[range_learning] = accuracy(sim.model, x, y)
    assert fp32 - scores["ptq"] > 0.02, "the task must lose accuracy to W2A2 PTQ for this test to mean anything"
    assert scores[False] > scores["ptq"] and scores[True] > scores["ptq"]
    assert fp32 - max(scores[False], scores[True]) < (fp32 - scores["ptq"]) / 2  # most of the loss recovered
    assert_unchanged(model, snapshot)  # QAT trains the sim's copy, never the user's model


def test_fit_needs_encodings_and_warns_about_unfolded_batch_norm() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2)).eval()
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 2, (8,))
    sim = lt.QuantSim(model, x[:1])
    with pytest.raises(lt.EncodingsMissingError, match="compute_encodings"):
        lt.qat.fit(sim, [(x, y)], F.cross_entropy, progress=False)
    sim.compute_encodings([x], progress=False)
    running_mean = sim.model.get_submodule("1.module").running_mean.clone()
    with pytest.warns(UserWarning, match="BatchNorm"):
        lt.qat.fit(sim, [(x, y)], F.cross_entropy, epochs=1, progress=False)
    assert torch.equal(sim.model.get_submodule("1.module").running_mean, running_mean)  # statistics frozen
    with pytest.raises(lt.qat.TrainingDivergedError, match="lower lr"):
        lt.qat.fit(sim, [(x, y)], lambda out, t: F.cross_entropy(out, t) * float("nan"), progress=False)


# --------------------------------------------------------------------------- bad options and bad data
def small_sim(range_learning: bool = True) -> tuple[lt.QuantSim, list[tuple[torch.Tensor, torch.Tensor]]]:
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    data = [(torch.randn(16, 4, generator=gen), torch.randint(0, 3, (16,), generator=gen)) for _ in range(3)]
    sim = lt.QuantSim(model, data[0][0][:1], param_bw=4, act_bw=4, range_learning=range_learning)
    sim.compute_encodings([x for x, _ in data], progress=False)
    return sim, data


def assert_all_finite(model: nn.Module) -> None:
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    assert not bad, f"non-finite tensors left in the sim: {bad}"


@pytest.mark.parametrize(
    "options",
    [
        {"lr": float("nan")},
        {"lr": float("inf")},
        {"lr": -1e-3},
        {"lr": 0.0},
        {"lr": "1e-3"},
        {"range_lr": float("nan")},
        {"range_lr": -1.0},
        {"weight_decay": -0.1},
        {"weight_decay": float("nan")},
        {"epochs": 0},
        {"epochs": -2},
        {"epochs": 1.5},
        {"epochs": True},
        {"optimizer": "rmsprop"},
    ],
)
def test_fit_rejects_bad_options_before_touching_the_sim(options: dict) -> None:
    sim, data = small_sim()
    before = state_snapshot(sim.model)
    with pytest.raises(lt.InvalidOptionError, match=next(iter(options))):
        lt.qat.fit(sim, data, F.cross_entropy, progress=False, **options)
    assert_unchanged(sim.model, before)


@pytest.mark.parametrize("progress", ["no", 0, None])
def test_fit_rejects_a_progress_that_is_not_a_flag(progress) -> None:
    sim, data = small_sim()
    before = state_snapshot(sim.model)
    with pytest.raises(lt.InvalidOptionError, match="progress"):
        lt.qat.fit(sim, data, F.cross_entropy, progress=progress)
    assert_unchanged(sim.model, before)


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(z)


def test_two_input_batches_take_the_last_item_as_target_and_too_few_inputs_are_refused() -> None:
    gen = torch.Generator().manual_seed(0)
    x, z, y = torch.randn(16, 4, generator=gen), torch.randn(16, 4, generator=gen), torch.randint(0, 3, (16,))
    sim = lt.QuantSim(TwoInputs().eval(), (x[:1], z[:1]), param_bw=4, act_bw=4)
    sim.compute_encodings([(x, z)], progress=False)
    for batch in (((x, z), y), (x, z, y), [x, z, y]):  # nested inputs, or inputs first and the target last
        assert len(lt.qat.fit(sim, [batch], F.cross_entropy, progress=False)) == 1
    before = state_snapshot(sim.model)
    with pytest.raises(lt.TrainingDataError, match=r"training batch 1 .*1 tensor\(s\).*takes 2 input"):
        lt.qat.fit(sim, [((x, z), y), (x, y)], F.cross_entropy, lr=1e-3, progress=False)
    assert not all(torch.equal(before[k], v) for k, v in state_snapshot(sim.model).items())  # batch 0 trained


def test_nan_loss_restores_the_last_state_that_gave_a_finite_loss() -> None:
    sim, data = small_sim()
    seen: list[dict[str, torch.Tensor]] = []  # the sim's state at every call of the loss

    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        seen.append(state_snapshot(sim.model))
        return F.cross_entropy(out, target) * (float("nan") if len(seen) == 5 else 1.0)

    with pytest.raises(lt.TrainingDivergedError, match=r"epoch 2, step 1.*lower lr") as info:
        lt.qat.fit(sim, data, loss_fn, epochs=3, lr=1e-2, progress=False)
    assert len(info.value.losses) == 1  # epoch 1 completed, epoch 2 did not
    assert_unchanged(sim.model, seen[3])  # the state that gave the 4th (last finite) loss
    assert not all(torch.equal(seen[3][k], seen[4][k]) for k in seen[3])  # ... not the one that followed
    assert_all_finite(sim.model)
    with torch.no_grad():
        assert torch.isfinite(sim.model(data[0][0])).all()  # the sim still runs


def test_nan_loss_at_the_first_step_leaves_the_sim_as_it_was() -> None:
    sim, data = small_sim()
    before = state_snapshot(sim.model)
    with pytest.raises(lt.TrainingDivergedError, match="epoch 1, step 0") as info:
        lt.qat.fit(sim, data, lambda out, t: F.cross_entropy(out, t) * float("inf"), progress=False)
    assert info.value.losses == []
    assert_unchanged(sim.model, before)


def test_an_update_that_overflows_is_undone() -> None:
    # A finite loss, but lr * gradient overflows float32: the weights would become Inf.
    sim, data = small_sim(range_learning=False)
    before = state_snapshot(sim.model)
    with pytest.raises(lt.TrainingDivergedError, match="update at epoch 1, step 0"):
        lt.qat.fit(sim, data, lambda out, t: 100 * F.cross_entropy(out, t), lr=3e38, optimizer="sgd", progress=False)
    assert_unchanged(sim.model, before)


@pytest.mark.parametrize("where", ["input", "target"])
def test_nan_in_a_training_batch_is_refused_naming_the_batch(where: str) -> None:
    sim, data = small_sim()
    model = sim.model
    regression = [(x, F.one_hot(y, 3).float()) for x, y in data]  # float targets, as for an MSE loss
    bad = [(x.clone(), t.clone()) for x, t in regression]
    bad[0][0 if where == "input" else 1][2, 1] = float("nan")
    before = state_snapshot(model)
    with pytest.raises(lt.TrainingDataError, match=f"batch 0.*{'input 0' if where == 'input' else 'targets'}"):
        lt.qat.fit(sim, bad, F.mse_loss, progress=False)
    assert_unchanged(model, before)  # refused before the first forward: nothing trained
    later = regression[:2] + bad[:1]
    with pytest.raises(lt.TrainingDataError, match="batch 2"):
        lt.qat.fit(sim, later, F.mse_loss, progress=False)
    assert_all_finite(model)


def test_empty_data_and_malformed_batches_are_refused() -> None:
    sim, data = small_sim()
    before = state_snapshot(sim.model)
    with pytest.raises(lt.TrainingDataError, match="empty") as info:
        lt.qat.fit(sim, [], F.cross_entropy, epochs=2, progress=False)
    assert info.value.losses == []
    with pytest.raises(lt.TrainingDataError, match=r"not \(inputs, targets\)"):
        lt.qat.fit(sim, [x for x, _ in data], F.cross_entropy, progress=False)
    for not_batches in (None, data[0][0]):
        with pytest.raises(lt.TrainingDataError, match="pass an iterable of"):
            lt.qat.fit(sim, not_batches, F.cross_entropy, progress=False)
    assert_unchanged(sim.model, before)


def test_a_one_shot_iterator_with_several_epochs_is_refused_before_training() -> None:
    sim, data = small_sim()
    assert len(lt.qat.fit(sim, iter(data), F.cross_entropy, epochs=1, progress=False)) == 1  # fine once
    before = state_snapshot(sim.model)
    with pytest.raises(lt.TrainingDataError, match="one-shot iterator .*3 epochs.*list or a DataLoader") as info:
        lt.qat.fit(sim, (b for b in data), F.cross_entropy, epochs=3, progress=False)
    assert info.value.losses == []  # refused before the first epoch: no weight changed
    assert_unchanged(sim.model, before)
    assert len(lt.qat.fit(sim, data, F.cross_entropy, epochs=2, progress=False)) == 2


def test_fit_accepts_map_style_datasets_grouped_inputs_and_numpy_flags() -> None:
    from torch.utils.data import Subset, TensorDataset

    sim, data = small_sim()
    x, y = torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])
    dataset = TensorDataset(x[:4], y[:4])  # map-style: iterated through __getitem__ (one sample per "batch")
    assert len(lt.qat.fit(sim, dataset, F.cross_entropy, epochs=2, progress=np.bool_(False))) == 2
    assert len(lt.qat.fit(sim, Subset(dataset, [0, 1]), F.cross_entropy, progress=False)) == 1
    assert len(lt.qat.fit(sim, [((x,), y)], F.cross_entropy, progress=False)) == 1  # ((inputs...), targets)
    with pytest.raises(lt.TrainingDataError, match="targets .* NaN or Inf"):
        lt.qat.fit(sim, [(x, y.float() * float("inf"))], F.mse_loss, progress=False)
