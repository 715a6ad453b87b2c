"""The model inputs of a data batch: one rule for calibration, analysis, bias correction, AdaRound,
channel pruning and QAT (applied to what precedes a training batch's target), so that a batch accepted by
one is accepted by all.

A batch is either a tensor (the input of a one-input model) or a tuple/list holding the model's input
tensors first, in order; what follows them (labels, sample ids) is ignored. So the batches of a labelled
``DataLoader`` — ``(images, labels)`` — calibrate as they are. When the first item is itself a tuple/list of
tensors, the inputs are read from it: ``((x1, x2), y)``, the default collate of a dataset that returns
``((x1, x2), y)``, gives ``(x1, x2)``. Non-tensor items are skipped when the inputs are looked for
(``("a.png", x, y)`` gives ``x``).

Example:
    >>> x, y = torch.randn(2, 3), torch.tensor([0, 1])
    >>> [t.shape for t in model_inputs((x, y), num_inputs=1, index=0)]
    [torch.Size([2, 3])]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .errors import CalibrationDataError, DataError, LeanTorchError

__all__ = ["ACCEPTED", "model_inputs", "all_finite", "run_batch", "check_iterable", "is_iterable"]

#: What a batch may look like, for error messages.
ACCEPTED = (
    "a tensor, or a tuple/list whose first {n} item(s) are the model's input tensor(s) (labels after them are ignored)"
)


def model_inputs(
    batch: Any,
    num_inputs: int,
    index: int,
    error: type[DataError] = CalibrationDataError,
    what: str = "calibration batch",
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, ...]:
    """The first ``num_inputs`` tensors of ``batch``, moved to ``device`` and checked (count, NaN/Inf).

    Args:
        batch: a tensor, or a tuple/list of tensors (inputs first, then labels or anything else), or a
            tuple/list whose first item is the tuple/list of input tensors (``((x1, x2), y)``).
        num_inputs: how many positional inputs the model takes (``len(as_tuple(example_input))``).
        index: the batch's position in the data, for the message.
        error: the error class to raise (calibration or training data).
        what: how the message calls the batch.
        device: where to move the inputs (None: leave them).

    Raises:
        ``error``: the batch is not a tensor or tuple/list, holds fewer tensors than the model has inputs
            (a dict, None, a numpy array...), or an input holds NaN/Inf; the message names the batch.
    """
    if isinstance(batch, torch.Tensor):
        items: tuple = (batch,)
    elif isinstance(batch, (tuple, list)):
        items = tuple(batch)
        if items and _is_tensor_sequence(items[0]):  # ((x1, x2), y): the inputs grouped first
            items = tuple(items[0])
    else:
        hint = (
            ": pass the model inputs as a tuple, e.g. (batch['x'],) — keyword inputs are not supported"
            if isinstance(batch, dict)
            else ""
        )
        raise error(f"{what} {index} is {_describe(batch)}; a batch must be {ACCEPTED.format(n=num_inputs)}{hint}")
    tensors = [x for x in items if isinstance(x, torch.Tensor)]
    if len(tensors) < num_inputs:
        raise error(
            f"{what} {index} is a {type(batch).__name__} holding {len(tensors)} tensor(s) "
            f"({', '.join(_describe(x) for x in items[:4]) or 'nothing'}); the model takes {num_inputs} "
            f"input(s), so a batch must be {ACCEPTED.format(n=num_inputs)}"
        )
    inputs = tuple(tensors[:num_inputs])
    if device is not None:  # checked where it will run: the scan is fast there, and the copy is needed anyway
        inputs = tuple(x.to(device) for x in inputs)
    for j, x in enumerate(inputs):
        if not all_finite(x):
            raise error(
                f"{what} {index}, input {j} (shape {tuple(x.shape)}) contains NaN or Inf; clean or drop that batch."
            )
    return inputs


def all_finite(*tensors: torch.Tensor) -> bool:
    """True unless a float tensor among ``tensors`` holds NaN or Inf; non-float tensors always pass.

    Checks each tensor's min and max (they propagate NaN and show Inf), which is many times faster than
    ``torch.isfinite(x).all()`` on CPU, and syncs with the device once for all of them.

    Example:
        >>> all_finite(torch.ones(3), torch.tensor([1.0, float("-inf")]))
        False
    """
    flags = [
        torch.isfinite(torch.stack(torch.aminmax(t.detach()))).all()
        for t in tensors
        if t.is_floating_point() and t.numel()
    ]
    return not flags or bool(torch.stack(flags).all())


#: torch.OutOfMemoryError (torch ≥ 2.5) or its older name.
_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def run_batch(
    model: Any,
    inputs: tuple,
    index: int,
    error: type[DataError] = CalibrationDataError,
    example_shapes: list | None = None,
    what: str = "calibration batch",
) -> Any:
    """``model(*inputs)``; a RuntimeError from the forward (a shape that does not fit) raises ``error`` naming
    the batch, its input shapes and ``example_shapes``.

    Out of memory and leantorch's own errors (e.g. :class:`~leantorch.errors.EncodingsMissingError`, a
    RuntimeError) are re-raised unchanged: they are not a problem of the data's shape.
    """
    try:
        return model(*inputs)
    except (_OUT_OF_MEMORY, LeanTorchError):
        raise
    except RuntimeError as err:  # torch's message names a layer's weight, not the batch: say which and what fits
        shapes = [tuple(x.shape) for x in inputs]
        expected = f"; the example input had {example_shapes}" if example_shapes is not None else ""
        raise error(
            f"the model fails on {what} {index} (input shapes {shapes}{expected}): {err}. Give batches "
            "shaped like the example input."
        ) from err


def check_iterable(
    data: Any, what: str = "calibration", error: type[DataError] = CalibrationDataError, allow_callable: bool = False
) -> None:
    """Refuse what cannot be a sequence of batches: None, a single tensor, a number, a string, a dict.

    Raises:
        ``error``: names what was passed and what to pass instead.
    """
    if callable(data) and not isinstance(data, (torch.Tensor, list, tuple)) and allow_callable:
        return
    accepted = "an iterable of batches (a list or a DataLoader)" + (" or a callable(model)" if allow_callable else "")
    if isinstance(data, torch.Tensor):
        raise error(f"{what} must be {accepted}, not a single tensor: wrap it as [tensor]")
    # A map-style dataset (TensorDataset, Subset) iterates through __getitem__; iter() is not called to test
    # it, since on a DataLoader that starts the workers.
    if data is None or isinstance(data, (str, bytes, dict)) or not is_iterable(data):
        raise error(f"{what} must be {accepted}, got {_describe(data)}")


def is_iterable(data: Any) -> bool:
    """Whether ``for batch in data`` can work: ``__iter__``, or ``__getitem__`` (a map-style dataset)."""
    return isinstance(data, Iterable) or hasattr(type(data), "__getitem__")


def _is_tensor_sequence(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and bool(value) and all(isinstance(x, torch.Tensor) for x in value)


def _describe(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, dict):
        return f"a dict with keys {list(value)[:5]}"
    if isinstance(value, (tuple, list)):
        shown = ", ".join(tuple(x.shape).__repr__() if isinstance(x, torch.Tensor) else _describe(x) for x in value[:4])
        more = ", ..." if len(value) > 4 else ""
        return f"a {type(value).__name__} of {len(value)} ({shown}{more})"
    text = " ".join(repr(value).split())
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"
