"""Calibration and QAT across ``torch.distributed`` ranks: merge range statistics, check that ranks agree.

Launch one process per device (``torchrun --nproc-per-node 2 script.py``), call
``torch.distributed.init_process_group`` and give each rank its own share of the calibration data:
``sim.compute_encodings`` then merges every estimator's statistics across ranks before computing encodings,
so all ranks end with the same encodings, computed from all ranks' data.

How statistics merge (:func:`merge_estimators`), in three collectives whatever the number of quantizers:

1. a flag — did calibration fail on some rank? (then every rank raises instead of waiting for the others);
2. one MIN all-reduce of every estimator's per-channel ``[min, -max]``: the common range;
3. each rank re-bins its histograms onto the common range, then one SUM all-reduce of all counts.

Every scheme gives the encodings of one process on all the data, bit for bit. minmax: the merged range is the
global one. Histogram estimators (tf_enhanced, percentile, mse): their exact extremes merge like minmax, and
their counts live on a power-of-two grid chosen from the range alone (:mod:`leantorch.quant.histogram`): each
rank re-grids onto the grid of the global range by moving whole bins, which is exactly the histogram its data
would have had there, and integer counts sum exactly in float64 in any order.

Example (under ``torchrun --nproc-per-node 2``)::

    dist.init_process_group("gloo")
    shard = calibration[dist.get_rank()::dist.get_world_size()]
    sim.compute_encodings(shard)            # merged automatically: dist is initialised, world size 2
    lt.qat.fit(sim, train_shard, loss_fn)   # DistributedDataParallel inside; encodings stay in sync
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from .errors import DistributedMismatchError, InvalidOptionError
from .quant.estimators import HistogramEstimator, RangeEstimator

__all__ = [
    "merge_group",
    "comm_device",
    "reduce_scalar",
    "any_rank_failed",
    "check_same",
    "merge_estimators",
    "check_channels",
]


def merge_group(distributed: bool | None = None, process_group: Any = None) -> Any | None:
    """The process group to merge statistics over, or None to work locally.

    ``distributed=None`` (default): merge when ``torch.distributed`` is initialised and the group has more
    than one rank. ``True``: require an initialised process group. ``False``: never merge.

    Example:
        >>> merge_group(None) is None   # no process group initialised here
        True
    """
    if distributed is not None and not isinstance(distributed, bool):
        raise InvalidOptionError(f"distributed must be True, False or None (automatic), got {distributed!r}")
    if distributed is False:
        return None
    ready = dist.is_available() and dist.is_initialized()
    if not ready:
        if distributed or process_group is not None:
            raise InvalidOptionError(
                "distributed=True (or a process_group) needs torch.distributed initialised: launch with "
                "torchrun and call torch.distributed.init_process_group(...) first, or pass distributed=False"
            )
        return None
    group = process_group if process_group is not None else dist.group.WORLD
    if distributed is None and process_group is None and dist.get_world_size(group) < 2:
        return None
    return group


def comm_device(group: Any) -> torch.device:
    """Where collectives of ``group`` take their tensors: the current GPU for NCCL, else the CPU (gloo)."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def reduce_scalar(group: Any, value: float, op: str = "max") -> float:
    """Collective: ``value`` reduced over the ranks (``"max"`` or ``"sum"``), the same on every rank."""
    t = torch.tensor([float(value)], dtype=torch.float64, device=comm_device(group))
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM, group=group)
    return float(t.item())


def any_rank_failed(group: Any, failed: bool) -> bool:
    """Collective: tell the other ranks whether this one failed; True when any rank did."""
    return reduce_scalar(group, 1.0 if failed else 0.0) > 0


def check_same(group: Any, description: list[Any], what: str) -> list[list[Any]]:
    """Collective: gather ``description`` from every rank; raise :class:`DistributedMismatchError` naming the
    first difference unless all are equal. Returns every rank's description."""
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, description, group=group)
    for rank, other in enumerate(gathered):
        if other != gathered[0]:
            diff = next(
                (i for i, (a, b) in enumerate(zip(gathered[0], other)) if a != b), min(len(gathered[0]), len(other))
            )
            first = gathered[0][diff] if diff < len(gathered[0]) else "(nothing)"
            theirs = other[diff] if diff < len(other) else "(nothing)"
            raise DistributedMismatchError(
                f"ranks disagree on the {what}: rank 0 has {len(gathered[0])} entries, rank {rank} has {len(other)}; "
                f"first difference at entry {diff}: {first!r} vs {theirs!r}. Build the same QuantSim (model, "
                "config, options) on every rank before calibrating or training."
            )
    return gathered


def _describe(name: str, est: RangeEstimator) -> tuple:
    bins = est.num_bins if isinstance(est, HistogramEstimator) else 0
    return (name, type(est).__name__, est.axis, bins)


def merge_estimators(estimators: dict[str, RangeEstimator], group: Any, device: torch.device | str = "cpu") -> None:
    """Collective: make every rank's estimators hold the statistics of all ranks' data (in place).

    Every rank calls it with estimators of the same names and kinds (same order). An estimator without
    data on this rank takes part with an empty range (its merged statistics go to ``device``); one without
    data on every rank stays empty.

    Raises:
        DistributedMismatchError: another rank failed during calibration (it raised its own error), or the
            ranks' estimators differ in names, kinds, axes or channel counts.
    """
    if any_rank_failed(group, failed=False):
        raise DistributedMismatchError("calibration failed on another rank (see its error); no encodings were set")
    names = list(estimators)
    check_same(group, [_describe(n, estimators[n]) for n in names], "calibrated quantizers")
    local = [estimators[n].extremes() for n in names]
    channels = [0 if e is None else int(e[0].numel()) for e in local]
    all_channels = check_channels(group, names, channels)
    comm = comm_device(group)
    # One MIN all-reduce of [min..., -max...]; +inf stands for "no data here".
    ranges = torch.full((2 * sum(all_channels),), float("inf"), dtype=torch.float64, device=comm)
    lo_part, hi_part = ranges.split(sum(all_channels))
    for (lo_slot, hi_slot), ext in zip(zip(lo_part.split(all_channels), hi_part.split(all_channels)), local):
        if ext is not None:
            lo_slot.copy_(ext[0])
            hi_slot.copy_(-ext[1])
    dist.all_reduce(ranges, op=dist.ReduceOp.MIN, group=group)
    merged = [n for n, lo in zip(names, lo_part.split(all_channels)) if lo.numel() and bool(torch.isfinite(lo).all())]
    for name, lo, hi in zip(names, lo_part.split(all_channels), hi_part.split(all_channels)):
        if name in merged:
            est = estimators[name]
            ext = est.extremes()
            home = ext[0].device if ext is not None else torch.device(device)
            est.adopt_range(lo.to(home), (-hi).to(home))
    _sum_counts([estimators[n] for n in merged], group, comm)


def check_channels(group: Any, names: list[str], channels: list[int]) -> list[int]:
    """Collective: the channel count of every estimator (ranks without data report 0); a mismatch raises."""
    gathered = [
        torch.zeros(len(channels), dtype=torch.int64, device=comm_device(group))
        for _ in range(dist.get_world_size(group))
    ]
    dist.all_gather(gathered, torch.tensor(channels, dtype=torch.int64, device=comm_device(group)), group=group)
    table = torch.stack(gathered).cpu()
    best = table.max(0).values
    bad = ((table != 0) & (table != best)).any(0).nonzero().flatten().tolist()
    if bad:
        i = bad[0]
        raise DistributedMismatchError(
            f"ranks saw {table[:, i].tolist()} channels for quantizer {names[i]!r} (one count per rank): the "
            "same tensor must have the same channel count everywhere; check the per-rank data shapes."
        )
    return [int(c) for c in best.tolist()]


def _sum_counts(estimators: list[RangeEstimator], group: Any, device: torch.device) -> None:
    """One SUM all-reduce of every estimator's counts (integer-valued float64: exact in any order)."""
    counts = [est.counts() for est in estimators]
    parts = [c for c in counts if c is not None]
    if not parts:
        return
    flat = torch.cat([c.reshape(-1).to(device) for c in parts])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    for c, merged in zip(parts, flat.split([c.numel() for c in parts])):
        c.copy_(merged.reshape(c.shape))
