"""Quantization-aware training (QAT): fine-tune ``sim.model`` with its quantizers in the loop.

``sim.model`` is an ordinary ``nn.Module``: any training loop works. Weights train through the
quantizers with straight-through gradients (zero outside the clipping range). With
``QuantSim(..., range_learning=True)`` the scales and offsets are parameters too and learn with LSQ
gradients (torch's learnable fake-quant kernels).

BatchNorm: leantorch **folds BatchNorm before QAT** rather than simulating the folding. Call
:func:`leantorch.fold_batch_norms` and build the QuantSim on the folded model: the weights that train are
then exactly the weights that get quantized and exported. If BatchNorm layers are left in the sim,
:func:`fit` warns and keeps their running statistics frozen (eval mode), the usual practice late in QAT,
so that small fine-tuning batches cannot corrupt them.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any, Callable, Iterable, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import EncodingsMissingError, TrainingDivergedError
from ..graph import as_tuple
from .quantizer import Quantizer
from .sim import QuantSim

log = logging.getLogger(__name__)


def fit(
    sim: QuantSim,
    train_batches: Iterable[Any],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    epochs: int = 1,
    lr: float = 1e-4,
    range_lr: float | None = None,
    optimizer: Literal["adam", "sgd"] = "adam",
    weight_decay: float = 0.0,
    progress: bool = True,
) -> list[float]:
    """Train ``sim.model`` for ``epochs`` passes over ``train_batches``; returns the mean loss per epoch.

    Args:
        sim: a calibrated :class:`~leantorch.QuantSim` (``compute_encodings`` or loaded encodings).
        train_batches: re-iterable batches ``(inputs, targets)``; inputs a tensor or a tuple of tensors.
        loss_fn: ``loss_fn(outputs, targets) -> scalar tensor``.
        lr: learning rate of the weights; ``range_lr`` that of learnable scales/offsets (default ``lr``).
        optimizer: ``"adam"`` or ``"sgd"`` (momentum 0.9).

    Raises:
        EncodingsMissingError: the sim was not calibrated.
        TrainingDivergedError: the loss became NaN/Inf (lower ``lr``).

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> data = [(torch.randn(16, 4), torch.randint(0, 3, (16,))) for _ in range(4)]
        >>> sim = QuantSim(model, data[0][0][:1], param_bw=4, act_bw=4, range_learning=True)
        >>> sim.compute_encodings([x for x, _ in data], progress=False)
        >>> losses = fit(sim, data, nn.functional.cross_entropy, epochs=2, lr=1e-3, progress=False)
        >>> len(losses)
        2
    """
    model = sim.model
    missing = [name for name, q in sim.quantizers().items() if q.is_active and q.encoding is None]
    if missing:
        raise EncodingsMissingError(f"{len(missing)} quantizer(s) have no encoding (e.g. {missing[:3]}): call "
                                    "sim.compute_encodings(...) before quantization-aware training.")
    opt = _make_optimizer(model, optimizer, lr, range_lr if range_lr is not None else lr, weight_decay)
    batch_norms = [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if batch_norms:
        warnings.warn(f"{len(batch_norms)} BatchNorm layer(s) are not folded (e.g. {batch_norms[:3]}); their "
                      "statistics stay frozen during QAT. Fold them first: lt.fold_batch_norms(model, x).",
                      stacklevel=2)
    device = sim.device
    was_training = model.training
    losses = []
    try:
        for epoch in range(epochs):
            model.train()
            for name in batch_norms:
                model.get_submodule(name).eval()
            losses.append(_train_epoch(model, opt, train_batches, loss_fn, device, epoch, epochs, progress))
            log.info("QAT epoch %d/%d: mean loss %.4f", epoch + 1, epochs, losses[-1])
    finally:
        model.train(was_training)
    return losses


def _make_optimizer(model: nn.Module, kind: str, lr: float, range_lr: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    """Weights and learnable encodings as separate parameter groups (no weight decay on encodings)."""
    encoding_params = {id(p) for m in model.modules() if isinstance(m, Quantizer) for p in m.parameters()}
    weights = [p for p in model.parameters() if p.requires_grad and id(p) not in encoding_params]
    ranges = [p for p in model.parameters() if p.requires_grad and id(p) in encoding_params]
    groups = [{"params": weights, "lr": lr, "weight_decay": weight_decay}]
    if ranges:
        groups.append({"params": ranges, "lr": range_lr, "weight_decay": 0.0})
    if kind == "adam":
        return torch.optim.Adam(groups)
    if kind == "sgd":
        return torch.optim.SGD(groups, momentum=0.9)
    raise ValueError(f"optimizer={kind!r}: use 'adam' or 'sgd'")


def _train_epoch(model: nn.Module, opt: torch.optim.Optimizer, batches: Iterable[Any],
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], device: torch.device,
                 epoch: int, epochs: int, progress: bool) -> float:
    total, count = 0.0, 0
    bar = tqdm(batches, desc=f"QAT epoch {epoch + 1}/{epochs}", unit="batch", disable=not progress, leave=False)
    for step, batch in enumerate(bar):
        inputs, targets = batch[:-1], batch[-1]
        inputs = tuple(x.to(device) for x in as_tuple(inputs[0] if len(inputs) == 1 else inputs))
        loss = loss_fn(model(*inputs), targets.to(device))
        if not math.isfinite(float(loss.detach())):
            raise TrainingDivergedError(f"QAT loss is {float(loss.detach())} at epoch {epoch + 1}, step {step}: lower lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach())
        count += 1
        bar.set_postfix(loss=f"{total / count:.4f}")
    return total / max(count, 1)
