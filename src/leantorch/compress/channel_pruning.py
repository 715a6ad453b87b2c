"""Channel pruning with input-channel selection and least-squares reconstruction (He et al., ICCV 2017).

For a conv layer ``L`` (``groups == 1``) and a kept fraction of its input channels:

1. **Sample** ``L``'s input patches at random output positions (``F.unfold`` with ``L``'s kernel, stride,
   padding, dilation) in the model being compressed, and the same positions in the original model.
   Only Gram matrices are accumulated, so memory does not grow with the number of samples.
2. **Select** input channels greedily on the output reconstruction error (ThiNet's greedy rule, Luo et
   al., 2017, used here in place of He et al.'s LASSO): channel ``c`` contributes ``Z_c = X_c W_cᵀ`` to
   the output; the channels removed are the ones whose *summed* contribution ``‖Σ_{c∈R} Z_c‖²`` stays
   smallest, added one at a time. With ``G_cd = ⟨Z_c, Z_d⟩`` each step costs O(channels), and ``G`` comes
   from the input Gram matrix and ``WᵀW`` without forming any ``Z``.
3. **Reconstruct**: the kept weights are re-fitted by (ridge-stabilised) least squares so that the pruned
   layer, fed the compressed model's inputs, reproduces the original layer's outputs on the samples.
4. **Remove** the matching output channels upstream: walking back from ``L`` through channel-wise ops
   (ReLU/ReLU6/activations, BatchNorm, zero padding, pooling, dropout) and depthwise convs (whose
   channels are removed too — they propagate the pruning) to the producing conv.

:func:`pruning_path` is the single-chain case; channels tied by residual adds, concatenations or fan-out are
pruned together as one dependency group (:mod:`~leantorch.compress.pruning_groups`,
:mod:`~leantorch.compress.group_pruning`), which the ``channel_pruning`` scheme uses.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from .. import ops
from ..batches import run_batch
from ..graph import as_tuple

__all__ = [
    "PruningPath",
    "prunable_layer",
    "pruning_path",
    "GramAccumulator",
    "sample_grams",
    "select_channels",
    "channel_contribution",
    "greedy_keep",
    "reconstruct",
    "prune_channels",
    "channels_for_ratio",
]


@dataclass
class PruningPath:
    """What pruning ``layer``'s input channels touches: BatchNorms and depthwise convs on the way up,
    and the producing conv whose output channels go."""

    layer: str
    batch_norms: list[str]
    depthwise: list[str]
    producer: str


def _is_depthwise(m: nn.Module) -> bool:
    # The shared definition (leantorch.ops.conv), limited to the exact class: pruning rebuilds the layer as a
    # plain nn.Conv2d, which would drop a subclass's own forward.
    return type(m) is nn.Conv2d and ops.is_depthwise(m)


def prunable_layer(m: nn.Module) -> bool:
    """A regular (``groups == 1``) Conv2d whose input channels can be selected."""
    return type(m) is nn.Conv2d and m.groups == 1 and m.in_channels > 1 and m.padding_mode == "zeros"


def pruning_path(gm: fx.GraphModule, layer: str) -> PruningPath | str:
    """The :class:`PruningPath` of ``layer`` in a prepared graph, or the reason it must be skipped.

    Example:
        >>> from leantorch import prepare
        >>> gm = prepare(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)),
        ...              torch.randn(1, 3, 8, 8))
        >>> pruning_path(gm, "3")
        PruningPath(layer='3', batch_norms=['1'], depthwise=[], producer='0')
    """
    nodes = {str(n.target): n for n in gm.graph.nodes if n.op == "call_module"}
    node = nodes[layer].args[0]
    batch_norms, depthwise = [], []
    while True:
        if not isinstance(node, fx.Node) or node.op != "call_module":
            what = node.op if isinstance(node, fx.Node) else type(node).__name__
            return f"its input comes from {what} {getattr(node, 'target', '')!s}, not from a conv"
        if len(node.users) != 1:
            return f"the output of {node.target} also feeds {len(node.users) - 1} other op(s) (tied channels)"
        module = gm.get_submodule(str(node.target))
        if isinstance(module, nn.BatchNorm2d):
            batch_norms.append(str(node.target))
        elif _is_depthwise(module):
            depthwise.append(str(node.target))
        elif type(module) is nn.Conv2d and module.groups == 1:
            return PruningPath(layer, batch_norms, depthwise, str(node.target))
        elif not ops.has_role(module, "prune_channelwise"):  # mixes channels, or keeps state per channel
            return f"{node.target} ({type(module).__name__}) ties or mixes channels"
        node = node.args[0]


class GramAccumulator:
    """Σ XᵀX of the compressed model's patches and Σ XᵀX' against the original model's patches."""

    def __init__(self) -> None:
        self.current: torch.Tensor | None = None
        self.cross: torch.Tensor | None = None
        self.count = 0

    def add(self, current: torch.Tensor, original: torch.Tensor) -> None:
        xc, xo = current.double(), original.double()
        gram, cross = xc.t() @ xc, xc.t() @ xo
        self.current = gram if self.current is None else self.current + gram
        self.cross = cross if self.cross is None else self.cross + cross
        self.count += xc.shape[0]

    def add_inputs(
        self,
        conv: nn.Conv2d,
        current: torch.Tensor,
        original: torch.Tensor,
        samples_per_image: int,
        generator: torch.Generator,
    ) -> None:
        """Add the patches of one batch of ``conv``'s inputs (``current``: the model being compressed,
        ``original``: the original model) at ``samples_per_image`` random output positions per image.

        The positions come from ``generator`` (one ``randperm`` per image, in order), so feeding the same
        batches in the same order gives the same Gram matrices however the inputs were obtained."""
        out_h, out_w = (
            math.floor(
                (current.shape[d + 2] + 2 * conv.padding[d] - conv.dilation[d] * (conv.kernel_size[d] - 1) - 1)
                / conv.stride[d]
            )
            + 1
            for d in (0, 1)
        )
        count = min(samples_per_image, out_h * out_w)
        positions = torch.stack(
            [torch.randperm(out_h * out_w, generator=generator)[:count] for _ in range(current.shape[0])]
        )
        self.add(_patches(conv, current, positions), _patches(conv, original, positions))


def _patches(conv: nn.Conv2d, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Unfolded input patches ``[B * S, C·kh·kw]`` at ``positions`` (``[B, S]`` indices)."""
    cols = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # (B, C·k, P)
    picked = torch.gather(cols, 2, positions[:, None, :].expand(-1, cols.shape[1], -1).to(cols.device))
    return picked.permute(0, 2, 1).reshape(-1, cols.shape[1])


def sample_grams(
    model: nn.Module, original: nn.Module, layer: str, data: Iterable[Any], samples_per_image: int = 16, seed: int = 0
) -> GramAccumulator:
    """Gram matrices of ``layer``'s input patches in ``model`` and ``original`` at shared random positions.

    ``data``: the model inputs of each batch, a tensor or a tuple of tensors (labels already dropped, see
    :func:`leantorch.batches.model_inputs`)."""
    conv = model.get_submodule(layer)
    grams = GramAccumulator()
    gen = torch.Generator().manual_seed(seed)
    captured: dict[str, torch.Tensor] = {}

    def grab(key: str):  # type: ignore[no-untyped-def]
        def hook(_m: nn.Module, args: tuple) -> None:
            captured[key] = args[0].detach()

        return hook

    handles = [
        conv.register_forward_pre_hook(grab("current")),
        original.get_submodule(layer).register_forward_pre_hook(grab("original")),
    ]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for index, batch in enumerate(data):
                inputs = tuple(x.to(device) for x in as_tuple(batch))  # the model inputs of a batch
                run_batch(model, inputs, index)  # a batch that does not fit: CalibrationDataError naming it
                run_batch(original, inputs, index)
                grams.add_inputs(conv, captured["current"], captured["original"], samples_per_image, gen)
    finally:
        for h in handles:
            h.remove()
    return grams


def select_channels(weight: torch.Tensor, gram: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices (sorted) of the ``keep`` input channels to keep: greedy removal of the channels whose
    summed output contribution is smallest (see the module docstring).

    Example:
        >>> w = torch.ones(2, 3, 1, 1); w[:, 1] = 0.01       # channel 1 contributes almost nothing
        >>> select_channels(w, torch.eye(3), keep=2).tolist()
        [0, 2]
    """
    return greedy_keep(channel_contribution(weight, gram), keep)


def channel_contribution(weight: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """``G_cd = ⟨Z_c, Z_d⟩`` (float64, channels × channels) from the layer's weight (a conv's
    ``(out, C, kh, kw)`` or a linear's ``(out, C)``) and the Gram matrix of its input patches.

    Example:
        >>> channel_contribution(torch.tensor([[1.0, 2.0]]), torch.ones(2, 2)).tolist()  # identical inputs
        [[1.0, 2.0], [2.0, 4.0]]
    """
    n_out, channels = weight.shape[:2]
    k = weight[0, 0].numel()
    w2 = weight.detach().double().reshape(n_out, channels * k).to(gram.device)
    return ((w2.t() @ w2) * gram.double()).reshape(channels, k, channels, k).sum(dim=(1, 3))


def greedy_keep(contribution: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices (sorted) of the ``keep`` channels left when the channels are removed one by one, each time
    the one that least increases ``‖Σ_R Z‖² = Σ_{c,d∈R} G_cd`` (``contribution`` = G).

    Example:
        >>> greedy_keep(torch.diag(torch.tensor([3.0, 1.0, 2.0])), keep=1).tolist()
        [0]
    """
    channels = contribution.shape[0]
    removed = torch.zeros(channels, dtype=torch.bool, device=contribution.device)
    increase = contribution.diagonal().clone()  # growth of ‖Σ_R Z‖² if the channel joins R
    for _ in range(channels - keep):
        candidate = int(torch.where(removed, torch.full_like(increase, math.inf), increase).argmin())
        removed[candidate] = True
        increase += 2 * contribution[candidate]
    return torch.nonzero(~removed).flatten().cpu()


def reconstruct(weight: torch.Tensor, grams: GramAccumulator, kept: torch.Tensor, ridge: float = 1e-2) -> torch.Tensor:
    """Least-squares weights ``(n_out, kept, kh, kw)`` reproducing ``X_original · Wᵀ`` from the kept channels
    of ``X_compressed`` (normal equations on the sampled Gram matrices, with a ridge relative to their mean
    diagonal that pulls towards the original weights: keeping every channel of an unchanged input returns
    them exactly).

    Example:
        >>> x, w = torch.randn(200, 3), torch.randn(2, 3, 1, 1)
        >>> grams = GramAccumulator(); grams.add(x, x)
        >>> torch.allclose(reconstruct(w, grams, torch.arange(3)), w, atol=1e-5)
        True
    """
    if weight.dim() == 2:  # a linear layer: a 1×1 conv on one "pixel"
        return reconstruct(weight[:, :, None, None], grams, kept, ridge)[:, :, 0, 0]
    n_out, channels, kh, kw = weight.shape
    k = kh * kw
    columns = (kept[:, None] * k + torch.arange(k)[None, :]).flatten()
    assert grams.current is not None and grams.cross is not None
    w2 = weight.detach().double().reshape(n_out, channels * k).to(grams.current.device)
    columns = columns.to(grams.current.device)
    a = grams.current[columns][:, columns]
    b = grams.cross[columns] @ w2.t()  # X_Sᵀ Y with Y = X_original Wᵀ
    # The ridge pulls towards the original weights of the kept channels, not towards zero: with fewer samples
    # than unknowns (a wide 1×1 conv, a linear head after global pooling) the directions the samples do not
    # see keep their trained values instead of vanishing.
    damping = ridge * (a.trace() / len(columns) + 1e-12)
    a = a + damping * torch.eye(len(columns), dtype=a.dtype, device=a.device)
    b = b + damping * w2[:, columns].t()
    solution = torch.linalg.solve(a, b)  # (|S|·k, n_out)
    return solution.t().reshape(n_out, len(kept), kh, kw).to(device=weight.device, dtype=weight.dtype)


def prune_channels(gm: fx.GraphModule, path: PruningPath, kept: torch.Tensor, new_weight: torch.Tensor) -> None:
    """Give ``path.layer`` the weight ``new_weight`` over the ``kept`` input channels and remove the other
    channels from every BatchNorm/depthwise conv on the path and from the producer's outputs (in place).

    All new tensors are computed before anything is assigned, so an error leaves ``gm`` as it was.
    """
    kept = kept.to(new_weight.device)
    producer = gm.get_submodule(path.producer)
    updates: list[tuple[nn.Module, dict[str, Any]]] = [
        (gm.get_submodule(path.layer), {"weight": nn.Parameter(new_weight.contiguous()), "in_channels": len(kept)})
    ]
    for name in path.batch_norms:
        bn = gm.get_submodule(name)
        fields: dict[str, Any] = {"num_features": len(kept)}
        for attr in ("running_mean", "running_var"):
            if getattr(bn, attr) is not None:
                fields[attr] = getattr(bn, attr)[kept].clone()
        for attr in ("weight", "bias"):
            if getattr(bn, attr) is not None:
                fields[attr] = nn.Parameter(getattr(bn, attr).detach()[kept].clone())
        updates.append((bn, fields))
    for name in path.depthwise:
        dw = gm.get_submodule(name)
        fields = {
            "weight": nn.Parameter(dw.weight.detach()[kept].clone()),
            "in_channels": len(kept),
            "out_channels": len(kept),
            "groups": len(kept),
        }
        if dw.bias is not None:
            fields["bias"] = nn.Parameter(dw.bias.detach()[kept].clone())
        updates.append((dw, fields))
    fields = {"weight": nn.Parameter(producer.weight.detach()[kept].clone()), "out_channels": len(kept)}
    if producer.bias is not None:
        fields["bias"] = nn.Parameter(producer.bias.detach()[kept].clone())
    updates.append((producer, fields))
    for module, values in updates:
        for attr, value in values.items():
            setattr(module, attr, value)


def channels_for_ratio(conv: nn.Conv2d, ratio: float, multiple: int = 1) -> int:
    """Input channels to keep so that the layer's MACs are about ``ratio`` of its own (they scale linearly),
    rounded up to ``multiple``, within ``[1, in_channels]``.

    Example:
        >>> channels_for_ratio(nn.Conv2d(64, 32, 1), 0.3, multiple=8)
        24
    """
    keep = max(1, math.floor(ratio * conv.in_channels))
    if multiple > 1:
        keep = math.ceil(keep / multiple) * multiple
    return min(keep, conv.in_channels)
