"""Shared fixtures: small models and inputs built in-process (no network, no files)."""

from __future__ import annotations

import os

import pytest
import torch

from leantorch.models import ResNetSmall, TransformerClassifier

# Under pytest-xdist each worker would start one torch thread per core: `-n 2` on 2 cores ran 4 threads, and
# OpenMP threads that wait on each other slowed a loaded machine down many times over. One share each instead.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def resnet() -> torch.nn.Module:
    model = ResNetSmall(num_classes=10, width=8).eval()
    _randomize_batch_norms(model)
    return model


@pytest.fixture
def transformer() -> torch.nn.Module:
    return TransformerClassifier(in_features=16, num_classes=5, dim=32, depth=2).eval()


@pytest.fixture(scope="session")
def efficientnet() -> torch.nn.Module:
    from leantorch.models import efficientnet_lite0

    return efficientnet_lite0()


def _randomize_batch_norms(model: torch.nn.Module) -> None:
    """Non-trivial BN statistics, so that folding and calibration see realistic ranges."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.2)


def state_snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: torch.nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert set(state) == set(snapshot)
    for k, v in snapshot.items():
        assert torch.equal(state[k], v), f"{k} was modified"


def run_onnx(path, x: torch.Tensor):
    """First output of the ONNX file at ``path`` on input ``x`` (named ``input``), graph optimizations off: the QDQ
    graph as the ONNX spec defines it, not ONNX Runtime's fused integer kernels."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]
