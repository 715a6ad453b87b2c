"""Layer-wise distillation targets: the outputs of the layers that a compressed student shares with its teacher.

The compression schemes keep the original's layer names where a layer survives: spatial/weight SVD replace
layer ``name`` by a two-layer ``nn.Sequential`` *called* ``name`` (its output is the original layer's output,
approximated; a traced student calls the pair's layers, not the ``Sequential``, so the match is the pair's last
layer), and channel pruning keeps every name but shrinks a producer's output channels. So a teacher
layer's output has a counterpart in the student module of the same name, except where pruning removed
channels (the shapes differ: those layers are left out) or a module runs more than once per forward (its
output would be ambiguous: left out too). Which layers match is decided on the first batch.

The loss is the mean over matched layers of ``‖s − t‖² / ‖t‖²`` (MSE normalised by the teacher's mean square),
so that every layer weighs alike whatever the scale of its activations.

Example:
    >>> import copy
    >>> teacher = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> student = copy.deepcopy(teacher)
    >>> x = torch.randn(3, 4)
    >>> with LayerMatcher(student, teacher) as match:
    ...     _ = student(x), teacher(x)
    ...     float(match.loss().detach()), match.names
    (0.0, ['0', '2'])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["LayerMatcher"]


def _last_layer(module: nn.Module) -> nn.Module:
    """The module whose output is ``module``'s: itself, or for a container without weights of its own (an SVD
    pair: a ``Sequential``, or the plain module that tracing leaves in its place) its last layer."""
    while next(module.parameters(recurse=False), None) is None and len(list(module.children())):
        module = list(module.children())[-1]
    return module


class LayerMatcher:
    """Forward hooks on same-named layers of ``student`` and ``teacher`` that record their outputs.

    Candidates are the teacher's modules that own parameters (convolutions, linears, normalisations) and
    have a same-named module in the student; :attr:`names` is fixed by the first forward of both.
    Use as a context manager (the hooks are removed on exit) or call :meth:`close`.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        student_modules = dict(student.named_modules())
        self.candidates = [
            name
            for name, module in teacher.named_modules()
            if name and next(module.parameters(recurse=False), None) is not None and name in student_modules
        ]
        self.outputs: dict[str, dict[str, list[Any]]] = {"student": {}, "teacher": {}}
        self.names: list[str] | None = None
        self.active = True  # False while the student is evaluated: those passes are no training targets
        self._hooks = []
        teacher_modules = dict(teacher.named_modules())
        for name in self.candidates:
            self._hooks.append(teacher_modules[name].register_forward_hook(self._recorder("teacher", name)))
            self._hooks.append(
                _last_layer(student_modules[name]).register_forward_hook(self._recorder("student", name))
            )

    def _recorder(self, side: str, name: str) -> Any:
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            if self.active:
                self.outputs[side].setdefault(name, []).append(output)

        return record

    def _resolve(self) -> list[str]:
        student, teacher = self.outputs["student"], self.outputs["teacher"]
        names = []
        for name in self.candidates:
            s, t = student.get(name, []), teacher.get(name, [])
            if len(s) == len(t) == 1 and isinstance(s[0], torch.Tensor) and isinstance(t[0], torch.Tensor):
                if s[0].shape == t[0].shape and s[0].is_floating_point():
                    names.append(name)
        return names

    def loss(self) -> torch.Tensor:
        """Mean normalised MSE over the matched layers of the last forward of both models; clears the record."""
        if self.names is None:
            self.names = self._resolve()
        student, teacher = self.outputs["student"], self.outputs["teacher"]
        terms = []
        for name in self.names:
            s, t = student[name][0], teacher[name][0].to(student[name][0].device).detach()
            terms.append((s - t).pow(2).mean() / t.pow(2).mean().clamp(min=1e-12))
        self.clear()
        if not terms:
            return torch.zeros(())
        return torch.stack(terms).mean()

    def clear(self) -> None:
        """Forget the recorded outputs (call after an evaluation pass, which records too)."""
        self.outputs = {"student": {}, "teacher": {}}

    def close(self) -> None:
        """Remove the hooks."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self.clear()

    def __enter__(self) -> LayerMatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
