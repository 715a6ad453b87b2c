"""Mixed-precision candidates and layer groups: which quantizers must share a precision, and what each costs.

A **candidate** is one precision for a group: a weight bitwidth and an activation bitwidth (``"W4A8"``,
``"W8A16"``), optionally with blockwise weights (``"W3A16B64"``: one scale per block of 64 input channels of each
output channel, where the layer's input channels make whole blocks; elsewhere the sim's own layout). Float formats
(fp16, bf16, fp8) are a planned extension: :class:`Candidate` keeps the widths in named fields so that a
``param_format``/``act_format`` can be added beside them without changing callers.

A **layer group** is one weighted layer (its weight quantizers, shared by every call site of the layer) with the
activation quantizers that belong to it: each enabled activation quantizer belongs to the nearest weighted layer
upstream of it in the graph (a conv's output, or the output of the ReLU6 that ends its supergroup, or an Add after
it); quantizers with no weighted layer upstream (the model's input quantizers) belong to the first weighted layer
downstream. So a group is what AIMET calls a quantizer group: quantizers that change precision together.

Costs per group (per sample), as AIMET counts them:

* ``bitops``: ``MACs × weight bits × activation bits`` of the layer's calls;
* ``memory``: bytes of the group's quantized parameters, ``elements × weight bits / 8``, plus what blocks add over
  one scale per output channel (per-channel scales are not counted, as AIMET): each further block's float32 scale
  (32 bits, as the export writes it) and, with asymmetric weights, its zero point (weight bits); with LPBQ
  (``decompressed_bw``), each block's integer multiplier (``decompressed_bw - weight bits``) instead.

Example:
    >>> Candidate.parse("W4A8"), Candidate.parse("w8a16").name
    (Candidate(param_bw=4, act_bw=8, block_size=0), 'W8A16')
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import total_ordering
from typing import Any, Literal, NamedTuple

import torch
from torch import fx, nn

from ..errors import InvalidOptionError
from ..ops import spec_for
from ..quant.blocks import block_axis_for, blocks_fit
from ..quant.config import PER_CHANNEL_AXIS
from ..quant.quantizer import Quantizer
from ..quant.sim import QuantSim
from ..quant.wrapper import QuantWrapper

__all__ = ["Candidate", "CostKind", "LayerGroup", "WeightBlocks", "parse_candidates", "find_groups", "measure_macs"]

CostKind = Literal["bitops", "memory"]

_SPEC = re.compile(r"^\s*w(\d+)\s*a(\d+)\s*(?:b(\d+))?\s*$", re.IGNORECASE)
#: bits a further block scale costs beyond one scale per output channel: a float32 (the export's scale type)
BLOCK_SCALE_BITS = 32


@total_ordering
@dataclass(frozen=True)
class Candidate:
    """One precision a layer group can take: ``param_bw``-bit weights, ``act_bw``-bit activations, and with
    ``block_size`` one weight scale per block of that many input channels (0: the sim's own weight layout).

    Candidates order by bit-operations per MAC, then weight bits, then finer weight scales (blocks above the sim's
    layout, smaller blocks above larger ones): the highest is the most precise.

    Example:
        >>> Candidate(4, 8).name, Candidate.parse("W8A16") > Candidate.parse("W8A8"), Candidate(3, 16, 64).name
        ('W4A8', True, 'W3A16B64')
        >>> Candidate.parse("W4A16B32") > Candidate.parse("W4A16B64") > Candidate.parse("W4A16")
        True
    """

    param_bw: int
    act_bw: int
    block_size: int = 0

    def __post_init__(self) -> None:
        for what, bw in (("param_bw", self.param_bw), ("act_bw", self.act_bw)):
            if isinstance(bw, bool) or not isinstance(bw, int) or not 2 <= bw <= 16:
                raise InvalidOptionError(f"candidate {what}={bw!r}: pass a whole number of bits in [2, 16]")
        block = self.block_size
        if isinstance(block, bool) or not isinstance(block, int) or block < 0:
            raise InvalidOptionError(f"candidate block_size={block!r}: pass input channels per block (0: none)")
        if block and self.param_bw >= 16:
            raise InvalidOptionError(f"candidate {self.name}: 16-bit weights stay float in AMP; blocks need fewer bits")

    @property
    def name(self) -> str:
        """``"W{param_bw}A{act_bw}"``, with ``"B{block_size}"`` for blockwise weights."""
        return f"W{self.param_bw}A{self.act_bw}" + (f"B{self.block_size}" if self.block_size else "")

    @property
    def rank(self) -> tuple[int, int, int, float]:
        """The sort key: bit-operations per MAC, weight bits, activation bits, finer weight scales."""
        return (self.bit_product, self.param_bw, self.act_bw, 1.0 / self.block_size if self.block_size else 0.0)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Candidate):
            return NotImplemented
        return self.rank < other.rank

    @property
    def bit_product(self) -> int:
        """``param_bw × act_bw``: the candidate's bit-operations per MAC."""
        return self.param_bw * self.act_bw

    @classmethod
    def parse(cls, spec: str | Candidate | tuple[int, ...]) -> Candidate:
        """A candidate from ``"W4A8"`` or ``"W4A8B64"`` (any case), a ``(param_bw, act_bw[, block_size])`` tuple, or a
        Candidate.

        Raises:
            InvalidOptionError: not of that form, or bitwidths outside [2, 16] (float formats such as "fp16"
                are not candidates yet).

        Example:
            >>> Candidate.parse((8, 16)).name
            'W8A16'
        """
        if isinstance(spec, Candidate):
            return spec
        if isinstance(spec, tuple) and len(spec) in (2, 3):
            return cls(*spec)
        match = _SPEC.match(spec) if isinstance(spec, str) else None
        if match is None:
            raise InvalidOptionError(
                f"candidate {spec!r}: write it as 'W<weight bits>A<activation bits>', e.g. 'W4A8' or 'W8A16', with "
                "'B<input channels per block>' for blockwise weights, e.g. 'W4A16B64' (float formats such as fp16 "
                "are not mixed-precision candidates yet)"
            )
        return cls(int(match.group(1)), int(match.group(2)), int(match.group(3) or 0))


def parse_candidates(specs: str | Iterable[str | Candidate | tuple[int, ...]]) -> tuple[Candidate, ...]:
    """Candidates from ``"W4A8,W8A8"`` or a sequence, without duplicates, highest (most bit-operations) first.

    Raises:
        InvalidOptionError: an unknown candidate, or fewer than two distinct ones.

    Example:
        >>> [c.name for c in parse_candidates("W4A8, W8A16,W8A8")]
        ['W8A16', 'W8A8', 'W4A8']
    """
    items = [s for s in specs.split(",") if s.strip()] if isinstance(specs, str) else list(specs)
    found = sorted({Candidate.parse(s) for s in items}, reverse=True)
    if len(found) < 2:
        raise InvalidOptionError(
            f"candidates={specs!r}: give at least two distinct precisions, e.g. ('W4A8', 'W8A8', 'W8A16')"
        )
    return tuple(found)


class WeightBlocks(NamedTuple):
    """A group weight that can take blocks (a Conv's or Linear's): its parameter name, output-channel axis, output
    and input channels, the sim's own block size (0: none) and LPBQ ``decompressed_bw`` (0: none)."""

    name: str
    axis: int
    channels: int
    inputs: int
    own_block: int = 0
    decompressed_bw: int = 0

    def fits(self, block_size: int) -> bool:
        """Whether its input channels split into whole blocks of ``block_size`` (:func:`~leantorch.quant.blocks.
        blocks_fit`): where they do not, the weight keeps the sim's layout.

        Example:
            >>> WeightBlocks("fc.weight", 0, 10, 96).fits(32), WeightBlocks("fc.weight", 0, 10, 48).fits(32)
            (True, False)
        """
        return blocks_fit((self.inputs,), 0, block_size)


@dataclass
class LayerGroup:
    """Quantizers that take one precision together: a weighted layer's weights and its activations.

    ``macs``: multiply-accumulates per sample over the layer's calls; ``params``: elements of its quantized
    parameters; ``param_names``: parameter names (as in ``sim.param_quantizers()`` and encodings files);
    ``activation_names``: qualified quantizer names (as in ``sim.quantizers()``); ``weight_blocks``: its weights
    that can take blocks; ``zero_points``: asymmetric weights (a block also stores a zero point).
    """

    name: str
    param_names: list[str] = field(default_factory=list)
    activation_names: list[str] = field(default_factory=list)
    macs: int = 0
    params: int = 0
    weight_blocks: list[WeightBlocks] = field(default_factory=list)
    zero_points: bool = False

    def cost(self, candidate: Candidate, kind: CostKind) -> float:
        """This group's cost at ``candidate``: bit-operations or bytes (see the module docstring).

        Example:
            >>> LayerGroup("fc", macs=100, params=50).cost(Candidate(4, 8), "memory")
            25.0
            >>> fc = LayerGroup("fc", params=10 * 128, weight_blocks=[WeightBlocks("fc.weight", 0, 10, 128)])
            >>> fc.cost(Candidate(4, 16, 64), "memory") - fc.cost(Candidate(4, 16), "memory")  # 10 more float32s
            40.0
        """
        if kind == "bitops":
            return float(self.macs * candidate.bit_product)
        return (self.params * candidate.param_bw + self.block_scale_bits(candidate)) / 8.0

    def block_scale_bits(self, candidate: Candidate) -> int:
        """Bits the group's block scales take at ``candidate`` beyond one scale per output channel.

        Example:
            >>> fc = LayerGroup("fc", weight_blocks=[WeightBlocks("fc.weight", 0, 10, 128)], zero_points=True)
            >>> fc.block_scale_bits(Candidate(4, 8, 32))  # 10 channels × 3 further blocks × (32 + 4) bits
            1080
        """
        bits = 0
        for w in self.weight_blocks:
            block = candidate.block_size or w.own_block
            if not block or not w.fits(block) or w.inputs == block:  # per channel (fallback) or one block per channel
                continue
            if w.decompressed_bw and not candidate.block_size:  # LPBQ: an integer multiplier per block
                bits += w.channels * (w.inputs // block) * max(w.decompressed_bw - candidate.param_bw, 0)
            else:
                per_scale = BLOCK_SCALE_BITS + (candidate.param_bw if self.zero_points else 0)
                bits += w.channels * (w.inputs // block - 1) * per_scale
        return bits


def _wrapper_quantizers(wrapper: QuantWrapper) -> list[Quantizer]:
    inner = [*wrapper.input_quantizers, *wrapper.output_quantizers, *wrapper.inner_quantizers()]
    return [q for q in inner if isinstance(q, Quantizer)]


def _tunable(q: Quantizer) -> bool:
    """Integer, enabled, not frozen: a frozen encoding (AdaRound's, a loaded file's) keeps its bitwidth."""
    return q.is_active and not q.frozen and q.float_format is None


def find_groups(sim: QuantSim) -> tuple[list[LayerGroup], list[str]]:
    """The layer groups of ``sim`` in graph order, and the tunable activation quantizers no group owns.

    Example:
        >>> sim = QuantSim(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), torch.randn(1, 4))
        >>> groups, _ = find_groups(sim)
        >>> [(g.name, g.param_names, g.activation_names) for g in groups]  # doctest: +NORMALIZE_WHITESPACE
        [('0', ['0.weight'], ['input_quantizers.0', '1.output_quantizers.0']),
         ('2', ['2.weight'], ['2.output_quantizers.0'])]
    """
    names = {id(q): n for n, q in sim.quantizers().items()}
    layers = sim.layers()
    primary = {n: (w.repeat_of or n) for n, w in layers.items()}
    groups: dict[str, LayerGroup] = {}
    for name, quantizer in sim.param_quantizers().items():
        if _tunable(quantizer):
            layer = name.rpartition(".")[0]
            groups.setdefault(layer, LayerGroup(layer)).param_names.append(name)
    owner_up: dict[fx.Node, str | None] = {}
    order = list(sim.model.graph.nodes)
    for node in order:  # the nearest weighted layer upstream, along each node's first tensor input
        target = str(node.target) if node.op == "call_module" else ""
        if primary.get(target) in groups:
            owner_up[node] = primary[target]
            continue
        inputs = [a for a in node.all_input_nodes if a in owner_up]
        owner_up[node] = next((owner_up[a] for a in inputs if owner_up[a] is not None), None)
    owner_down: dict[fx.Node, str | None] = {}
    for node in reversed(order):  # the first weighted layer downstream, for quantizers with none upstream
        target = str(node.target) if node.op == "call_module" else ""
        own = primary.get(target) if primary.get(target) in groups else None
        owner_down[node] = own or next((owner_down[u] for u in node.users if owner_down.get(u)), None)
    orphans: list[str] = []
    for node in order:
        if node.op != "call_module":
            continue
        module = sim.model.get_submodule(str(node.target))
        found = _wrapper_quantizers(module) if isinstance(module, QuantWrapper) else [module]
        for q in found:
            if not isinstance(q, Quantizer) or not _tunable(q) or id(q) not in names:
                continue
            owner = owner_up[node] or owner_down[node]
            if owner is None:
                orphans.append(names[id(q)])
            elif names[id(q)] not in groups[owner].activation_names:
                groups[owner].activation_names.append(names[id(q)])
    ranked = {n: i for i, n in enumerate(str(node.target) for node in order)}
    ordered = sorted(groups.values(), key=lambda g: ranked.get(g.name, len(ranked)))
    weight_quantizers = sim.param_quantizers()
    for group in ordered:
        wrapper = layers[group.name]
        group.params = sum(getattr(wrapper.module, n.rpartition(".")[2]).numel() for n in group.param_names)
        group.weight_blocks = _weight_blocks(weight_quantizers, wrapper, group.param_names)
        group.zero_points = not sim.config.param_symmetric
    return ordered, orphans


def _weight_blocks(
    quantizers: dict[str, Quantizer], wrapper: QuantWrapper, param_names: list[str]
) -> list[WeightBlocks]:
    """:attr:`LayerGroup.weight_blocks` of a wrapper's weights."""
    axis = PER_CHANNEL_AXIS.get(wrapper.op_type)
    found = []
    for name in param_names:
        weight = getattr(wrapper.module, name.rpartition(".")[2])
        if axis is None or weight.dim() < 2:
            continue
        q = quantizers[name]
        own = (q.block_size or 0) if q.is_blockwise else 0
        channels, inputs = int(weight.shape[axis]), int(weight.shape[block_axis_for(axis)])
        found.append(WeightBlocks(name, axis, channels, inputs, own, q.decompressed_bw or 0))
    return found


def measure_macs(sim: QuantSim, groups: Sequence[LayerGroup], example: tuple[torch.Tensor, ...]) -> None:
    """Set each group's ``macs`` (per sample, summed over the layer's calls) from one forward pass of ``sim``.

    Ops the registry has no MAC formula for count 0 (their groups then cost nothing in bit-operations).

    Example:
        >>> sim = QuantSim(nn.Sequential(nn.Linear(4, 8)), torch.randn(1, 4))
        >>> groups, _ = find_groups(sim); sim.compute_encodings([torch.randn(2, 4)], progress=False)
        >>> measure_macs(sim, groups, (torch.randn(3, 4),)); groups[0].macs
        32
    """
    by_layer = {g.name: g for g in groups}
    for g in groups:
        g.macs = 0
    handles = []
    for name, wrapper in sim.layers().items():
        group = by_layer.get(wrapper.repeat_of or name)
        spec = spec_for(wrapper.module)
        if group is None or spec is None or spec.mac_count is None:
            continue
        count = spec.mac_count

        # On the wrapper: it calls a conv's kernel itself, so the inner module's forward hooks never run.
        def hook(
            w: nn.Module, inputs: tuple[Any, ...], out: Any, group: LayerGroup = group, count: Any = count
        ) -> None:
            if inputs and isinstance(inputs[0], torch.Tensor) and isinstance(out, torch.Tensor):
                inner = w.module if isinstance(w, QuantWrapper) else w
                group.macs += int(count(inner, tuple(inputs[0].shape), tuple(out.shape)))

        handles.append(wrapper.register_forward_hook(hook))
    try:
        with torch.no_grad():
            sim.model.eval()
            sim.model(*example)
    finally:
        for handle in handles:
            handle.remove()
