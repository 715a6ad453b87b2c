"""``CompressConfig``: everything :func:`leantorch.compress` is configured with, checked once on construction.

``lt.compress(model, x, eval_fn, "spatial_svd", 0.5, candidates=5)`` and
``lt.compress(model, x, eval_fn, options=CompressConfig(scheme="spatial_svd", target_mac_ratio=0.5, candidates=5))``
are the same call: the keyword API is a thin layer over this frozen dataclass.

Example:
    >>> CompressConfig(scheme=["spatial_svd", "channel_pruning"], target_mac_ratio=0.4).schemes
    ('spatial_svd', 'channel_pruning')
    >>> CompressConfig(target_mac_ratio=1.5)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    leantorch.compress.ratio_selection.CompressionError: target_mac_ratio=1.5 must be in (0, 1): ...
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import InvalidOptionError
from ..options import as_names, check_count
from ..parallel import check_backend
from .ratio_selection import CompressionError
from .schemes import scheme_names

__all__ = ["CompressConfig"]


@dataclass(frozen=True)
class CompressConfig:
    """The options of :func:`leantorch.compress` (see its docstring for each one's meaning).

    Attributes:
        scheme: a registered scheme's name (``weight_svd``, ``spatial_svd``, ``channel_pruning`` ...) or a sequence
            of them, run as stages.
        target_mac_ratio: overall MACs after / before, in (0, 1).
        ratios: manual per-layer ratios ``{layer: ratio}`` (single stage; no eval-score table).
        stage_targets: per-stage targets whose product is ``target_mac_ratio``.
        candidates: number of evenly spaced candidate ratios, or the ratios themselves.
        rank_multiple: round ranks / kept channels up to a multiple of this.
        skip_layers: layer names to leave alone (a string is one name).
        cache_dir: where eval-score tables are saved and reused.
        layer_callback: ``callback(model, layer)`` after each layer is compressed.
        num_batches, samples_per_image: channel pruning's activation sampling.
        progress: show progress bars.
        workers, ray_address: where the eval-score table runs (this process, or Ray workers).
    """

    scheme: str | Sequence[str] = "spatial_svd"
    target_mac_ratio: float = 0.5
    ratios: dict[str, float] | None = None
    stage_targets: Sequence[float] | None = None
    candidates: int | Sequence[float] = 10
    rank_multiple: int = 8
    skip_layers: str | Sequence[str] = ()
    cache_dir: str | Path | None = None
    layer_callback: Callable[[nn.Module, str], None] | None = None
    num_batches: int = 4
    samples_per_image: int = 16
    progress: bool = True
    workers: int | None = None
    ray_address: str | None = None

    def __post_init__(self) -> None:
        _check_arguments(list(self.schemes), self.target_mac_ratio, self.ratios, self.stage_targets, self.candidates)
        check_count(
            "rank_multiple",
            self.rank_multiple,
            hint=" (1 keeps exact ranks and channel counts; 8 rounds them up to multiples of 8)",
        )
        check_count("num_batches", self.num_batches)
        check_count("samples_per_image", self.samples_per_image)
        # Normalised once here (a frozen dataclass sets its own fields through object.__setattr__): a string is
        # one layer name, not a set of substrings; workers becomes an int or None (Ray checked before any work).
        object.__setattr__(self, "skip_layers", tuple(as_names("skip_layers", self.skip_layers)))
        object.__setattr__(self, "workers", check_backend(self.workers, self.ray_address))

    @property
    def schemes(self) -> tuple[str, ...]:
        """The stages' schemes, in order."""
        return (self.scheme,) if isinstance(self.scheme, str) else tuple(self.scheme)

    @property
    def serial(self) -> bool:
        """Whether the eval-score table runs in this process (no Ray workers)."""
        return (self.workers or 1) == 1 and self.ray_address is None


def _check_arguments(
    schemes: list[str],
    target: float,
    ratios: dict[str, float] | None,
    stage_targets: Sequence[float] | None,
    candidates: int | Sequence[float],
) -> None:
    unknown = [s for s in schemes if s not in scheme_names()]
    if not schemes or unknown:
        raise CompressionError(f"unknown scheme(s) {unknown or schemes}: use {', '.join(scheme_names())}")
    if not (isinstance(target, (int, float)) and 0.0 < target < 1.0):
        raise CompressionError(f"target_mac_ratio={target!r} must be in (0, 1): e.g. 0.5 keeps half the MACs")
    if ratios is not None and len(schemes) > 1:
        raise CompressionError("manual ratios apply to a single scheme; run the stages one by one")
    if stage_targets is not None:
        if len(stage_targets) != len(schemes) or not all(0.0 < t <= 1.0 for t in stage_targets):
            raise CompressionError("stage_targets needs one ratio in (0, 1] per scheme")
        if not math.isclose(math.prod(stage_targets), target, rel_tol=1e-3):
            raise CompressionError(
                f"the product of stage_targets ({math.prod(stage_targets):.4g}) must equal target_mac_ratio ({target})"
            )
    if not _valid_candidates(candidates):
        raise InvalidOptionError(
            f"candidates={candidates!r}: pass a count ≥ 2 (evenly spaced ratios) or ratios in "
            "(0, 1] with at least one below 1, e.g. [0.25, 0.5, 0.75]"
        )


def _valid_candidates(candidates: Any) -> bool:
    """A count ≥ 2 or ratios in (0, 1] with one below 1.0: without such a ratio nothing can be compressed,
    which would otherwise surface later as "the target cannot be reached"."""
    if isinstance(candidates, bool) or isinstance(candidates, str):
        return False
    if isinstance(candidates, numbers.Integral):
        return candidates >= 2
    try:
        ratios = list(candidates)
    except TypeError:
        return False
    valid = [r for r in ratios if isinstance(r, numbers.Real) and not isinstance(r, bool) and 0.0 < r <= 1.0]
    return len(valid) == len(ratios) and any(r < 1.0 for r in valid)
