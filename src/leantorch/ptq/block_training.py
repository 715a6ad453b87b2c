"""One block's reconstruction (BRECQ, QDrop): learn the rounding of its weights and, optionally, the step sizes of
its activation quantizers, so that the quantized block's output matches the float block's.

Per step: a mini-batch of cached block inputs (rows drawn from all calibration samples, as many as one
calibration batch holds, so that values like ``x.size(0)`` the block reads stay right), the block's nodes run
on ``sim.model`` with each weight replaced by its soft rounding (:class:`~.block_rounding.SoftRounding`), loss

    Σ_channels (ŷ − y)² averaged over samples and positions   +   λ · Σ_weights (1 − |2h(V) − 1|^β)

(QDrop's, with ``y`` the float block's output on the float model's input), Adam on ``V`` and on the step sizes
(LSQ gradients of :func:`~leantorch.quant.primitives.learnable_fake_quantize`). ``β`` anneals from 20 to 2 after a
warm-up without the regulariser, as in :mod:`.adaround`. QDrop: with probability ``drop_prob``, element-wise,
each activation quantizer of the block passes its float input instead of its quantized output, and the block's
input is the float model's instead of the quantized model's; so the weights learn to be flat under the noise of
activation quantization rather than to fit one draw of it. Evaluation and the sweep that follows see no drop.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import fx, nn

from ..quant.quantizer import Quantizer
from .block_rounding import SoftRounding

__all__ = ["BlockData", "TrainSettings", "train_block", "run_nodes"]


@dataclass
class BlockData:
    """A block's cached inputs and targets over the calibration set.

    Attributes:
        quantized, floats: per input node, the quantized model's and the float model's value for all samples
            (concatenated along dim 0).
        side: per input node read whole (not per sample: sizes, constants), its value in each batch.
        targets: the float block's output for all samples.
        sizes: the number of samples of each calibration batch.
    """

    quantized: dict[fx.Node, torch.Tensor]
    floats: dict[fx.Node, torch.Tensor]
    side: dict[fx.Node, list[Any]]
    targets: torch.Tensor
    sizes: list[int]


@dataclass(frozen=True)
class TrainSettings:
    """The optimisation options of :class:`~.block_reconstruction.BlockReconstructionConfig` one block needs."""

    iterations: int
    lr: float
    act_lr: float
    reg_param: float
    beta_range: tuple[float, float]
    warm_start: float
    drop_prob: float
    batch_size: int


def run_nodes(gm: fx.GraphModule, nodes: Sequence[fx.Node], env: dict[fx.Node, Any]) -> Any:
    """Run ``nodes`` of ``gm`` in order on ``env`` (the values of the nodes they read from before them); return the
    last one's value. ``env`` receives the values of ``nodes``.

    Example:
        >>> gm = fx.symbolic_trace(nn.Sequential(nn.Linear(3, 2), nn.ReLU()))
        >>> x, linear, relu = list(gm.graph.nodes)[:3]
        >>> run_nodes(gm, [relu], {linear: torch.tensor([[-1.0, 2.0]])}).tolist()
        [[0.0, 2.0]]
    """
    for node in nodes:
        args = fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
        if node.op == "get_attr":
            value: Any = gm
            for part in str(node.target).split("."):
                value = getattr(value, part)
        elif node.op == "call_module":
            value = gm.get_submodule(str(node.target))(*args, **kwargs)
        elif node.op == "call_function":
            value = node.target(*args, **kwargs)  # type: ignore[operator]
        elif node.op == "call_method":
            receiver, *rest = args
            value = getattr(receiver, str(node.target))(*rest, **kwargs)
        else:
            raise ValueError(f"a block holds only computing nodes, not {node.op} {node.name}")
        env[node] = value
    return env[nodes[-1]]


def train_block(
    gm: fx.GraphModule,
    nodes: Sequence[fx.Node],
    layers: dict[str, tuple[nn.Module, SoftRounding]],
    act_quantizers: list[Quantizer],
    data: BlockData,
    settings: TrainSettings,
    gen: torch.Generator,
) -> list[float]:
    """Train the soft roundings of ``layers`` (name → (the wrapped layer, its rounding)) and the step sizes of those
    of ``act_quantizers`` (the block's active activation quantizers, all subject to QDrop's drop) under range
    learning, on ``data``; returns the reconstruction loss at each step.

    The weight quantizers of ``layers`` must be off (the soft weight is the quantized weight)."""
    roundings = [rounding for _, rounding in layers.values()]
    optimizer = torch.optim.Adam([r.v for r in roundings], lr=settings.lr)
    scales = [cast(torch.Tensor, q.scale) for q in act_quantizers if q.is_learnable]
    act_optimizer = torch.optim.Adam(scales, lr=settings.act_lr) if scales else None
    schedule = (
        torch.optim.lr_scheduler.CosineAnnealingLR(act_optimizer, T_max=settings.iterations, eta_min=0.0)
        if act_optimizer is not None
        else None
    )
    total = data.targets.shape[0]
    warm = int(settings.warm_start * settings.iterations)
    beta_start, beta_end = settings.beta_range
    losses = []
    with _drop(act_quantizers, settings.drop_prob, gen):
        for step in range(settings.iterations):
            batch = int(torch.randint(len(data.sizes), (1,), generator=gen))
            # a value read whole (x.size(0)) holds its batch's count: draw as many rows then
            count = data.sizes[batch] if data.side else min(settings.batch_size, total)
            rows = torch.randint(total, (count,), generator=gen).to(data.targets.device)
            env: dict[fx.Node, Any] = {node: values[batch] for node, values in data.side.items()}
            for node, quantized in data.quantized.items():
                x = quantized[rows]
                if settings.drop_prob > 0:  # QDrop: the float model's input, element-wise, with drop_prob
                    keep = _uniform(x, gen) < settings.drop_prob
                    x = torch.where(keep, data.floats[node][rows], x)
                env[node] = x
            with _soft_weights(layers):
                out = run_nodes(gm, nodes, env)
            rec = _reconstruction(out, data.targets[rows])
            loss = rec
            if step >= warm and settings.reg_param > 0:
                progress = (step - warm) / max(1, settings.iterations - warm)
                beta = beta_end + 0.5 * (beta_start - beta_end) * (1 + math.cos(progress * math.pi))
                loss = loss + settings.reg_param * sum((r.regularizer(beta) for r in roundings), torch.zeros(()))
            optimizer.zero_grad(set_to_none=True)
            if act_optimizer is not None:
                act_optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            optimizer.step()
            if act_optimizer is not None and schedule is not None:
                act_optimizer.step()
                schedule.step()
            losses.append(float(rec.detach()))
    return losses


def _reconstruction(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over dim 1 (channels), averaged over the rest: QDrop's ``lp_loss``."""
    diff = (out - target).pow(2)
    return diff.sum(1).mean() if diff.dim() >= 2 else diff.mean()


def _uniform(like: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    # drawn on the generator's device (CPU), then moved: keeps runs reproducible on any device
    return torch.rand(like.shape, generator=gen).to(like.device)


@contextmanager
def _soft_weights(layers: dict[str, tuple[nn.Module, SoftRounding]]) -> Iterator[None]:
    """Each layer's weight parameter swapped for its soft rounding for one forward pass (the wrapper reads
    ``module.weight``; a plain tensor in the parameter slot carries the graph back to ``V``)."""
    saved = {}
    try:
        for name, (module, rounding) in layers.items():
            saved[name] = module._parameters["weight"]
            module._parameters["weight"] = rounding.weight()  # type: ignore[assignment]
        yield
    finally:
        for name, parameter in saved.items():
            layers[name][0]._parameters["weight"] = parameter


@contextmanager
def _drop(quantizers: list[Quantizer], prob: float, gen: torch.Generator) -> Iterator[None]:
    """QDrop: while training, each element of an activation quantizer's output is its float input with ``prob``."""

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> Any:
        if not torch.is_grad_enabled() or not isinstance(output, torch.Tensor):
            return output
        keep = _uniform(output, gen) < prob
        return torch.where(keep, inputs[0], output)

    handles = [q.register_forward_hook(hook) for q in quantizers if q.is_active] if prob > 0 else []
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
