"""Distributed calibration and QAT: two gloo ranks on CPU (spawned processes) against one process.

One module-scoped spawn runs every distributed scenario (process start-up dominates the cost); each test
then checks one property of what the ranks saved.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import leantorch as lt
from leantorch.distributed import DistributedMismatchError, merge_group
from leantorch.errors import InvalidOptionError

WORLD = 2
SCHEMES = ("minmax", "tf_enhanced", "percentile", "mse")


def small_model(extra: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 5),
    ]
    if extra:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def calibration_batches() -> list[torch.Tensor]:
    """Eight batches whose ranges grow, so that histograms are re-binned along the way."""
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, 8, 8, generator=gen) * (1 + 0.3 * i) for i in range(8)]


def training_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(2)
    return [(torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 5, (8,), generator=gen)) for _ in range(4)]


def encodings(sim: lt.QuantSim) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {
        n: (q.encoding.scale.clone(), q.encoding.offset.clone())
        for n, q in sim.quantizers().items()
        if q.encoding is not None
    }


def calibrate(scheme: str, batches: list[torch.Tensor], **kwargs: Any) -> lt.QuantSim:
    sim = lt.QuantSim(small_model(), batches[0][:1], scheme=scheme, per_channel=True)
    sim.compute_encodings(batches, progress=False, **kwargs)
    return sim


def qat_sim() -> lt.QuantSim:
    sim = lt.QuantSim(
        small_model(), training_batches()[0][0][:1], param_bw=4, act_bw=4, scheme="minmax", range_learning=True
    )
    sim.compute_encodings([x for x, _ in training_batches()], progress=False, distributed=False)
    return sim


def _error_name(fn: Any) -> str:
    try:
        fn()
    except Exception as exc:  # the type is what the test checks
        return type(exc).__name__
    return "none"


def _worker(rank: int, out: str) -> None:
    """One rank: run every scenario, save what it saw to ``out/rank{rank}.pt``, then leave without teardown."""
    torch.set_num_threads(1)
    # A file store in this run's own temporary folder: nothing to collide with. A TCP store on a port picked
    # by binding port 0 and closing it again can be taken in between (the other xdist worker runs this
    # fixture at the same time, and every gloo rank binds ephemeral ports of its own).
    dist.init_process_group("gloo", init_method=(Path(out) / "rendezvous").as_uri(), rank=rank, world_size=WORLD)
    try:
        results: dict[str, Any] = {}
        shard = calibration_batches()[rank::WORLD]  # interleaved, as DistributedSampler shards
        for scheme in SCHEMES:
            results[scheme] = encodings(calibrate(scheme, shard))
        # A rank whose data holds NaN raises its own error; the other one must not wait forever.
        bad = [b.clone() for b in shard]
        if rank == 1:
            bad[1][0, 0, 0, 0] = float("nan")
        results["failure"] = _error_name(lambda: calibrate("minmax", bad))
        # Ranks with different quantizers are refused on every rank.
        other = lt.QuantSim(small_model(extra=rank == 1), shard[0][:1], scheme="minmax")
        results["mismatch"] = _error_name(lambda: other.compute_encodings(shard, progress=False))
        # QAT: each rank its half of the batches of the single-process run below (SGD: averaged gradients).
        sim = qat_sim()
        results["qat_before"] = encodings(sim)
        losses = lt.qat.fit(
            sim,
            training_batches()[rank::WORLD],
            nn.functional.cross_entropy,
            epochs=2,
            lr=1e-2,
            range_lr=1e-2,
            optimizer="sgd",
            progress=False,
        )
        results["qat"] = encodings(sim)
        results["qat_losses"] = losses
        results["qat_weights"] = {k: v.clone() for k, v in sim.model.state_dict().items()}
        # Fixed encodings (buffers) that differ between ranks are replaced by rank 0's when training starts.
        fixed = lt.QuantSim(small_model(), shard[0][:1], param_bw=4, act_bw=4, scheme="minmax")
        fixed.compute_encodings(shard, progress=False, distributed=False)  # per-rank data: ranks differ
        results["fixed_before"] = encodings(fixed)
        lt.qat.fit(fixed, training_batches()[rank::WORLD][:1], nn.functional.cross_entropy, progress=False)
        results["fixed_after"] = encodings(fixed)
        results["qat_uneven"] = _error_name(
            lambda: lt.qat.fit(sim, training_batches()[: 1 + rank], nn.functional.cross_entropy, progress=False)
        )
        torch.save(results, Path(out) / f"rank{rank}.pt")
        dist.barrier()  # no rank leaves while the other still talks to it
    finally:
        dist.destroy_process_group()
    _exit_without_teardown()


def _exit_without_teardown() -> None:
    """End this rank now, skipping the interpreter's teardown (its results are saved and closed).

    Once a ``DistributedDataParallel`` was built (``lt.qat.fit``), torch keeps the gloo process group alive
    after ``destroy_process_group``: its worker, transport and store threads still run while the interpreter
    shuts down, and a gloo group torn down there aborts the process ("terminate called without an active
    exception", SIGABRT; pytorch/pytorch#65513) now and then, more often on a loaded machine. Only this
    success path skips teardown: an exception still reaches ``mp.spawn``, which reports it with its traceback.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(out),), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


pytestmark = pytest.mark.slow  # two spawned processes: ~20 s


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name][0], b[name][0]) and torch.equal(a[name][1], b[name][1]), name


@pytest.mark.parametrize("scheme", SCHEMES)
def test_ranks_agree_bit_for_bit(ranks: list[dict[str, Any]], scheme: str) -> None:
    assert_same(ranks[0][scheme], ranks[1][scheme])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_two_ranks_on_split_data_equal_one_process_on_all(ranks: list[dict[str, Any]], scheme: str) -> None:
    # Exact by construction for every scheme: minmax merges extremes; the histograms live on a grid chosen
    # from the range alone, and re-gridding moves whole bins (leantorch.quant.histogram), so the merged
    # histogram is the one-process histogram, bit for bit.
    assert_same(ranks[0][scheme], encodings(calibrate(scheme, calibration_batches(), distributed=False)))


def test_a_failing_rank_makes_every_rank_raise(ranks: list[dict[str, Any]]) -> None:
    assert ranks[1]["failure"] == "CalibrationDataError"
    assert ranks[0]["failure"] == "DistributedMismatchError"


def test_ranks_with_different_quantizers_are_refused(ranks: list[dict[str, Any]]) -> None:
    assert ranks[0]["mismatch"] == ranks[1]["mismatch"] == "DistributedMismatchError"


def test_qat_under_ddp_keeps_encodings_identical_across_ranks(ranks: list[dict[str, Any]]) -> None:
    assert_same(ranks[0]["qat"], ranks[1]["qat"])
    assert ranks[0]["qat_losses"] == ranks[1]["qat_losses"]
    # Range learning did move the encodings.
    assert any(not torch.equal(ranks[0]["qat"][n][0], ranks[0]["qat_before"][n][0]) for n in ranks[0]["qat"])


def test_qat_under_ddp_matches_one_process_on_the_global_batches(ranks: list[dict[str, Any]]) -> None:
    # DDP averages the gradients of the two ranks' batches: the gradient of the mean loss over both batches,
    # which is what one process sees when each step takes both ranks' batches together.
    sim = qat_sim()
    data = training_batches()
    merged = [
        (torch.cat([data[i][0], data[i + 1][0]]), torch.cat([data[i][1], data[i + 1][1]]))
        for i in range(0, len(data), WORLD)
    ]
    lt.qat.fit(
        sim,
        merged,
        nn.functional.cross_entropy,
        epochs=2,
        lr=1e-2,
        range_lr=1e-2,
        optimizer="sgd",
        progress=False,
        distributed=False,
    )
    for name, value in sim.model.state_dict().items():
        assert torch.allclose(ranks[0]["qat_weights"][name].float(), value.float(), rtol=1e-4, atol=1e-5), name


def test_qat_starts_from_rank_zeros_fixed_encodings(ranks: list[dict[str, Any]]) -> None:
    before = [r["fixed_before"] for r in ranks]
    assert any(not torch.equal(before[0][n][0], before[1][n][0]) for n in before[0])  # the ranks did differ
    assert_same(ranks[0]["fixed_after"], ranks[1]["fixed_after"])
    assert_same(ranks[1]["fixed_after"], before[0])  # rank 0's, unchanged by training (they are buffers)


def test_qat_refuses_uneven_shards_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    assert ranks[0]["qat_uneven"] == ranks[1]["qat_uneven"] == "DistributedMismatchError"


def test_distributed_true_without_a_process_group_is_refused() -> None:
    assert merge_group(None) is None and merge_group(False) is None
    with pytest.raises(InvalidOptionError, match="init_process_group"):
        merge_group(True)
    sim = lt.QuantSim(small_model(), torch.randn(1, 3, 8, 8), scheme="minmax")
    with pytest.raises(InvalidOptionError):
        sim.compute_encodings([torch.randn(2, 3, 8, 8)], progress=False, distributed=True)
    assert issubclass(DistributedMismatchError, lt.LeanTorchError)
