"""Run an embarrassingly parallel sweep over contiguous chunks of its items: in this process, or on Ray.

A sweep (per-layer sensitivity, the compression eval-score table) is a function of a list of items (layers,
``(layer, ratio)`` pairs) that returns one result per item. :func:`run_chunks` splits the items into one
contiguous chunk per worker and calls the function once per chunk. Contiguous, because a chunk's worker
advances the model's frontier once over its own range of layers; interleaved chunks would each walk the whole
model.

Back ends:

* ``workers=None`` or ``1`` and no ``ray_address``: ``fn(items)`` runs here, once.
* ``workers=N``: a local Ray is started (``N × threads_per_worker`` CPUs), the chunks run as ``N`` tasks in
  worker processes, and Ray is shut down afterwards (starting it takes several seconds, so this pays for
  sweeps of minutes).
* ``ray_address="auto"`` or ``"ray://host:10001"``: an existing cluster; this process connects, runs the
  chunks (``workers`` of them, default one per ``threads_per_worker`` CPUs of the cluster) and disconnects
  without stopping it (leantorch and the modules the sweep function uses must be installed on its nodes).
* Ray already initialized by the caller: it is used as it is and left running.

Ray is an optional extra (``pip install "leantorch[ray]"``). The function and everything it holds (a model,
probe batches) are pickled once with cloudpickle (``ray.put``) and shared by all tasks. Inside a task torch
runs with ``threads_per_worker`` threads (1 by default), so that results equal the serial run bit for bit
when that run also uses the same number of threads (see :func:`run_chunks`).

Example:
    >>> split_contiguous(list("abcdefg"), 3)
    [['a', 'b', 'c'], ['d', 'e'], ['f', 'g']]
    >>> run_chunks(lambda chunk: [x * x for x in chunk], [1, 2, 3], progress=False)
    [1, 4, 9]
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from tqdm.auto import tqdm

from .errors import InvalidOptionError, ParallelBackendError, RayNotInstalledError
from .options import check_count, check_flag, short_repr

__all__ = [
    "run_chunks",
    "split_contiguous",
    "check_backend",
    "gpu_share",
    "RayNotInstalledError",
    "ParallelBackendError",
    "INSTALL_HINT",
]

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "leantorch[ray]"'


def split_contiguous(items: Sequence[T], parts: int, weights: Sequence[float] | None = None) -> list[list[T]]:
    """Split ``items`` into at most ``parts`` non-empty contiguous chunks, in order.

    Without ``weights`` chunk sizes differ by at most one (the first chunks get the extra items). With
    ``weights`` (one finite number ≥ 0 per item, e.g. the MACs a layer's trial has to run: the suffix after an
    early layer is longer than after a late one) the chunks are cut where the running total crosses
    ``k / parts`` of the whole, so that each chunk holds about the same work.

    Example:
        >>> split_contiguous([1, 2, 3, 4, 5], 2)
        [[1, 2, 3], [4, 5]]
        >>> split_contiguous(["conv1", "conv2", "conv3", "fc"], 2, weights=[9, 5, 3, 1])
        [['conv1'], ['conv2', 'conv3', 'fc']]
        >>> split_contiguous([1, 2], 5)
        [[1], [2]]
    """
    parts = check_count("parts", parts)
    items = list(items)
    n = len(items)
    parts = min(parts, n)
    if parts == 0:
        return []
    if weights is None:
        size, extra = divmod(n, parts)
        cuts = [k * size + min(k, extra) for k in range(parts + 1)]
    else:
        cuts = _weighted_cuts(_check_weights(weights, n), parts)
    return [items[a:b] for a, b in zip(cuts, cuts[1:])]


def _check_weights(weights: Sequence[float], n: int) -> list[float]:
    values = list(weights)
    if len(values) != n:
        raise InvalidOptionError(f"weights has {len(values)} values for {n} items: pass one weight per item")
    bad = [w for w in values if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0]
    if bad:
        raise InvalidOptionError(f"weights={short_repr(values)}: pass finite numbers ≥ 0, got {short_repr(bad[:3])}")
    return [float(w) for w in values]


def _weighted_cuts(weights: list[float], parts: int) -> list[int]:
    """Chunk boundaries ``0 = c0 < c1 < … < c_parts = n`` near the quantiles of the running total."""
    n, total = len(weights), sum(weights)
    prefix = [0.0]
    for w in weights:
        prefix.append(prefix[-1] + w)
    cuts = [0]
    for k in range(1, parts):
        target = total * k / parts if total > 0 else None
        # Room for one item in each chunk before and after this cut.
        lo, hi = cuts[-1] + 1, n - (parts - k)
        if target is None:  # all weights zero: equal counts
            best = round(n * k / parts)
        else:
            best = min(range(lo, hi + 1), key=lambda i: (abs(prefix[i] - target), i))
        cuts.append(min(max(best, lo), hi))
    cuts.append(n)
    return cuts


def run_chunks(
    fn: Callable[[list[T]], list[R]],
    items: Sequence[T],
    workers: int | None = None,
    ray_address: str | None = None,
    progress: bool = True,
    desc: str = "",
    weights: Sequence[float] | None = None,
    threads_per_worker: int = 1,
    gpus_per_worker: float = 0.0,
) -> list[R]:
    """``fn`` applied to contiguous chunks of ``items``, the results concatenated in input order.

    Args:
        fn: takes a list of items, returns a list with one result per item (in the same order). It may hold
            a model and data in its closure: it is pickled once (cloudpickle) and shared by all chunks. It
            must not depend on state of this process other than what it holds (a worker has its own copy).
        items: what to sweep over; must be picklable for Ray.
        workers: ``None``/``1``: run here. ``N`` > 1: ``N`` chunks on a local Ray with ``N`` CPUs (or on the
            cluster of ``ray_address``, whose CPU count is the default there).
        ray_address: ``"auto"`` (a cluster started on this machine with ``ray start``) or
            ``"ray://host:port"`` (Ray Client); the cluster is left running.
        progress: a tqdm bar over completed chunks (Ray back end; in this process ``fn`` shows its own).
        desc: the bar's label.
        weights: one cost per item for :func:`split_contiguous`, so chunks hold equal work.
        threads_per_worker: torch threads (and CPUs reserved) per Ray task.
        gpus_per_worker: GPUs each Ray task reserves (a fraction shares one), for a function that holds a CUDA
            model: Ray hides GPUs from tasks that reserve none. :func:`gpu_share` gives the usual value.

    Determinism: a task sets ``torch.set_num_threads(threads_per_worker)``. One thread per worker keeps N
    workers from each starting one thread per core (N× oversubscription, slower than serial), and it fixes
    how CPU kernels split their reductions, which is what makes float sums depend on the thread count. So the
    results equal a serial run with ``torch.set_num_threads(threads_per_worker)`` bit for bit; a serial run with
    more threads may differ in the last bits.

    Errors: an exception raised by ``fn`` in a worker is re-raised here with its own type (chained to Ray's
    error, which carries the worker's traceback); the other chunks are cancelled.

    Example:
        >>> run_chunks(lambda chunk: [len(chunk)] * len(chunk), list(range(5)), progress=False)
        [5, 5, 5, 5, 5]
    """
    items = list(items)
    workers = check_backend(workers, ray_address)
    progress = check_flag("progress", progress)
    threads_per_worker = check_count("threads_per_worker", threads_per_worker)
    gpus_per_worker = _check_gpus(gpus_per_worker)
    if weights is not None:
        _check_weights(weights, len(items))
    if (workers or 1) == 1 and ray_address is None:
        return _checked(fn, items)
    ray = _import_ray(workers, ray_address)  # fails fast, even where there is too little work for Ray
    if not items:
        return []
    started, connected = _ensure_ray(ray, workers, ray_address, threads_per_worker)
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        if cpus < threads_per_worker:  # such a task could never be scheduled: Ray would wait forever
            raise InvalidOptionError(
                f"threads_per_worker={threads_per_worker}: the Ray cluster has {cpus} CPUs; pass at most that many"
            )
        gpus = float(ray.cluster_resources().get("GPU", 0))
        if gpus < gpus_per_worker:  # the same: a task asking for more GPUs than exist would never start
            raise ParallelBackendError(
                f"gpus_per_worker={gpus_per_worker:g}: the Ray cluster has {gpus:g} GPUs; "
                "run the sweep where the model's GPU is part of the cluster, or move the "
                "model to the CPU"
            )
        parts = workers if workers is not None else max(1, cpus // threads_per_worker)
        chunks = split_contiguous(items, parts, weights)
        return _run_on_ray(ray, fn, chunks, progress, desc, threads_per_worker, gpus_per_worker)
    finally:
        if started or connected:  # a local Ray we started stops; a cluster we connected to only loses us
            ray.shutdown()


def gpu_share(device: Any, workers: int | None, gpu_count: int | None = None) -> float:
    """GPUs per Ray task for a sweep of a model on ``device``: none on the CPU; on CUDA an equal share of this
    machine's GPUs (``gpu_count``, default ``torch.cuda.device_count()``), at most one per task.

    A task that reserves no GPU sees none (Ray empties ``CUDA_VISIBLE_DEVICES``), so a CUDA model could not
    even be unpickled there. The model is rebuilt on the task's first visible GPU, i.e. ``cuda:0`` there: keep
    the model on ``cuda:0`` here.

    Example:
        >>> gpu_share("cpu", 4), gpu_share("cuda:0", 4, gpu_count=1), gpu_share("cuda", 2, gpu_count=4)
        (0.0, 0.25, 1.0)
    """
    import torch

    if torch.device(device).type != "cuda":
        return 0.0
    count = torch.cuda.device_count() if gpu_count is None else gpu_count
    return min(1.0, count / max(1, workers or 1))


def _check_gpus(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InvalidOptionError(f"gpus_per_worker={value!r}: pass a number ≥ 0 (e.g. 0.5: two tasks share a GPU)")
    return float(value)


def check_backend(workers: Any, ray_address: Any) -> int | None:
    """Refuse bad ``workers``/``ray_address`` values, and Ray back ends where Ray is not installed, before any
    long work (a sweep usually starts after minutes of calibration). Returns ``workers`` as an int or None.

    Example:
        >>> check_backend(None, None) is None
        True
        >>> check_backend(0, None)
        Traceback (most recent call last):
        ...
        leantorch.errors.InvalidOptionError: workers=0: pass a whole number ≥ 1 (1 runs in this process)
    """
    workers = None if workers is None else check_count("workers", workers, hint=" (1 runs in this process)")
    if ray_address is not None and (not isinstance(ray_address, str) or not ray_address.strip()):
        raise InvalidOptionError(f"ray_address={ray_address!r}: pass 'auto', 'ray://host:port' or None")
    if (workers or 1) > 1 or ray_address is not None:
        _import_ray(workers, ray_address)
    return workers


def _checked(fn: Callable[[list[T]], list[R]], chunk: list[T]) -> list[R]:
    """``fn(chunk)`` as a list, refused with a typed error if it does not give one result per item."""
    if not chunk:
        return []
    results = fn(chunk)
    try:
        results = list(results)
    except TypeError:
        raise ParallelBackendError(f"the sweep function returned {short_repr(results)}: return a list") from None
    if len(results) != len(chunk):
        raise ParallelBackendError(
            f"the sweep function returned {len(results)} results for {len(chunk)} items: "
            "return one result per item, in order"
        )
    return results


def _import_ray(workers: int | None, ray_address: str | None) -> Any:
    try:
        import ray
    except ImportError:
        asked = f"ray_address={ray_address!r}" if ray_address is not None else f"workers={workers}"
        raise RayNotInstalledError(
            f"{asked} runs the sweep on Ray, which is not installed: {INSTALL_HINT}, "
            "or leave workers=None to run in this process"
        ) from None
    return ray


def _ensure_ray(ray: Any, workers: int | None, ray_address: str | None, threads: int) -> tuple[bool, bool]:
    """Initialize Ray if needed; returns (started a local Ray, connected to a cluster)."""
    if ray.is_initialized():
        log.info("using the Ray instance this process already initialized; it is left running")
        return False, False
    # Ray reports usage statistics over the network unless told not to; a sweep should not phone home.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    common = dict(include_dashboard=False, log_to_driver=False, configure_logging=False, logging_level=logging.WARNING)
    if ray_address is None:
        # "local" always starts a new instance, even where RAY_ADDRESS or a `ray start` cluster exists.
        # Workers are fresh interpreters: give them this process's import path, so that a sweep function
        # defined in a script, a notebook's directory or a test package unpickles there as it would here.
        # Through the environment Ray's processes inherit at start (a runtime_env would cost ~4 s more: it
        # bypasses the pre-started workers); the variable is restored right after.
        saved = os.environ.get("PYTHONPATH")
        path = [p for p in sys.path if p and os.path.isdir(p)] + ([saved] if saved else [])
        os.environ["PYTHONPATH"] = os.pathsep.join(path)
        try:
            # Each task reserves `threads` CPUs; fewer in all would leave tasks waiting forever.
            ray.init(address="local", num_cpus=(workers or 1) * threads, **common)
        finally:
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved
        return True, False
    try:
        ray.init(address=ray_address, **common)
    except (ConnectionError, TimeoutError, ray.exceptions.RayError) as err:
        raise ParallelBackendError(
            f"ray_address={ray_address!r}: could not connect ({type(err).__name__}: "
            f"{_plain(err)}); is the cluster running (`ray status`)?"
        ) from err
    return False, True


def _run_on_ray(
    ray: Any,
    fn: Callable[[list[T]], list[R]],
    chunks: list[list[T]],
    progress: bool,
    desc: str,
    threads: int,
    gpus: float,
) -> list[R]:
    task = ray.remote(num_cpus=threads, num_gpus=gpus)(_run_chunk)
    fn_ref = ray.put(fn)  # pickled once; every task reads the same copy from the object store
    refs = [task.remote(fn_ref, chunk, threads) for chunk in chunks]
    order = {ref: i for i, ref in enumerate(refs)}
    results: list[list[R] | None] = [None] * len(refs)
    pending = list(refs)
    with tqdm(total=len(refs), desc=desc or "chunks", unit="chunk", disable=not progress, leave=False) as bar:
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                results[order[done[0]]] = _get(ray, done[0])
                bar.update(1)
        except BaseException:
            for ref in pending:  # the sweep has failed (or was interrupted): do not wait for the rest
                ray.cancel(ref, force=True)
            raise
    return [r for chunk_results in results for r in chunk_results]  # type: ignore[union-attr]


def _get(ray: Any, ref: Any) -> Any:
    """``ray.get(ref)``, with an error raised by the sweep function re-raised as its own type."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, BaseException) and not isinstance(cause, ray.exceptions.RayError):
            raise cause from err
        hint = ""
        if isinstance(cause, ray.exceptions.RaySystemError) or "No module named" in str(err):
            hint = (
                "; the worker could not load the sweep function or its items: every module they use must be "
                "importable there (on a cluster, install leantorch and your code on every node)"
            )
        raise ParallelBackendError(f"a Ray task failed{hint}: {_plain(err)}") from err
    except ray.exceptions.RayError as err:
        raise ParallelBackendError(
            f"Ray failed while running the sweep ({type(err).__name__}: {_plain(err)}); "
            "with out-of-memory errors, use fewer workers"
        ) from err


def _plain(err: BaseException) -> str:
    """The error's message without the terminal colour codes Ray puts around task names."""
    return re.sub(r"\x1b\[[0-9;]*m", "", str(err))


def _run_chunk(fn: Callable[[list[T]], list[R]], chunk: list[T], threads: int) -> list[R]:
    """The Ray task: one chunk, with a fixed torch thread count (the reason is in :func:`run_chunks`)."""
    import torch

    torch.set_num_threads(threads)
    return _checked(fn, chunk)
