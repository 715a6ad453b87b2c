"""Suffix-only sweeps give the numbers full forward passes give, and run fewer nodes."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import fx, nn

import leantorch as lt
from leantorch.evaluation import sqnr_score
from leantorch.models import ResNetSmall, TransformerClassifier
from leantorch.sweep import Trial, suffix_outputs


def _scaled(module: nn.Module, factor: float):  # type: ignore[no-untyped-def]
    @contextlib.contextmanager
    def change():  # type: ignore[no-untyped-def]
        saved = module.weight.data.clone()
        module.weight.data.mul_(factor)
        try:
            yield
        finally:
            module.weight.data.copy_(saved)

    return change


def test_suffix_outputs_equal_full_passes_of_each_variant(resnet) -> None:
    gm = fx.symbolic_trace(resnet)
    batches = [(torch.randn(4, 3, 32, 32),), (torch.randn(3, 3, 32, 32),)]
    names = ["fc", "stem.0", "layers.1.conv2", "layers.2.shortcut.0"]  # deliberately not in graph order
    trials = [Trial(name, (gm.get_submodule(name),), _scaled(gm.get_submodule(name), 0.7)) for name in names]
    outputs = suffix_outputs(gm, batches, trials, progress=False)
    assert list(outputs) == ["stem.0", "layers.1.conv2", "layers.2.shortcut.0", "fc"]  # run in graph order
    with torch.no_grad():
        for trial in trials:
            with trial.change():
                for (x,), y in zip(batches, outputs[trial.key]):
                    assert torch.equal(gm(x), y)
        # the base model is restored after every trial
        assert torch.equal(gm(batches[0][0]), resnet(batches[0][0]))


def test_sensitivity_from_suffixes_equals_full_runs() -> None:
    torch.manual_seed(0)
    for model, data in [
        (ResNetSmall(num_classes=10, width=8).eval(), [torch.randn(6, 3, 32, 32) for _ in range(2)]),
        (
            TransformerClassifier(in_features=16, num_classes=5, dim=32, depth=2).eval(),
            [torch.randn(4, 10, 16) for _ in range(2)],
        ),
    ]:
        sim = lt.QuantSim(model, data[0][:1], param_bw=4, act_bw=4)
        sim.compute_encodings(data, progress=False)
        score = sqnr_score(model, data[:1])
        fast = lt.analyze(sim, score, data, progress=False)
        slow = lt.analyze(sim, lambda m, score=score: score(m), data, progress=False)  # a plain function: full runs
        assert fast.sensitivity == slow.sensitivity
        assert fast.scores == slow.scores
        assert len({row["only this layer quantized"] for row in fast.sensitivity}) > 2  # layers do differ


@pytest.mark.slow
def test_sensitivity_on_two_ray_workers_equals_the_serial_sweep() -> None:
    pytest.importorskip("ray")
    torch.manual_seed(0)
    model = ResNetSmall(num_classes=10, width=8).eval()
    data = [torch.randn(6, 3, 32, 32) for _ in range(2)]
    sim = lt.QuantSim(model, data[0][:1], param_bw=4, act_bw=4)
    sim.compute_encodings(data, progress=False)
    score = sqnr_score(model, data[:1])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers run one thread each: the same float reductions
    try:
        serial = lt.analyze(sim, score, data, progress=False)
    finally:
        torch.set_num_threads(threads)
    parallel = lt.analyze(sim, score, data, progress=False, workers=2)
    assert parallel.sensitivity == serial.sensitivity
