"""The calibration loop of :meth:`QuantSim.compute_encodings`: run the data through the sim while its quantizers
collect statistics, and keep the first batches for range searches that need to run the model again."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..batches import model_inputs, run_batch
from ..errors import CalibrationDataError, InvalidOptionError
from .quantizer import Quantizer

__all__ = ["run_calibration"]


def run_calibration(
    model: nn.Module,
    example_input: tuple[torch.Tensor, ...],
    device: torch.device,
    calibration: Any,
    num_batches: int | None,
    progress: bool,
    keep: int = 0,
) -> list[tuple[torch.Tensor, ...]]:
    """Run ``calibration`` (batches, or ``callable(model)``) through ``model``; returns the inputs of the first
    ``keep`` batches (on ``device``).

    Raises:
        CalibrationDataError: no batch, a bad batch (:func:`leantorch.batches.model_inputs`), or a callable that
            never ran the model.
        InvalidOptionError: ``keep`` batches are asked of a callable (it hands out no batches).

    Example:
        >>> from leantorch import QuantSim
        >>> sim = QuantSim(nn.Sequential(nn.Linear(4, 3)), torch.randn(1, 4))
        >>> sim.set_param_quantization(False)  # compute_encodings sets the weights' encodings first
        >>> active = [q for q in sim.activation_quantizers().values() if q.is_active]
        >>> for q in active:
        ...     q.start_calibration()
        >>> kept = run_calibration(sim.model, sim.example_input, sim.device, [torch.randn(2, 4)] * 3, None, False, 2)
        >>> len(kept), tuple(kept[0][0].shape), all(q.statistics.has_data for q in active)
        (2, (2, 4), True)
    """
    if callable(calibration) and not isinstance(calibration, (torch.Tensor, list, tuple)):
        if keep:
            raise InvalidOptionError(
                "this range search runs the model again on calibration batches: pass a list or DataLoader of "
                "batches instead of a callable"
            )
        calibration(model)
        calibrating = [m for m in model.modules() if isinstance(m, Quantizer) and m.statistics is not None]
        if calibrating and not any(q.statistics is not None and q.statistics.has_data for q in calibrating):
            raise CalibrationDataError("the calibration callable never ran the model: no data was seen")
        return []
    total = num_batches if num_batches is not None else (len(calibration) if hasattr(calibration, "__len__") else None)
    seen = 0
    kept: list[tuple[torch.Tensor, ...]] = []
    shapes = [tuple(x.shape) for x in example_input]
    bar = tqdm(total=total, desc="calibrating", unit="batch", disable=not progress, leave=False)
    try:
        for index, batch in enumerate(calibration):
            if num_batches is not None and index >= num_batches:
                break
            inputs = model_inputs(batch, len(example_input), index, device=device)
            run_batch(model, inputs, index, example_shapes=shapes)
            if len(kept) < keep:
                kept.append(inputs)
            seen += 1
            bar.update(1)
    finally:
        bar.close()
    if seen == 0:
        raise CalibrationDataError("calibration data is empty: pass at least one batch")
    return kept
