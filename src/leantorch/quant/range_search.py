"""The expected-noise range search of tf_enhanced and mse (objective: :mod:`leantorch.quant.estimators`).

:func:`expected_noise` sums every candidate's noise bin by bin, O(C·K·B); :func:`search_noise` gets the same
values in O(C·(B + K)) from prefix sums over the equally spaced bins, and is what the estimators use.
"""

from __future__ import annotations

import torch

__all__ = ["expected_noise", "search_noise", "search_values"]


def expected_noise(
    hist: torch.Tensor, centres: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, delta: torch.Tensor, gamma: float
) -> torch.Tensor:
    """Expected quantization noise of range candidates (see module docstring), summed bin by bin.

    The O(C·K·B) reference of :func:`search_noise`. ``hist``/``centres``: ``[C, B]``;
    ``lo``/``hi``/``delta``: ``[C, K]``; returns ``[C, K]``.
    """
    c = centres[:, None, :]
    a, b = lo[..., None], hi[..., None]
    clip_err = torch.where(c < a, (a - c) ** 2, torch.where(c > b, (c - b) ** 2, torch.zeros_like(c)))
    in_range = (c >= a) & (c <= b)
    noise = in_range * (delta[..., None] ** 2 / 12.0) + gamma * clip_err
    return (noise * hist[:, None, :]).sum(-1)


def search_noise(
    hist: torch.Tensor, centres: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, delta: torch.Tensor, gamma: float
) -> torch.Tensor:
    """:func:`expected_noise` in O(C·(B + K·log B)), from prefix sums over the (equally spaced) bins.

    With ``r = a - c_j`` for the last centre ``c_j < a`` and ``d_i = j - i`` bins, the clipping noise below
    ``a`` is ``Σ p_i (r + d_i w)² = r² Σp + 2rw Σp·d + w² Σp·d²``: all terms are non-negative (no
    cancellation), and ``Σp·d``, ``Σp·d²`` are exact integer sums, known per ``j`` from prefix sums of ``p``,
    ``p·i``, ``p·i²``. Likewise above ``b``. Channels go in chunks that keep every temporary in cache.

    Example:
        >>> hist = torch.rand(2, 64, dtype=torch.float64).mul(9).round()
        >>> centres = (torch.arange(64.0, dtype=torch.float64) + 0.5).expand(2, 64) / 64
        >>> lo, hi = torch.rand(2, 5, dtype=torch.float64) * 0.4, 0.6 + torch.rand(2, 5, dtype=torch.float64) * 0.4
        >>> ref = expected_noise(hist, centres, lo, hi, (hi - lo) / 15, 3.0)
        >>> bool(torch.allclose(search_noise(hist, centres, lo, hi, (hi - lo) / 15, 3.0), ref, rtol=1e-12))
        True
    """
    channels, bins = hist.shape
    # ~128k elements per temporary: cache-resident, and few enough chunks that per-op overhead stays small.
    chunk = max(1, (1 << 17) // max(bins + 1, lo.shape[1]))
    parts = [
        _search_chunk(
            hist[s : s + chunk],
            centres[s : s + chunk],
            lo[s : s + chunk],
            hi[s : s + chunk],
            delta[s : s + chunk],
            gamma,
        )
        for s in range(0, channels, chunk)
    ]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _search_chunk(
    hist: torch.Tensor, centres: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, delta: torch.Tensor, gamma: float
) -> torch.Tensor:
    channels, bins = hist.shape
    width = (centres[:, -1:] - centres[:, :1]) / max(bins - 1, 1)
    i = torch.arange(bins + 1, dtype=hist.dtype, device=hist.device)
    zero = hist.new_zeros(channels, 1)
    # Per n = number of bins counted from the left: mass, Σp·(n-1-i) and Σp·(n-1-i)² over bins i < n ...
    mass = torch.cat([zero, hist.cumsum(1)], 1)
    first = torch.cat([zero, (hist * i[:bins]).cumsum(1)], 1)
    second = torch.cat([zero, (hist * i[:bins] ** 2).cumsum(1)], 1)
    below_n = _count_centres(centres, width, lo, inclusive=False)  # bins with centre < a (clipped)
    above_n = _count_centres(centres, width, hi, inclusive=True)  # bins with centre <= b
    # Gathered at [C, K] before combining: cheaper than combining at [C, B+1] when K < B.
    p, s1, s2 = mass.gather(1, below_n), first.gather(1, below_n), second.gather(1, below_n)
    j = below_n.to(hist.dtype) - 1
    left1, left2 = j * p - s1, (j * j) * p - 2 * j * s1 + s2
    # ... and over bins i >= n: mass, Σp·(i-n), Σp·(i-n)².
    q = above_n.to(hist.dtype)
    at_b = mass.gather(1, above_n)
    rp = mass[:, -1:] - at_b
    r1, r2 = first[:, -1:] - first.gather(1, above_n), second[:, -1:] - second.gather(1, above_n)
    right1, right2 = r1 - q * rp, r2 - 2 * q * r1 + (q * q) * rp
    # Distance to the centre just left of a (bin n-1) and just right of b (bin n); 0 where there is none.
    r = torch.where(below_n > 0, lo - centres.gather(1, (below_n - 1).clamp(min=0)), 0.0)
    s = torch.where(above_n < bins, centres.gather(1, above_n.clamp(max=bins - 1)) - hi, 0.0)
    below = r * (r * p + 2 * width * left1) + width * width * left2
    above = s * (s * rp + 2 * width * right1) + width * width * right2
    inside = at_b - p
    return inside * (delta * delta / 12.0) + gamma * (below + above)


def _count_centres(centres: torch.Tensor, width: torch.Tensor, x: torch.Tensor, inclusive: bool) -> torch.Tensor:
    """Per row, how many centres are ``< x`` (``<= x`` when ``inclusive``): ``torch.searchsorted``'s answer.

    Why not searchsorted: batched over rows it is ~100x slower on CPU than this arithmetic guess (the centres
    are equally spaced) corrected against the actual centres, which float rounding can shift by a hair.
    """
    bins = centres.shape[1]
    guess = torch.nan_to_num((x - centres[:, :1]) / width, nan=0.0, posinf=bins, neginf=0.0)
    # Truncation, not floor/ceil (slow on CPU here); the corrections below absorb the difference.
    count = (guess + 1 if inclusive else guess + 0.5).clamp_(0, bins).to(torch.int64)
    inf = centres.new_full((centres.shape[0], 1), float("inf"))
    padded = torch.cat([-inf, centres, inf], 1)  # padded[n] is centre n-1, padded[n + 1] centre n
    for _ in range(bins + 1):
        left, right = padded.gather(1, count), padded.gather(1, count + 1)
        too_many = left > x if inclusive else left >= x  # centre count-1 should not be counted
        too_few = right <= x if inclusive else right < x  # centre count should be counted
        if not bool((too_many | too_few).any()):
            break
        count = count - too_many.long() + too_few.long()
    return count


def search_values(
    positions: torch.Tensor, unit: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, delta: torch.Tensor, gamma: float
) -> torch.Tensor:
    """:func:`expected_noise` of a histogram given as the sorted bin centres of its values, one per value.

    Why: a channel with few values (a depthwise conv's 9 weights) fills few of its histogram's slots, and a
    search over the slots costs O(slots) per channel whatever the number of values; here it costs O(N log N).
    ``positions``: ``[C, N]`` sorted, each value's bin centre in units of ``unit`` (``[C]``): ``2k ± 1`` for bin
    ``k ≠ 0``, 0 for bin 0, so every sum below is an exact integer in float64. ``lo``/``hi``/``delta``: ``[C, K]``.
    With ``d_i ≥ 0`` the distance of a clipped centre from the last one inside the clipped side, the clipping
    noise ``Σ (r + d_i)² = n r² + 2r Σd + Σd²`` adds non-negative terms only (no cancellation), as
    :func:`search_noise` does.

    Example:
        >>> positions = torch.tensor([[-3.0, 0.0, 0.0, 1.0, 5.0]], dtype=torch.float64)   # unit 0.25
        >>> unit, lo, hi = torch.tensor([0.25], dtype=torch.float64), torch.tensor([[-0.5]]), torch.tensor([[1.0]])
        >>> ref = expected_noise(torch.ones(1, 5, dtype=torch.float64), positions * 0.25, lo, hi, (hi - lo) / 15, 3.0)
        >>> bool(torch.allclose(search_values(positions, unit, lo, hi, (hi - lo) / 15, 3.0), ref, rtol=1e-12))
        True
    """
    channels, count = positions.shape
    zero = positions.new_zeros(channels, 1)
    first = torch.cat([zero, positions.cumsum(1)], 1)
    second = torch.cat([zero, (positions * positions).cumsum(1)], 1)
    a, b = lo / unit[:, None], hi / unit[:, None]  # exact: unit is a power of two
    below_n = torch.searchsorted(positions, a.contiguous(), side="left")  # centres < a: clipped below
    inside_end = torch.searchsorted(positions, b.contiguous(), side="right")  # centres <= b
    n = below_n.to(positions.dtype)
    last_below = positions.gather(1, (below_n - 1).clamp(min=0))
    s1, s2 = first.gather(1, below_n), second.gather(1, below_n)
    d1, d2 = n * last_below - s1, n * last_below * last_below - 2 * last_below * s1 + s2
    r = torch.where(below_n > 0, a - last_below, 0.0)
    below = n * r * r + 2 * r * d1 + d2
    m = (count - inside_end).to(positions.dtype)
    first_above = positions.gather(1, inside_end.clamp(max=count - 1))
    t1, t2 = first[:, -1:] - first.gather(1, inside_end), second[:, -1:] - second.gather(1, inside_end)
    e1, e2 = t1 - m * first_above, t2 - 2 * first_above * t1 + m * first_above * first_above
    s = torch.where(inside_end < count, first_above - b, 0.0)
    above = m * s * s + 2 * s * e1 + e2
    inside = (inside_end - below_n).to(positions.dtype)
    return inside * (delta * delta / 12.0) + gamma * (unit * unit)[:, None] * (below + above)
