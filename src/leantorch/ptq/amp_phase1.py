"""Phase 1 of automatic mixed precision: every candidate's encodings, and the score of each group lowered alone.

:class:`Assembler` calibrates the model once per candidate and keeps every tuned quantizer's encoding at each, so
that any mix is put together by setting encodings, without recalibrating. :func:`phase1` scores each group at each
lower candidate with the others at the highest; with an :class:`~leantorch.evaluation.OutputScore` only the graph
after the lowered group runs (:func:`~leantorch.sweep.suffix_outputs`), same numbers as full runs.

Example:
    >>> from leantorch.ptq.amp_groups import find_groups, parse_candidates
    >>> sim = QuantSim(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), torch.randn(1, 4))
    >>> groups, _ = find_groups(sim); cands = parse_candidates("W4A8,W8A8")
    >>> asm = Assembler(sim, groups, cands, [torch.randn(16, 4)])
    >>> asm.set_group(groups[0], cands[1]); sim.param_quantizers()["0.weight"].bitwidth
    4
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, cast

import torch
from torch import nn
from tqdm.auto import tqdm

from ..evaluation import OutputScore
from ..quant.blocks import block_axis_for
from ..quant.encoding import Encoding
from ..quant.quantizer import Quantizer
from ..quant.sim import QuantSim
from ..sweep import Trial, suffix_outputs
from .amp_groups import Candidate, LayerGroup
from .amp_rounding import RoundedWeights
from .auto import EvalFunctionError, call_eval_fn

__all__ = ["Assembler", "phase1", "suffix_scores"]


class Assembler:
    """Encodings of every candidate for every tuned quantizer, and a configuration put together from them.

    Args:
        sim: the QuantSim whose quantizers are tuned; groups: its layer groups; candidates: highest first;
        calib: calibration batches (re-iterable) or ``callable(model)``, run once per candidate.
    """

    def __init__(
        self,
        sim: QuantSim,
        groups: list[LayerGroup],
        candidates: tuple[Candidate, ...],
        calib: Any,
        rounded: dict[Candidate, RoundedWeights] | None = None,
    ):
        self.sim, self.groups = sim, groups
        self.quantizers = {**sim.quantizers(), **sim.param_quantizers()}  # weights by parameter name
        self.rounded = rounded or {}
        swapped = {n for r in self.rounded.values() for n in r.weights}
        self.params = {n: _parameter(sim, n) for g in groups for n in g.param_names if n in swapped}
        self.float_weights = {n: p.detach().clone() for n, p in self.params.items()}
        self.cache: dict[Candidate, dict[str, Encoding | None]] = {}
        self.layouts = {n: _layout(self.quantizers[n]) for g in groups for n in g.param_names}
        self.blockable = {w.name: w for g in groups for w in g.weight_blocks}
        for cand in reversed(candidates):  # the highest last: quantizers outside the groups end as it leaves them
            for g in groups:
                for n in g.param_names:
                    self._set_layout(n, cand)
                self._set_weights(g, cand)  # a rounded candidate's frozen encoding brings the same layout
                for n in g.param_names:
                    self.quantizers[n].bitwidth = cand.param_bw
                for n in g.activation_names:
                    self.quantizers[n].bitwidth = cand.act_bw
            sim.compute_encodings(calib, progress=False)  # rounded weights' encodings are frozen: kept
            names = [n for g in groups for n in (*g.param_names, *g.activation_names)]
            self.cache[cand] = {n: self.quantizers[n].encoding for n in names}

    def _set_layout(self, name: str, cand: Candidate) -> None:
        """The weight quantizer ``name`` on ``cand``'s blocks where its weight makes whole blocks of them, else on
        the sim's own layout (the encodings calibrated after this carry it: :meth:`set_group` restores it)."""
        q, weight = self.quantizers[name], self.blockable.get(name)
        q.axis, q.block_size, q.block_axis, q.decompressed_bw = self.layouts[name]
        if cand.block_size and weight is not None and weight.fits(cand.block_size):
            q.axis, q.block_size, q.block_axis = weight.axis, cand.block_size, block_axis_for(weight.axis)
            q.decompressed_bw = None

    def _set_weights(self, group: LayerGroup, cand: Candidate) -> None:
        """``cand``'s rounded weights (encodings frozen) where it has them, else the float ones (unfrozen)."""
        rounded = self.rounded.get(cand)
        for n in group.param_names:
            if n not in self.params:
                continue
            with torch.no_grad():
                if rounded is not None and n in rounded.weights:
                    self.params[n].copy_(rounded.weights[n])
                    self.quantizers[n].set_encoding(rounded.encodings[n], freeze=True)
                else:
                    self.params[n].copy_(self.float_weights[n])
                    self.quantizers[n].frozen = False

    def set_group(self, group: LayerGroup, cand: Candidate) -> None:
        """Put ``group``'s quantizers on ``cand``'s encodings (and its weights on ``cand``'s rounding, if any)."""
        self._set_weights(group, cand)
        frozen = self.rounded[cand].encodings if cand in self.rounded else {}
        for n in (*group.param_names, *group.activation_names):
            enc = self.cache[cand][n]
            if enc is not None:  # None: it saw no data during calibration (left as calibration left it)
                self.quantizers[n].set_encoding(enc, freeze=n in frozen)

    def set_all(self, config: dict[str, Candidate]) -> None:
        """Put every group on its candidate in ``config`` (group name -> candidate)."""
        for g in self.groups:
            self.set_group(g, config[g.name])

    def install(self, found: RoundedWeights) -> None:
        """Put the groups' weights on ``found``'s rounded ones and freeze their encodings (a re-rounded mix); the
        weights it lacks and the activations keep what :meth:`set_all` gave them."""
        for n, param in self.params.items():
            if n in found.weights:
                with torch.no_grad():
                    param.copy_(found.weights[n])
                self.quantizers[n].set_encoding(found.encodings[n], freeze=True)


def _layout(q: Quantizer) -> tuple[int | None, int | None, int | None, int | None]:
    """A weight quantizer's per-channel axis and block settings."""
    return q.axis, q.block_size, q.block_axis, q.decompressed_bw


def _parameter(sim: QuantSim, name: str) -> torch.Tensor:
    """The tensor of parameter ``name`` (``"layer.weight"``) inside ``sim.model``'s wrapper of that layer."""
    layer, _, param = name.rpartition(".")
    return cast(torch.Tensor, getattr(sim.layers()[layer].module, param))


def phase1(
    assembler: Assembler, candidates: tuple[Candidate, ...], score: Callable[[nn.Module], float], progress: bool
) -> tuple[dict[str, dict[str, float]], int]:
    """Per group: the score at the highest candidate (all groups there) and with only this group lowered."""
    groups, top = assembler.groups, candidates[0]
    assembler.set_all(dict.fromkeys((g.name for g in groups), top))
    base = call_eval_fn(score, assembler.sim.model, f"all groups at {top.name}")
    table: dict[str, dict[str, float]] = {g.name: {top.name: base} for g in groups}
    if isinstance(score, OutputScore):  # scores outputs: run only the graph after each lowered group
        for (group_name, cand_name), value in suffix_scores(assembler, candidates, score, progress).items():
            table[group_name][cand_name] = value
        return table, 1 + len(groups) * (len(candidates) - 1)
    bar = tqdm(total=len(groups) * (len(candidates) - 1), desc="AMP phase 1", disable=not progress, leave=False)
    try:
        for g in groups:
            for cand in candidates[1:]:
                assembler.set_group(g, cand)
                table[g.name][cand.name] = call_eval_fn(score, assembler.sim.model, f"group {g.name} at {cand.name}")
                bar.update(1)
            assembler.set_group(g, top)
    finally:
        bar.close()
    return table, 1 + len(groups) * (len(candidates) - 1)


def suffix_scores(
    assembler: Assembler, candidates: tuple[Candidate, ...], score: OutputScore, progress: bool
) -> dict[tuple[str, str], float]:
    """Phase 1 by :func:`~leantorch.sweep.suffix_outputs`: the same numbers as full runs, in about half the time."""
    quantizers = assembler.quantizers

    def lowered(group: LayerGroup, cand: Candidate) -> Callable[[], AbstractContextManager[None]]:
        @contextmanager
        def change() -> Iterator[None]:
            assembler.set_group(group, cand)
            try:
                yield
            finally:
                assembler.set_group(group, candidates[0])

        return change

    trials = [
        Trial((g.name, c.name), tuple(quantizers[n] for n in (*g.param_names, *g.activation_names)), lowered(g, c))
        for g in assembler.groups
        for c in candidates[1:]
    ]

    def finite(key: Hashable, outputs: list[Any]) -> float:
        value = score.score_outputs(outputs)
        if not math.isfinite(value):
            raise EvalFunctionError(f"the score of group {key} is {value}: check the data and model for NaN/Inf")
        return value

    probe = [(b,) for b in score.probe]
    found = suffix_outputs(assembler.sim.model, probe, trials, progress, "AMP phase 1", on_result=finite)
    return {key: value for key, value in found.items() if isinstance(key, tuple)}
