"""Checks of what a user hands to :func:`leantorch.prepare` (and to the cost model, the CLI ...): that the model is an
``nn.Module``, that its parameters, buffers and example input are finite, that it runs on the example input, and
that a traced copy computes what the original computed. Each failure is a typed error naming the fix.

Example:
    >>> check_module(lambda x: x)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    leantorch.errors.InvalidOptionError: model must be a torch.nn.Module, got function ...
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .batches import all_finite
from .errors import InputShapeError, InvalidOptionError, NonFiniteModelError, TraceError
from .options import short_repr

__all__ = ["check_module", "check_finite", "run_checked", "check_finite_output", "verify_same_outputs"]


def check_module(model: Any, what: str = "model") -> None:
    """Raise :class:`InvalidOptionError` unless ``model`` is an ``nn.Module`` instance.

    Example:
        >>> check_module(lambda x: x)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        leantorch.errors.InvalidOptionError: model must be a torch.nn.Module, got function ...
    """
    if isinstance(model, nn.Module):
        return
    if isinstance(model, type) and issubclass(model, nn.Module):
        fix = f"create an instance first: {model.__name__}(...)"
    elif isinstance(model, dict):
        fix = "this looks like a state dict: build the model and call model.load_state_dict(...) first"
    else:
        fix = "wrap the computation in an nn.Module whose forward calls it"
    raise InvalidOptionError(
        f"{what} must be a torch.nn.Module, got {type(model).__name__} ({short_repr(model, 60)}): {fix}"
    )


def check_finite(model: nn.Module, inputs: tuple) -> None:
    """Raise :class:`NonFiniteModelError` naming a float input with NaN, or every parameter with NaN/Inf and
    buffer with NaN (or Inf, in normalization statistics).

    Checked before tracing because NaN propagates to the outputs, where it would make the traced model look
    different from the original and be reported as a tracing problem. Inf is allowed in the example inputs
    and in buffers outside normalization layers: attention masks hold -inf on purpose, whether passed to
    ``forward`` (``forward(x, mask)``) or stored in the model.

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> layer.weight.data[0, 0] = float("nan")
        >>> check_finite(layer, (torch.randn(1, 2),))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        leantorch.errors.NonFiniteModelError: weight has 1 NaN value. The model is corrupt: ...
    """
    for j, x in enumerate(inputs):
        count = _non_finite(x, allow_inf=True)  # an attention mask input holds -inf on purpose
        if count:
            raise NonFiniteModelError(
                f"example input {j} (shape {tuple(x.shape)}) has {count}: pass an example "
                "input without NaN (any real sample of your data will do)."
            )
    found = [(name, count) for name, p in model.named_parameters() if (count := _non_finite(p, allow_inf=False))]
    for prefix, module in model.named_modules():
        statistics = isinstance(module, nn.modules.batchnorm._NormBase)  # running mean/var must be finite
        for name, b in module.named_buffers(prefix=prefix, recurse=False):
            count = _non_finite(b, allow_inf=not statistics)
            if count:
                found.append((name, count))
    if found:
        listed = "; ".join(f"{name} has {count}" for name, count in found[:5])
        more = f" (and {len(found) - 5} more tensors)" if len(found) > 5 else ""
        raise NonFiniteModelError(
            f"{listed}{more}. The model is corrupt: reload the checkpoint, or find the training step that "
            "diverged (for BatchNorm running statistics: recompute them on clean data). leantorch needs finite "
            "weights to trace, quantize or compress it."
        )


def _non_finite(x: Any, allow_inf: bool) -> str:
    """What is wrong with a float tensor ("3 NaN values", "1 NaN value and 2 Inf values"); "" if nothing is."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return ""
    x = x.detach()
    if all_finite(x):  # the common case costs one min/max reduction
        return ""
    nan, inf = int(torch.isnan(x).sum()), 0 if allow_inf else int(torch.isinf(x).sum())
    parts = [f"{n} {kind} value{'s' if n > 1 else ''}" for n, kind in ((nan, "NaN"), (inf, "Inf")) if n]
    return " and ".join(parts)


def check_finite_output(output: Any) -> None:
    """Refuse a model whose output on the example input holds NaN (naming the count and the usual causes)."""
    nan = sum(int(torch.isnan(t).sum()) for t in _flatten_tensors(output) if t.is_floating_point())
    if nan:
        raise NonFiniteModelError(
            f"the model's output on the example input has {nan} NaN value(s) although the input, weights and "
            "statistics are finite: an op in the forward produces NaN (0/0, log or sqrt of a negative, an "
            "-inf mask over a whole row). Fix that op, or pass an example input in the range the model expects."
        )


def run_checked(model: nn.Module, inputs: tuple) -> Any:
    """Run ``model(*inputs)`` without gradients; an input that does not fit raises InputShapeError."""
    with torch.no_grad():
        try:
            return model(*inputs)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            shapes = [tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__ for x in inputs]
            mismatch = _dtype_device_mismatch(model, inputs)
            fix = (
                f"Pass an example input of the model's {mismatch}"
                if mismatch
                else "Pass an example input of the shape the model expects (e.g. (1, 3, 224, 224) for an "
                "ImageNet classifier)"
            )
            raise InputShapeError(f"the model fails on the example input of shape(s) {shapes}: {exc}. {fix}.") from exc


def _dtype_device_mismatch(model: nn.Module, inputs: tuple) -> str:
    """How the float inputs differ from the model's first float parameter in dtype/device ("" if they do not):
    e.g. "dtype and device: the model's parameters are torch.float32 on cpu, input 0 is torch.float64 on cpu"."""
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    if param is None:
        return ""
    for j, x in enumerate(inputs):
        if not isinstance(x, torch.Tensor):
            continue
        dtype = x.is_floating_point() and x.dtype != param.dtype
        device = x.device != param.device
        if dtype or device:
            what = " and ".join(w for w, bad in (("dtype", dtype), ("device", device)) if bad)
            return (
                f"{what}: its parameters are {param.dtype} on {param.device}, input {j} is {x.dtype} on "
                f"{x.device} (e.g. x.to(dtype={param.dtype}, device='{param.device}'))"
            )
    return ""


def verify_same_outputs(expected: Any, actual: Any) -> None:
    """Refuse a traced copy whose outputs differ from the original's (:class:`TraceError` naming the likely cause)."""
    for a, b in zip(_flatten_tensors(expected), _flatten_tensors(actual)):
        if a.shape != b.shape or not torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5):
            raise TraceError(
                "the traced model computes different outputs than the original (max abs diff "
                f"{(a.float() - b.float()).abs().max().item():.3g}); a module probably depends on state "
                "that tracing froze. Pass it in leaf_modules=[...] to keep it opaque."
            )


def _flatten_tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _flatten_tensors(v)]
    return []
