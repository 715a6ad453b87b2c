"""Second moments of what a Conv/Linear layer multiplies its weights with, for exact quadratic objectives.

A Conv2d/Conv1d/Linear output is ``W_g · p`` per group ``g``, where ``p`` is an input patch (the im2col
column; for Linear the feature vector). So the squared output error of a weight change, averaged over
every position of every calibration sample, is a quadratic form in the weights:

    E‖W·p − W̃·p̂‖² = Σ_g  [W_g, −W̃_g] · E[z zᵀ] · [W_g, −W̃_g]ᵀ,   z = (p, p̂)

(``p̂`` is the patch the quantized layer sees; ``p̂ = p`` when inputs are float). Gathering ``E[z zᵀ]`` once
by streaming the data replaces caching every activation, and one optimisation step then costs
``out × K × rank`` instead of a convolution over the cached images. :func:`factorize` returns ``A, B``
with ``E‖…‖² = ‖W Aᵀ − W̃ Bᵀ‖²`` so the target ``W Aᵀ`` is computed once.

AdaRound needs only the gradient, ``∂/∂W̃ = 2 (W̃ E[p̂ p̂ᵀ] − W E[p p̂ᵀ])``: :class:`QuadraticObjective` gathers just
those two blocks (half the work of the full moment, no eigendecomposition) and a step costs one
``out × K × K`` product per group. Where the data spans fewer than ``K/2`` positions (a classifier on a few
hundred samples), the patches themselves are the cheaper factors: :class:`LowRankObjective`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd

from ..errors import CalibrationDataError, InvalidOptionError

__all__ = [
    "supports_moments",
    "require_moments",
    "grouped_weight",
    "patches",
    "InputMoments",
    "factorize",
    "QuadraticObjective",
    "LowRankObjective",
    "layer_objective",
    "CenteredMoments",
]

# Images per chunk when unfolding: a 112×112 depthwise layer's patches of 32 images would take ~350 MB.
_CHUNK = 8


def supports_moments(layer: nn.Module) -> bool:
    """Whether :func:`patches` can unfold this layer's input (Linear, or Conv1d/2d with numeric zero padding).

    Example:
        >>> supports_moments(nn.Conv2d(3, 4, 3, padding=1)), supports_moments(nn.Conv2d(3, 4, 3, padding="same"))
        (True, False)
    """
    if isinstance(layer, nn.Linear):
        return True
    return (
        isinstance(layer, (nn.Conv1d, nn.Conv2d))
        and layer.padding_mode == "zeros"
        and not isinstance(layer.padding, str)
    )


def require_moments(layer: nn.Module, name: str, what: str, title: str) -> None:
    """Refuse a layer :func:`patches` cannot unfold, for an algorithm that needs its input moments.

    Example:
        >>> require_moments(nn.Conv2d(3, 4, 3, padding="same"), "conv", "gptq", "GPTQ")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        leantorch.errors.InvalidOptionError: gptq: layer 'conv' (...) has a padding GPTQ cannot unfold into ...
    """
    if not supports_moments(layer):
        raise InvalidOptionError(
            f"{what}: layer {name!r} ({layer}) has a padding {title} cannot unfold into "
            "input patches; use padding given as numbers with padding_mode='zeros'"
        )


def grouped_weight(layer: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """The weight as ``[groups, out/groups, K]`` with K ordered like :func:`patches` (channel, then kernel).

    Example:
        >>> grouped_weight(nn.Conv2d(4, 8, 3, groups=2), torch.zeros(8, 2, 3, 3)).shape
        torch.Size([2, 4, 18])
    """
    groups = getattr(layer, "groups", 1)
    return weight.reshape(groups, weight.shape[0] // groups, -1)


def patches(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Input patches of ``layer`` for input ``x`` as ``[groups, K, positions]``.

    Example:
        >>> conv = nn.Conv2d(2, 3, 3)
        >>> x = torch.randn(1, 2, 5, 5)
        >>> p = patches(conv, x)
        >>> w = grouped_weight(conv, conv.weight)
        >>> torch.allclose((w @ p).reshape(3, 3, 3), conv(x)[0] - conv.bias[:, None, None], atol=1e-6)
        True
    """
    cols = _columns(layer, x)
    if isinstance(layer, nn.Linear):
        return cols
    groups = cast(_ConvNd, layer).groups
    _, k, length = cols.shape  # [N · groups, K, L] -> [groups, K, N · L]
    return cols.reshape(x.shape[0], groups, k, length).permute(1, 2, 0, 3).reshape(groups, k, -1)


class InputMoments:
    """Running ``E[z zᵀ]`` per group of ``z = (p, p̂)`` (or ``z = p``), accumulated in float64.

    Example:
        >>> layer = nn.Linear(3, 2)
        >>> m = InputMoments(layer)
        >>> m.add(torch.ones(4, 3))
        >>> m.second_moment()[0]
        tensor([[1., 1., 1.],
                [1., 1., 1.],
                [1., 1., 1.]], dtype=torch.float64)
    """

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer
        self.sum: torch.Tensor | None = None
        self.count = 0

    def add(self, x: torch.Tensor, x_quantized: torch.Tensor | None = None) -> None:
        """Accumulate one batch of layer inputs (and what the quantized layer sees for the same samples)."""
        for start in range(0, x.shape[0], _CHUNK):
            z = patches(self.layer, x[start : start + _CHUNK].float())
            if x_quantized is not None:
                z = torch.cat([z, patches(self.layer, x_quantized[start : start + _CHUNK].float())], dim=1)
            moment = torch.bmm(z, z.transpose(1, 2)).double()
            self.sum = moment if self.sum is None else self.sum + moment
            self.count += z.shape[-1]

    def second_moment(self) -> torch.Tensor:
        """``E[z zᵀ]`` as ``[groups, n, n]`` (float64)."""
        if self.sum is None:
            raise CalibrationDataError(
                "no layer inputs were accumulated: call add(x) with at least one batch "
                "of calibration data before second_moment()"
            )
        return self.sum / self.count


def factorize(moment: torch.Tensor, split: bool, rel_tol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """``A, B`` (``[groups, rank, K]``, float32) with ``[W, −W̃] M [W, −W̃]ᵀ = ‖W Aᵀ − W̃ Bᵀ‖²`` per group.

    ``M = Fᵀ F`` through the eigendecomposition (robust where ``M`` is singular, as it is whenever
    ``p̂ = p`` or there are fewer positions than ``K``); directions with eigenvalue below ``rel_tol`` of the
    largest are dropped (float32 products leave ~1e-7 of noise there), which keeps the rank, and so the
    cost of each step, as small as the data allows.
    ``split`` says ``M`` is the moment of ``(p, p̂)``; otherwise ``A = B``.

    Example:
        >>> m = torch.tensor([[[4.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
        >>> a, b = factorize(m, split=False)
        >>> a.shape, float(a.abs().sum())
        (torch.Size([1, 1, 2]), 2.0)
    """
    eigenvalues, vectors = torch.linalg.eigh(moment)
    eigenvalues = eigenvalues.clamp(min=0)
    keep = int((eigenvalues > rel_tol * eigenvalues.amax(dim=-1, keepdim=True)).sum(-1).max())
    keep = max(keep, 1)
    # eigh sorts ascending: the last ``keep`` columns hold the largest eigenvalues in every group
    factor = (eigenvalues[:, -keep:].sqrt().unsqueeze(-1) * vectors[:, :, -keep:].transpose(1, 2)).float()
    if not split:
        return factor, factor
    k = moment.shape[-1] // 2
    return factor[:, :, :k], factor[:, :, k:]


def _columns(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Input patches as ``[batch · groups, K, positions]`` (per sample; :func:`patches` merges the samples).

    Unlike :func:`patches` this needs no permuted copy (and for 1×1 stride-1 convolutions no unfold at all):
    the per-sample products are summed afterwards, which is what makes gathering moments cheap."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1]).t().unsqueeze(0)
    conv = cast(_ConvNd, layer)
    # numeric padding: supports_moments refuses padding="same"/"valid"
    conv_padding = cast(tuple[int, ...], conv.padding)
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    if isinstance(layer, nn.Conv1d):
        x = x.unsqueeze(2)
        kernel, stride = (1, conv.kernel_size[0]), (1, conv.stride[0])
        padding, dilation = (0, conv_padding[0]), (1, conv.dilation[0])
    else:
        kernel, stride, padding, dilation = conv.kernel_size, conv.stride, conv_padding, conv.dilation
    if all(v == 1 for v in (*kernel, *stride, *dilation)) and not any(padding):
        cols = x.reshape(x.shape[0], x.shape[1], -1)  # a 1×1 convolution's patches are its input pixels
    else:
        cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # [N, C·k, L]
    n, ck, length = cols.shape
    return cols.reshape(n * conv.groups, ck // conv.groups, length)


def _per_group_products(
    layer: nn.Module, x: torch.Tensor, x_hat: torch.Tensor | None, with_sums: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``Σ p̂ p̂ᵀ`` and ``Σ p p̂ᵀ`` over positions, per group as ``[groups, K, K]`` (float64), in chunks of
    samples; each input is unfolded once. ``x_hat=None`` means ``p̂ = p`` (then both sums are one tensor).
    ``with_sums`` also gives ``Σp, Σp², Σp̂, Σp̂²`` as ``[4, groups, K]`` from the same unfolded chunks (else None)."""
    groups = getattr(layer, "groups", 1)
    gram: torch.Tensor | None = None
    cross: torch.Tensor | None = None
    sums: torch.Tensor | None = None
    for start in range(0, x.shape[0], _CHUNK):
        p = _columns(layer, x[start : start + _CHUNK].float())
        p_hat = p if x_hat is None else _columns(layer, x_hat[start : start + _CHUNK].float())
        g = torch.bmm(p_hat, p_hat.transpose(1, 2))
        g = g.reshape(-1, groups, *g.shape[1:]).sum(0).double()
        c = g if x_hat is None else torch.bmm(p, p_hat.transpose(1, 2))
        c = c if x_hat is None else c.reshape(-1, groups, *c.shape[1:]).sum(0).double()
        gram, cross = (g, c) if gram is None or cross is None else (gram + g, cross + c)
        if with_sums:
            part = torch.stack([p.sum(-1), p.square().sum(-1), p_hat.sum(-1), p_hat.square().sum(-1)])
            part = part.reshape(4, -1, groups, p.shape[1]).sum(1).double()
            sums = part if sums is None else sums + part
    assert gram is not None and cross is not None
    return gram, cross, sums


def _positions(layer: nn.Module, x: torch.Tensor) -> int:
    """How many patches ``layer`` sees in ``x`` (samples × output positions)."""
    if isinstance(layer, nn.Linear):
        return x.numel() // x.shape[-1]
    return _columns(layer, x[:1]).shape[-1] * x.shape[0]


class QuadraticObjective:
    """``E‖W p − W̃ p̂‖²`` (summed over output channels, averaged over positions) as a function of ``W̃``.

    Gathers ``G = E[p̂ p̂ᵀ]`` and ``C = W E[p p̂ᵀ]`` per group (float64 sums, float32 for the steps), so
    :meth:`gradient` is one product per call; ``p̂ = p`` when ``quantized`` is None.

    Example:
        >>> layer = nn.Linear(3, 2, bias=False)
        >>> x = torch.randn(50, 3)
        >>> objective = QuadraticObjective(layer, layer.weight.detach(), [x])
        >>> float(objective.gradient(layer.weight.detach()).abs().max()) < 1e-5   # W̃ = W is the minimum
        True
    """

    def __init__(
        self,
        layer: nn.Module,
        weight: torch.Tensor,
        inputs: Sequence[torch.Tensor],
        quantized: Sequence[torch.Tensor] | None = None,
    ) -> None:
        self.layer = layer
        gram: torch.Tensor | None = None
        cross: torch.Tensor | None = None
        count = 0
        with torch.no_grad():
            for i, x in enumerate(inputs):
                g, c, _ = _per_group_products(layer, x, quantized[i] if quantized is not None else None)
                gram, cross = (g, c) if gram is None or cross is None else (gram + g, cross + c)
                count += _positions(layer, x)
        if gram is None or cross is None:
            raise CalibrationDataError("no layer inputs: pass at least one batch of calibration data")
        self.gram = (gram / count).float()
        self.target = (grouped_weight(layer, weight.double()) @ (cross / count)).float()

    def gradient(self, candidate: torch.Tensor) -> torch.Tensor:
        """``∂E/∂W̃`` at ``candidate`` (the weight's shape)."""
        w = grouped_weight(self.layer, candidate.float())
        return torch.baddbmm(self.target, w, self.gram, beta=-2.0, alpha=2.0).reshape(candidate.shape)


class LowRankObjective:
    """The same objective from the patches themselves, for data with fewer positions than ``K/2``.

    ``∂/∂W̃ = 2/n · (W̃ P̂ − W P) P̂ᵀ`` costs ``2 · out · K · n`` per call, less than the ``out · K²`` of
    :class:`QuadraticObjective` when ``n < K/2`` (a classifier fitted on a few hundred samples).

    Example:
        >>> layer = nn.Linear(8, 2, bias=False)
        >>> x = torch.randn(3, 8)
        >>> low, full = LowRankObjective(layer, layer.weight, [x]), QuadraticObjective(layer, layer.weight, [x])
        >>> w = torch.randn(2, 8)
        >>> torch.allclose(low.gradient(w), full.gradient(w), atol=1e-5)
        True
    """

    def __init__(
        self,
        layer: nn.Module,
        weight: torch.Tensor,
        inputs: Sequence[torch.Tensor],
        quantized: Sequence[torch.Tensor] | None = None,
    ) -> None:
        self.layer = layer
        with torch.no_grad():
            p = torch.cat([patches(layer, x.float()) for x in inputs], dim=-1)
            p_hat = p if quantized is None else torch.cat([patches(layer, x.float()) for x in quantized], dim=-1)
            self.count = p.shape[-1]
            self.p_hat = p_hat
            self.target = grouped_weight(layer, weight.detach().float()) @ p

    def gradient(self, candidate: torch.Tensor) -> torch.Tensor:
        """``∂E/∂W̃`` at ``candidate`` (the weight's shape)."""
        error = grouped_weight(self.layer, candidate.float()) @ self.p_hat - self.target
        return (error @ self.p_hat.transpose(1, 2)).mul_(2.0 / self.count).reshape(candidate.shape)


def layer_objective(
    layer: nn.Module,
    weight: torch.Tensor,
    inputs: Sequence[torch.Tensor],
    quantized: Sequence[torch.Tensor] | None = None,
) -> QuadraticObjective | LowRankObjective:
    """The cheaper exact form of ``E‖W p − W̃ p̂‖²`` for these inputs (see the two classes).

    Example:
        >>> type(layer_objective(nn.Linear(64, 4), torch.zeros(4, 64), [torch.randn(8, 64)])).__name__
        'LowRankObjective'
    """
    k = grouped_weight(layer, weight).shape[-1]
    if 2 * sum(_positions(layer, x) for x in inputs) < k:
        return LowRankObjective(layer, weight, inputs, quantized)
    return QuadraticObjective(layer, weight, inputs, quantized)


class CenteredMoments:
    """Means and centred second moments of the float patches ``p`` and quantized patches ``p̂`` of one layer:
    ``G = Cov(p̂)``, ``C = Cov(p, p̂)`` (``[groups, K, K]``), ``m = E[p]``, ``m̂ = E[p̂]`` (``[groups, K]``), float64.

    They are what a weight fitted together with a free bias needs: ``min over Ŵ, δ of E‖W p − Ŵ p̂ − δ‖²`` has
    ``δ = W m − Ŵ m̂`` and leaves ``E‖W (p − m) − Ŵ (p̂ − m̂)‖²``, the same objective on centred patches.
    An input whose variance is below ``1e-5`` of its mean square (a saturated ReLU6 channel, constant up to
    float32 rounding) is taken as constant: its rows and columns are zero, as ``E[x²] − E[x]²`` there is only
    the float32 sums' rounding (and can be negative).

    Example:
        >>> layer = nn.Linear(2, 1)
        >>> x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
        >>> m = CenteredMoments(layer, [x], [x + 1])
        >>> m.mean.tolist(), m.mean_quantized.tolist(), m.gram.tolist()
        ([[2.0, 4.0]], [[3.0, 5.0]], [[[1.0, 2.0], [2.0, 4.0]]])
    """

    def __init__(self, layer: nn.Module, inputs: Sequence[torch.Tensor], quantized: Sequence[torch.Tensor]) -> None:
        gram: torch.Tensor | None = None
        cross: torch.Tensor | None = None
        sums: torch.Tensor | None = None
        count = 0
        with torch.no_grad():
            for x, x_hat in zip(inputs, quantized):
                g, c, s = _per_group_products(layer, x, x_hat, with_sums=True)  # s: Σp, Σp², Σp̂, Σp̂²
                assert s is not None
                gram, cross = (g, c) if gram is None or cross is None else (gram + g, cross + c)
                sums = s if sums is None else sums + s
                count += _positions(layer, x)
        if gram is None or cross is None or sums is None:
            raise CalibrationDataError("no layer inputs: pass at least one batch of calibration data")
        mean, square, mean_q, square_q = sums / count
        self.mean, self.mean_quantized = mean, mean_q
        # E[x yᵀ] − E[x] E[y]ᵀ, in float64 (the sums of each chunk are float32 products)
        self.gram = gram / count - mean_q[:, :, None] * mean_q[:, None, :]
        self.cross = cross / count - mean[:, :, None] * mean_q[:, None, :]
        varies = (square - mean**2) > 1e-5 * square
        varies_q = (square_q - mean_q**2) > 1e-5 * square_q
        self.gram *= (varies_q[:, :, None] & varies_q[:, None, :]).to(self.gram.dtype)
        self.cross *= (varies[:, :, None] & varies_q[:, None, :]).to(self.cross.dtype)
