"""run_chunks / split_contiguous: the serial path, option checks, the missing-Ray error (fast tier); a local Ray
with two workers giving the serial results bit for bit, errors keeping their type (slow tier: Ray starts in
several seconds)."""

from __future__ import annotations

import doctest
import os
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import leantorch.parallel as parallel
from leantorch.errors import InvalidOptionError
from leantorch.models import ResNetSmall
from leantorch.parallel import ParallelBackendError, RayNotInstalledError, run_chunks, split_contiguous


class SweepFailed(ValueError):
    """A user-defined error: it must come back from a worker as this type, not as Ray's wrapper."""


def test_docstring_examples() -> None:
    assert doctest.testmod(parallel).failed == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(), max_size=30), st.integers(1, 8))
def test_split_keeps_order_and_balances_counts(items: list[int], parts: int) -> None:
    chunks = split_contiguous(items, parts)
    assert [x for c in chunks for x in c] == items
    assert len(chunks) == min(parts, len(items))
    assert all(chunks) and (not chunks or max(map(len, chunks)) - min(map(len, chunks)) <= 1)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(0, 100), min_size=1, max_size=30), st.integers(1, 8))
def test_weighted_split_balances_work(weights: list[float], parts: int) -> None:
    items = list(range(len(weights)))
    chunks = split_contiguous(items, parts, weights=weights)
    assert [x for c in chunks for x in c] == items
    assert len(chunks) == min(parts, len(items)) and all(chunks)
    # Cutting at the nearest item boundary to each quantile: no chunk exceeds its share by more than one item.
    bound = sum(weights) / len(chunks) + max(weights)
    assert all(sum(weights[i] for i in c) <= bound * (1 + 1e-9) for c in chunks)


def test_weighted_split_gives_early_expensive_layers_smaller_chunks() -> None:
    # A suffix sweep: the trial of layer i runs the n - i layers after it.
    weights = [10 - i for i in range(10)]
    chunks = split_contiguous(list(range(10)), 2, weights=weights)
    assert [len(c) for c in chunks] == [3, 7]


def test_serial_calls_fn_once_in_this_process() -> None:
    calls: list[list[int]] = []

    def fn(chunk: list[int]) -> list[float]:
        calls.append(chunk)
        return [x / 3 for x in chunk]

    for workers in (None, 1):
        calls.clear()
        assert run_chunks(fn, range(7), workers=workers, progress=False) == [x / 3 for x in range(7)]
        assert calls == [list(range(7))]
    assert run_chunks(fn, [], progress=False) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(workers=0),
        dict(workers=True),
        dict(workers=2.0),
        dict(ray_address=""),
        dict(ray_address=5),
        dict(progress="no"),
        dict(threads_per_worker=0),
        dict(weights=[1.0]),
        dict(weights=[1.0, -1.0, 0.0]),
        dict(weights=[1.0, float("nan"), 0.0]),
        dict(gpus_per_worker=-0.5),
        dict(gpus_per_worker=float("inf")),
        dict(gpus_per_worker="1"),
    ],
)
def test_bad_options_are_refused(kwargs: dict) -> None:
    with pytest.raises(InvalidOptionError):
        run_chunks(lambda c: c, [1, 2, 3], **kwargs)


def test_wrong_number_of_results_is_refused() -> None:
    with pytest.raises(ParallelBackendError, match="2 results for 3 items"):
        run_chunks(lambda c: c[:2], [1, 2, 3], progress=False)


@pytest.mark.parametrize("kwargs", [dict(workers=2), dict(ray_address="auto")])
def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch, kwargs: dict) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError, installed or not
    with pytest.raises(RayNotInstalledError, match=r'pip install "leantorch\[ray\]"') as info:
        run_chunks(lambda c: c, [1, 2, 3], progress=False, **kwargs)
    assert isinstance(info.value, InvalidOptionError) and isinstance(info.value, ImportError)
    assert run_chunks(lambda c: c, [1, 2, 3], workers=1) == [1, 2, 3]  # serial needs no Ray


def _where(chunk: list[int]) -> list[tuple[int, int, int, int, int]]:
    """Per item: the item, its chunk's first item and length, the process, torch's thread count there."""
    return [(x, chunk[0], len(chunk), os.getpid(), torch.get_num_threads()) for x in chunk]


@pytest.mark.slow
def test_local_ray_splits_contiguously_and_shuts_down() -> None:
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    items = list(range(11))
    results = run_chunks(_where, items, workers=2, progress=False)
    assert not ray.is_initialized()  # the local Ray it started is gone
    assert [r[0] for r in results] == items  # input order
    chunks = split_contiguous(items, 2)
    assert [(r[1], r[2]) for r in results] == [(c[0], len(c)) for c in chunks for _ in c]
    pids = {r[3] for r in results}
    assert len(pids) == 2 and os.getpid() not in pids  # two worker processes, not this one
    assert {r[4] for r in results} == {1}


@pytest.mark.slow
def test_a_gpu_request_the_cluster_cannot_meet_is_refused_instead_of_waiting_forever(monkeypatch) -> None:
    """A CUDA model's sweep reserves GPUs per task; on a Ray without (enough) GPUs, Ray would queue the tasks
    forever, so the sweep fails at once and says why."""
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # a local Ray with no GPUs, also on a GPU machine
    with pytest.raises(ParallelBackendError, match="gpus_per_worker=0.5: the Ray cluster has 0 GPUs"):
        run_chunks(_where, list(range(4)), workers=2, progress=False, gpus_per_worker=0.5)
    assert not ray.is_initialized()  # the local Ray it started is shut down on the error too


def test_gpu_share_follows_the_model_device() -> None:
    from leantorch.parallel import gpu_share

    assert gpu_share("cpu", 8) == 0.0 and gpu_share(torch.device("cpu"), None) == 0.0
    assert gpu_share("cuda:0", 2, gpu_count=1) == 0.5  # two tasks share the one GPU
    assert gpu_share("cuda", 3, gpu_count=6) == 1.0  # never more than one GPU per task
    assert gpu_share("cuda", None, gpu_count=1) == 1.0


class _ChannelScores:
    """Per (layer, channel): how much zeroing that output channel changes the network's logits (a sensitivity
    sweep in miniature). Holds a model and data, as a real sweep's closure does; restores the model after each
    trial so that the serial run sees the same model for every item."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(3)
        self.model = ResNetSmall(num_classes=10, width=8).eval()
        self.x = torch.randn(16, 3, 32, 32, generator=gen)
        with torch.no_grad():
            self.base = self.model(self.x)

    def items(self) -> list[tuple[str, int]]:
        convs = [n for n, m in self.model.named_modules() if isinstance(m, torch.nn.Conv2d)]
        return [(n, c) for n in convs[:4] for c in range(3)]

    def __call__(self, chunk: list[tuple[str, int]]) -> list[tuple[float, torch.Tensor]]:
        out = []
        for name, channel in chunk:
            weight = self.model.get_submodule(name).weight
            saved = weight.data[channel].clone()
            weight.data[channel].zero_()
            try:
                with torch.no_grad():
                    y = self.model(self.x)
            finally:
                weight.data[channel].copy_(saved)
            out.append((float((y - self.base).pow(2).mean()), y.sum(0)))
        return out


@pytest.mark.slow
def test_local_ray_gives_serial_model_scores_bit_for_bit() -> None:
    pytest.importorskip("ray")
    sweep = _ChannelScores()
    items = sweep.items()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each worker uses: the same reduction order, the same bits
    try:
        serial = run_chunks(sweep, items, progress=False)
    finally:
        torch.set_num_threads(threads)
    weights = [len(items) - i for i in range(len(items))]
    on_ray = run_chunks(sweep, items, workers=2, progress=True, desc="scores", weights=weights)
    assert len(on_ray) == len(serial) == len(items)
    for (s_score, s_out), (r_score, r_out) in zip(serial, on_ray):
        assert s_score == r_score and s_score > 0
        assert torch.equal(s_out, r_out)


def _fail_on_seven(chunk: list[int]) -> list[int]:
    if 7 in chunk:
        raise SweepFailed("item 7 has no score")
    return [x + 1 for x in chunk]


@pytest.mark.slow
def test_worker_errors_keep_their_type_and_a_caller_ray_is_left_running(monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    # The workers unpickle this module's functions by reference: they need the import path pytest set up here.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in sys.path if p and os.path.isdir(p)))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        with pytest.raises(SweepFailed, match="item 7 has no score") as info:
            run_chunks(_fail_on_seven, list(range(10)), workers=2, progress=False)
        assert type(info.value) is SweepFailed
        assert isinstance(info.value.__cause__, ray.exceptions.RayTaskError)  # with the worker's traceback
        with pytest.raises(ParallelBackendError, match="1 results for 5 items"):
            run_chunks(lambda c: c[:1], list(range(10)), workers=2, progress=False)
        with pytest.raises(InvalidOptionError, match="has 2 CPUs"):  # a task Ray could never schedule
            run_chunks(_fail_on_seven, list(range(6)), workers=2, threads_per_worker=3, progress=False)
        assert ray.is_initialized()  # not ours to stop
        assert run_chunks(_fail_on_seven, list(range(6)), workers=2, progress=False) == list(range(1, 7))
    finally:
        ray.shutdown()
