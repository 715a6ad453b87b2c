"""Encodings of tensors known in full (weights): each quantizer's, computed without applying it."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .encoding import Encoding
from .quantizer import Quantizer, finish_calibrations

__all__ = ["tensor_encodings"]


def tensor_encodings(pairs: Sequence[tuple[Quantizer, torch.Tensor]]) -> list[tuple[Quantizer, Encoding]]:
    """The encoding each quantizer computes for its tensor (weights, known in full), not applied; batched as
    :func:`finish_calibrations`. A failure leaves every quantizer as it was.

    Example:
        >>> q = Quantizer(scheme="minmax")
        >>> [round(float(enc.scale), 4) for _, enc in tensor_encodings([(q, torch.tensor([0.0, 2.55]))])]
        [0.01]
    """
    started = []
    try:
        for q, tensor in pairs:
            started.append(q)
            q.start_calibration(every_value=True)
            q(tensor)  # calibrating: observes, returns it
    except BaseException:
        for q in started:
            q.abort_calibration()
        raise
    encodings = finish_calibrations([q for q, _ in pairs], apply=False)
    assert all(enc is not None for enc in encodings)
    return [(q, enc) for (q, _), enc in zip(pairs, encodings) if enc is not None]
