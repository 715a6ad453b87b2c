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

Distributed (DDP): under ``torch.distributed`` (e.g. ``torchrun``), :func:`fit` wraps ``sim.model`` in
``DistributedDataParallel`` for the training (or re-wraps the module of a ``sim.model`` that already is one).
The wrap broadcasts rank 0's weights and encodings (parameters and buffers) to every rank; learned scales and
offsets are parameters, so their gradients are averaged like the weights' and they stay identical on all ranks.
Quantizer buffers do not change during training, so they are not re-broadcast at every step. Each rank passes
its own share of the data, with the same number of batches per epoch (checked when the data has a length).
"""

from __future__ import annotations

import collections.abc
import inspect
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Sized
from typing import Any, Literal, cast

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..batches import all_finite, is_iterable, model_inputs
from ..distributed import check_same, merge_group, reduce_scalar
from ..errors import DistributedMismatchError, EncodingsMissingError, TrainingDataError, TrainingDivergedError
from ..options import check_choice, check_count, check_flag, check_positive
from .quantizer import Quantizer
from .sim import QuantSim

__all__ = ["OPTIMIZERS", "fit"]

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "sgd")
_OK, _DIVERGED, _FAILED = 0.0, 1.0, 2.0  # per-step status shared across ranks (the maximum wins)


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
    distributed: bool | None = None,
    process_group: Any = None,
) -> list[float]:
    """Train ``sim.model`` for ``epochs`` passes over ``train_batches``; returns the mean loss per epoch.

    Args:
        sim: a calibrated :class:`~leantorch.QuantSim` (``compute_encodings`` or loaded encodings).
        train_batches: re-iterable batches ``(inputs, targets)`` (a list or a DataLoader; a one-shot
            generator only works with ``epochs=1``): the last item is the target, what precedes it the
            model inputs, a tensor or a tuple of tensors (read as :func:`leantorch.batches.model_inputs` reads
            a calibration batch: the model's first tensors, anything after them ignored).
        loss_fn: ``loss_fn(outputs, targets) -> scalar tensor``.
        epochs: passes over the data, a whole number ≥ 1.
        lr: learning rate of the weights; ``range_lr`` that of learnable scales/offsets (default ``lr``);
            both finite and > 0.
        optimizer: ``"adam"`` or ``"sgd"`` (momentum 0.9).
        weight_decay: L2 penalty of the weights (not of the encodings), finite and ≥ 0.
        progress: a progress bar per epoch, True or False (shown on rank 0 only when distributed).
        distributed: train with ``DistributedDataParallel`` over the ranks of ``torch.distributed``, each rank
            passing its own share of the data. None (default): when a process group with more than one rank is
            initialised, or ``sim.model`` already is a ``DistributedDataParallel``. Every rank must call it.
        process_group: the ranks to train with (default: all, or those of a ``sim.model`` DDP wrapper).

    Raises:
        InvalidOptionError: ``epochs``, ``lr``, ``range_lr``, ``weight_decay``, ``optimizer`` or ``progress``
            out of range (checked before the sim is touched).
        EncodingsMissingError: the sim was not calibrated.
        TrainingDataError: the data is empty, is a one-shot iterator while ``epochs > 1`` (refused before
            training; pass a list or a DataLoader), an epoch after the first sees no batch, a batch is not
            ``(inputs, targets)``, holds fewer input tensors than the model takes, or holds NaN/Inf (checked
            before that batch's forward; the steps before it stay taken).
        TrainingDivergedError: the loss or an update became NaN/Inf; the trained tensors are restored to
            the last state that gave a finite loss (lower ``lr``). Distributed: on every rank when any
            rank's loss diverged.
        DistributedMismatchError: the ranks' quantizers or numbers of batches differ, or training failed on
            another rank (raised there with its own error); no rank is left waiting.

    Both training errors carry ``losses``: the mean loss of every epoch that completed before the error.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> data = [(torch.randn(16, 4), torch.randint(0, 3, (16,))) for _ in range(4)]
        >>> sim = QuantSim(model, data[0][0][:1], param_bw=4, act_bw=4, range_learning=True)
        >>> sim.compute_encodings([x for x, _ in data], progress=False)
        >>> losses = fit(sim, data, nn.functional.cross_entropy, epochs=2, lr=1e-3, progress=False)
        >>> len(losses)
        2
    """
    _check_options(epochs, lr, range_lr, optimizer, weight_decay, progress)
    if train_batches is None or isinstance(train_batches, torch.Tensor) or not is_iterable(train_batches):
        raise TrainingDataError(
            f"train_batches is a {type(train_batches).__name__}: pass an iterable of "
            "(inputs, targets) batches, such as a list or a DataLoader"
        )
    if epochs > 1 and isinstance(train_batches, collections.abc.Iterator):  # refused before any weight changes
        error = TrainingDataError(
            f"train_batches is a one-shot iterator ({type(train_batches).__name__}): the first of the {epochs} "
            "epochs would use it up. Pass a re-iterable such as a list or a DataLoader, or epochs=1."
        )
        error.losses = []  # type: ignore[attr-defined]  # no epoch ran
        raise error
    base = sim.model.module if isinstance(sim.model, DistributedDataParallel) else sim.model
    if process_group is None and isinstance(sim.model, DistributedDataParallel):
        process_group = sim.model.process_group
    group = merge_group(distributed, process_group)
    missing = [name for name, q in sim.quantizers().items() if q.is_active and q.encoding is None]
    if missing:
        raise EncodingsMissingError(
            f"{len(missing)} quantizer(s) have no encoding (e.g. {missing[:3]}): call "
            "sim.compute_encodings(...) before quantization-aware training."
        )
    device = sim.device
    model = base if group is None else _wrap_ddp(base, train_batches, group, device)
    opt = _make_optimizer(base, optimizer, lr, range_lr if range_lr is not None else lr, weight_decay)
    guard = _LastGoodState([p for group_ in opt.param_groups for p in group_["params"]])
    batch_norms = [name for name, m in base.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if batch_norms:
        warnings.warn(
            f"{len(batch_norms)} BatchNorm layer(s) are not folded (e.g. {batch_norms[:3]}); their "
            "statistics stay frozen during QAT. Fold them first: lt.fold_batch_norms(model, x).",
            stacklevel=2,
        )
    if group is not None and torch.distributed.get_rank(group) != 0:
        progress = False  # one progress bar, not one per rank
    was_training = base.training
    losses: list[float] = []
    try:
        for epoch in range(epochs):
            model.train()
            for name in batch_norms:
                base.get_submodule(name).eval()
            losses.append(
                _train_epoch(
                    model,
                    opt,
                    guard,
                    train_batches,
                    loss_fn,
                    len(sim.example_input),
                    device,
                    epoch,
                    epochs,
                    progress,
                    group,
                )
            )
            log.info("QAT epoch %d/%d: mean loss %.4f", epoch + 1, epochs, losses[-1])
    except (TrainingDataError, TrainingDivergedError, DistributedMismatchError) as exc:
        exc.losses = list(losses)  # type: ignore[union-attr]  # only the epochs that completed
        raise
    finally:
        base.train(was_training)
    return losses


def _wrap_ddp(
    base: nn.Module, train_batches: Iterable[Any], group: Any, device: torch.device
) -> DistributedDataParallel:
    """``base`` in a fresh DistributedDataParallel, after checking that the ranks train the same thing.

    Fresh, even when ``sim.model`` already was a DDP wrapper: calibration replaces encoding tensors (and
    range learning turns them into new parameters) after the user wrapped, and a wrapper only synchronises the
    tensors it saw when it was built. Rank 0's buffers (fixed encodings) are broadcast here and DDP broadcasts
    its parameters (weights, learnable encodings), so every rank starts from the same state.
    """
    described = [
        (
            name,
            q.bitwidth,
            q.symmetric,
            q.axis,
            q.is_active,
            q.is_learnable,
            None if q.scale is None else tuple(q.scale.shape),
        )
        for name, q in base.named_modules()
        if isinstance(q, Quantizer)
    ]
    check_same(group, described, "quantizers (name, bitwidth, symmetric, axis, active, learnable, shape)")
    if hasattr(train_batches, "__len__"):
        # Uneven shards would leave the ranks with more batches waiting for the others' gradients forever.
        check_same(
            group,
            [len(cast(Sized, train_batches))],
            "number of training batches per epoch (shard the data evenly, e.g. DistributedSampler(drop_last=True))",
        )
    # Fixed encodings are buffers: sent once from rank 0 here, not before every forward (they do not change;
    # DDP's `broadcast_buffers=False` would skip the first sync as well).
    source = torch.distributed.get_global_rank(group, 0)
    for buffer in base.buffers():
        torch.distributed.broadcast(buffer.data, src=source, group=group)
    no_resync: dict[str, Any] = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        else {"broadcast_buffers": False}
    )
    # Learnable encodings of inactive quantizers get no gradient; DDP must be told to expect that.
    unused = any(
        p.requires_grad
        for m in base.modules()
        if isinstance(m, Quantizer) and not m.is_active
        for p in m.parameters(recurse=False)
    )
    return DistributedDataParallel(
        base,
        device_ids=[device] if device.type == "cuda" else None,
        process_group=group,
        find_unused_parameters=unused,
        **no_resync,
    )


def _check_options(epochs: Any, lr: Any, range_lr: Any, optimizer: Any, weight_decay: Any, progress: Any) -> None:
    """Reject bad options before anything is trained: a NaN or negative rate would poison every weight."""
    check_count("epochs", epochs, hint=" (the number of passes over the data)")
    check_positive("lr", lr, hint=" (a learning rate; typical for QAT: 1e-5 to 1e-3)")
    if range_lr is not None:
        check_positive("range_lr", range_lr, hint=" (a learning rate; typical for QAT: 1e-5 to 1e-3)")
    check_positive("weight_decay", weight_decay, allow_zero=True, hint=" (0 turns it off)")
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_flag("progress", progress)


def _make_optimizer(
    model: nn.Module, kind: str, lr: float, range_lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """Weights and learnable encodings as separate parameter groups (no weight decay on encodings)."""
    encoding_params = {id(p) for m in model.modules() if isinstance(m, Quantizer) for p in m.parameters()}
    weights = [p for p in model.parameters() if p.requires_grad and id(p) not in encoding_params]
    ranges = [p for p in model.parameters() if p.requires_grad and id(p) in encoding_params]
    groups = [{"params": weights, "lr": lr, "weight_decay": weight_decay}]
    if ranges:
        groups.append({"params": ranges, "lr": range_lr, "weight_decay": 0.0})
    if kind == "adam":
        return torch.optim.Adam(groups)
    return torch.optim.SGD(groups, momentum=0.9)


class _LastGoodState:
    """A copy of the trained tensors from before the latest optimizer step, to undo a diverged step.

    Only the optimizer changes the sim during QAT (BatchNorm statistics are frozen and quantizers do not
    calibrate), so its parameters are the whole state that can go bad. Why a copy before *every* step:
    the copy is one memcpy of the weights into buffers allocated once, cheap next to the forward and
    backward that read them several times, and its memory is half of Adam's moment buffers. A snapshot per
    epoch would be cheaper but would throw away up to an epoch of good steps; checking only at the end
    would leave NaN in the sim.
    """

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.params = params
        self.saved: list[torch.Tensor] | None = None

    @torch.no_grad()
    def save(self) -> None:
        if self.saved is None:
            self.saved = [p.detach().clone() for p in self.params]
        else:
            for copy, p in zip(self.saved, self.params):
                copy.copy_(p)

    @torch.no_grad()
    def restore(self) -> bool:
        """Put back the saved tensors; False before the first step, when nothing has changed to restore."""
        if self.saved is None:
            return False
        for p, copy in zip(self.params, self.saved):
            p.copy_(copy)
        return True

    @torch.no_grad()
    def current_is_finite(self) -> bool:
        # One reduction per tensor and a single device sync for all of them.
        return all_finite(*self.params)


def _train_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    guard: _LastGoodState,
    batches: Iterable[Any],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    num_inputs: int,
    device: torch.device,
    epoch: int,
    epochs: int,
    progress: bool,
    group: Any = None,
) -> float:
    total, count = 0.0, 0
    bar = tqdm(batches, desc=f"QAT epoch {epoch + 1}/{epochs}", unit="batch", disable=not progress, leave=False)
    for step, batch in enumerate(bar):
        try:
            inputs, targets = _batch_tensors(batch, step, num_inputs, device)
            loss = loss_fn(model(*inputs), targets)
            value = float(loss.detach())
        except Exception:
            if group is not None:
                reduce_scalar(group, _FAILED)  # the other ranks raise instead of waiting for its gradients
            raise
        if group is not None:
            # Every rank takes the same branch: all step, all restore, or all raise.
            status = reduce_scalar(group, _OK if math.isfinite(value) else _DIVERGED)
            if status == _FAILED:
                raise DistributedMismatchError(
                    f"QAT failed on another rank at epoch {epoch + 1}, step {step} (see its "
                    "error); this rank stopped there too."
                )
            if status == _DIVERGED and math.isfinite(value):
                value = float("nan")  # another rank's loss; reported as this step's
        if not math.isfinite(value):
            state = (
                "were restored to the last state that gave a finite loss"
                if guard.restore()
                else "are as before training (no step was taken)"
            )
            raise TrainingDivergedError(
                f"QAT loss is {value} at epoch {epoch + 1}, step {step}; the weights and encodings {state}. "
                "Fix: lower lr (and range_lr), e.g. by 10x, or check loss_fn on this batch."
            )
        guard.save()  # this state just gave a finite loss: the one to go back to if the step goes wrong
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # unannotated in torch
        opt.step()
        # A NaN weight can hide behind a quantizer (clamped onto the grid) and never show in the loss.
        if not guard.current_is_finite():
            guard.restore()
            raise TrainingDivergedError(
                f"the QAT update at epoch {epoch + 1}, step {step} made a weight or encoding NaN/Inf (gradient "
                "overflow); the state from before that step was restored. Fix: lower lr (and range_lr), e.g. by 10x."
            )
        total += value
        count += 1
        bar.set_postfix(loss=f"{total / count:.4f}")
    if count == 0:
        raise TrainingDataError(
            "the training data is empty: pass at least one (inputs, targets) batch"
            if epoch == 0
            else f"epoch {epoch + 1} of {epochs} saw no batch: train_batches is a one-shot iterator (e.g. a generator) "
            "that the first epoch used up; pass a re-iterable such as a list or a DataLoader, or epochs=1."
        )
    if group is not None:  # the mean over all ranks' batches, the same number on every rank
        world = torch.distributed.get_world_size(group)
        return reduce_scalar(group, total, "sum") / reduce_scalar(group, count, "sum") if world > 1 else total / count
    return total / count


def _batch_tensors(
    batch: Any, step: int, num_inputs: int, device: torch.device
) -> tuple[tuple[torch.Tensor, ...], Any]:
    """``(inputs, targets)`` of one batch on ``device``: the last item is the target, the model inputs are read
    from what precedes it by :func:`leantorch.batches.model_inputs`; NaN/Inf is refused before it reaches the
    weights."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TrainingDataError(
            f"training batch {step} is a {type(batch).__name__}, not (inputs, targets): "
            "yield a tuple such as (x, y) or ((x1, x2), y)"
        )
    targets = batch[-1]
    inputs = model_inputs(
        batch[0] if len(batch) == 2 else batch[:-1],
        num_inputs,
        step,
        error=TrainingDataError,
        what="training batch",
        device=device,
    )
    if isinstance(targets, torch.Tensor):
        targets = targets.to(device)  # checked where it will be used
    if isinstance(targets, torch.Tensor) and not all_finite(targets):
        raise TrainingDataError(
            f"training batch {step}, the targets (shape {tuple(targets.shape)}) contain NaN or "
            "Inf; clean or drop that batch."
        )
    return inputs, targets
