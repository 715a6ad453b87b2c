"""The model inputs of a data batch: one rule for calibration, analysis, bias correction, AdaRound,
channel pruning and QAT (applied to what precedes a training batch's target), so that a batch accepted by
one is accepted by all.

A batch is either a tensor (the input of a one-input model) or a tuple/list holding the model's input
tensors first, in order; what follows them (labels, sample ids) is ignored. So the batches of a labelled
``DataLoader`` — ``(images, labels)`` — calibrate as they are. Non-tensor items are skipped when the
inputs are looked for (``("a.png", x, y)`` gives ``x``).

Example:
    >>> x, y = torch.randn(2, 3), torch.tensor([0, 1])
    >>> [t.shape for t in model_inputs((x, y), num_inputs=1, index=0)]
    [torch.Size([2, 3])]
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from .errors import CalibrationDataError, DataError

#: What a batch may look like, for error messages.
ACCEPTED = ("a tensor, or a tuple/list whose first {n} item(s) are the model's input tensor(s) (labels after "
            "them are ignored)")


def model_inputs(batch: Any, num_inputs: int, index: int, error: type[DataError] = CalibrationDataError,
                 what: str = "calibration batch", device: torch.device | str | None = None) -> tuple[torch.Tensor, ...]:
    """The first ``num_inputs`` tensors of ``batch``, checked (count, NaN/Inf) and moved to ``device``.

    Args:
        batch: a tensor, or a tuple/list of tensors (inputs first, then labels or anything else).
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
    else:
        hint = (": pass the model inputs as a tuple, e.g. (batch['x'],) — keyword inputs are not supported"
                if isinstance(batch, dict) else "")
        raise error(f"{what} {index} is {_describe(batch)}; a batch must be {ACCEPTED.format(n=num_inputs)}{hint}")
    tensors = [x for x in items if isinstance(x, torch.Tensor)]
    if len(tensors) < num_inputs:
        raise error(f"{what} {index} is a {type(batch).__name__} holding {len(tensors)} tensor(s) "
                    f"({', '.join(_describe(x) for x in items[:4]) or 'nothing'}); the model takes {num_inputs} "
                    f"input(s), so a batch must be {ACCEPTED.format(n=num_inputs)}")
    inputs = tuple(tensors[:num_inputs])
    for j, x in enumerate(inputs):
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise error(f"{what} {index}, input {j} (shape {tuple(x.shape)}) contains NaN or Inf; "
                        "clean or drop that batch.")
    return inputs if device is None else tuple(x.to(device) for x in inputs)


def check_iterable(data: Any, what: str = "calibration", error: type[DataError] = CalibrationDataError,
                   allow_callable: bool = False) -> None:
    """Refuse what cannot be a sequence of batches: None, a single tensor, a number, a string, a dict.

    Raises:
        ``error``: names what was passed and what to pass instead.
    """
    if callable(data) and not isinstance(data, (torch.Tensor, list, tuple)) and allow_callable:
        return
    accepted = "an iterable of batches (a list or a DataLoader)" + (" or a callable(model)" if allow_callable else "")
    if isinstance(data, torch.Tensor):
        raise error(f"{what} must be {accepted}, not a single tensor: wrap it as [tensor]")
    if data is None or isinstance(data, (str, bytes, dict)) or not isinstance(data, Iterable):
        raise error(f"{what} must be {accepted}, got {_describe(data)}")


def _describe(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, dict):
        return f"a dict with keys {list(value)[:5]}"
    text = " ".join(repr(value).split())
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"
