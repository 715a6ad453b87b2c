"""The sweep shared by layer-wise weight rounding (AdaRound, GPTQ, SeqMSE): each Conv/Linear in graph order gets its
float inputs and, in lock step, the inputs the partially rounded and quantized model gives it; the caller
returns the rounded weight, which later layers then see.

The calibration batches are advanced node by node through the float model and through ``sim.model``
(:class:`~leantorch.ptq.frontier.Frontier`): the whole sweep costs about one forward pass of each model
instead of one per layer (O(depth²)).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast, overload

import torch
from torch import fx, nn
from tqdm.auto import tqdm

from ..batches import check_iterable, model_inputs
from ..errors import CalibrationDataError, InvalidOptionError
from ..graph import example_inputs, prepare, untie_parameters
from ..options import check_count, check_flag
from ..paths import check_directory, check_file_name
from ..quant.blocks import check_block_size, expand_blocks
from ..quant.encoding import Encoding
from ..quant.encodings_file import encodings_dict, write_encodings
from ..quant.quantizer import Quantizer
from ..quant.sim import QuantSim
from .frontier import Frontier

__all__ = [
    "LayerRoundingConfig",
    "calibration_batches",
    "rounding_sim",
    "RoundLayer",
    "RoundedLayer",
    "round_layers",
    "layer_inputs",
    "BatchInputs",
    "save_param_encodings",
    "weight_grid",
    "round_to_grid",
]

log = logging.getLogger(__name__)

Inputs = tuple[torch.Tensor, ...]  # the model inputs of one calibration batch


@dataclass(frozen=True)
class RoundedLayer:
    """A rounded weight with what goes with it: a re-fitted bias (None: the layer's own), and the grid it was
    rounded on where the algorithm chose one (None: the weight quantizer's)."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    encoding: Encoding | None = None


#: ``(layer name, float layer, its weight quantizer's encoding, float inputs per batch, quantized inputs per
#: batch or None) -> the rounded weight`` (the float weight's shape, on the encoding's grid), or a
#: :class:`RoundedLayer` with a new bias and/or the grid the layer chose (SeqMSE; GPTQ with ``correct_bias`` or
#: ``clip_ratios``).
RoundLayer = Callable[
    [str, nn.Module, Encoding, Sequence[torch.Tensor], "Sequence[torch.Tensor] | None"],
    "torch.Tensor | RoundedLayer",
]


@dataclass(frozen=True)
class LayerRoundingConfig:
    """What every layer-wise weight rounding (AdaRound, GPTQ, SeqMSE) is configured with; each algorithm's
    config extends it with its own options. Checked on construction.

    Attributes:
        param_bw, per_channel, param_scheme: the weight quantization to round for (``param_scheme`` picks the
            starting scales).
        param_block_size, decompressed_bw: blockwise weights (and LPBQ), as :class:`~leantorch.QuantSim`'s.
        act_bw, scheme, config: activation quantization of the sim that gives the quantized inputs
            (``config``: a QuantSim config name, path or dict).
        num_batches: calibration batches used (the first ones).
        path, filename_prefix: where the frozen encodings go (``<path>/<filename_prefix>.encodings``).
        progress: show a per-layer progress bar.

    Example:
        >>> LayerRoundingConfig(param_bw=8).param_bw
        8
        >>> LayerRoundingConfig(num_batches=0)
        Traceback (most recent call last):
        ...
        leantorch.errors.InvalidOptionError: num_batches=0: pass a whole number ≥ 1 (calibration batches to use)
    """

    param_bw: int = 4
    act_bw: int = 8
    per_channel: bool | None = True
    scheme: str = "tf_enhanced"
    param_scheme: str = "mse"
    config: Any = "default"
    num_batches: int = 4
    path: str | Path = "."
    filename_prefix: str = "rounded"
    progress: bool = True
    param_block_size: int | None = None
    decompressed_bw: int | None = None

    def __post_init__(self) -> None:
        check_count("num_batches", self.num_batches, hint=" (calibration batches to use)")
        check_block_size(self.param_block_size)
        check_flag("per_channel", self.per_channel, allow_none=True)


def round_layers(
    model: nn.Module,
    example_input: Any,
    calibration: Iterable[Any],
    round_layer: RoundLayer,
    options: LayerRoundingConfig,
    use_quantized_inputs: bool,
    what: str,
) -> tuple[fx.GraphModule, Path]:
    """Round every quantized Conv/Linear weight of ``model`` with ``round_layer``, layer by layer in graph order;
    return the rounded model and its frozen weight encodings (``<path>/<filename_prefix>.encodings``).

    The weight grids are those of a QuantSim built with ``options`` and calibrated on the first
    ``num_batches`` batches; with ``use_quantized_inputs`` each layer sees the inputs of that sim with the
    layers before it already rounded (asymmetric reconstruction), else float inputs. ``what`` names the
    algorithm in messages and the progress bar. The input model is not modified.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
        >>> data = [torch.randn(8, 4)]
        >>> nearest = lambda name, layer, enc, x, xq: layer.weight.detach()  # a stand-in: keep the weights
        >>> options = LayerRoundingConfig(param_bw=8, scheme="minmax", param_scheme="minmax", num_batches=1,
        ...     path="/tmp", filename_prefix="nearest", progress=False)
        >>> rounded, enc = round_layers(net, data[0][:1], data, nearest, options, True, "nearest")
        >>> enc.name
        'nearest.encodings'
    """
    num_batches, path, filename_prefix, progress = (
        options.num_batches,
        options.path,
        options.filename_prefix,
        options.progress,
    )
    out = check_directory(path, "path")
    enc_path = out / f"{check_file_name(filename_prefix)}.encodings"
    # The data is checked before tracing: a missing data set should fail fast.
    data = calibration_batches(calibration, example_input, num_batches, what)
    reference = prepare(model, example_input)
    gm = copy.deepcopy(reference)  # receives the rounded weights; ``reference`` stays float for the targets
    sim = rounding_sim(gm, example_input, options, data)
    if not use_quantized_inputs:
        sim.set_activation_quantization(False)
    layers = [
        n
        for n, w in sim.layers().items()
        if w.op_type in ("Conv", "Linear") and w.repeat_of is None and w.param_quantizers["weight"].is_active
    ]
    tied = [n for n in layers if untie_parameters(gm, gm.get_submodule(n), names=("weight",))]
    for name in tied:
        # Each layer gets its own rounding of a weight it shared: rounding one copy for two layers would leave
        # the first layer with the second one's rounding (and grid).
        untie_parameters(sim.model, sim.layers()[name].module, names=("weight",))
    if tied:
        log.warning("%s: tied weights of %s are untied; each layer gets its own rounded copy", what, ", ".join(tied))
    bar = tqdm(total=len(layers), desc=what, unit="layer", disable=not progress, leave=False)
    for name, inputs, quantized in layer_inputs(reference, sim, layers, data, use_quantized_inputs):
        bar.update(1)
        wrapper = sim.layers()[name]
        quantizer = cast(Quantizer, wrapper.param_quantizers["weight"])
        assert quantizer.encoding is not None
        result = round_layer(name, reference.get_submodule(name), quantizer.encoding, inputs, quantized)
        del inputs, quantized  # the activations can go before the next layer's arrive
        layer_result = result if isinstance(result, RoundedLayer) else RoundedLayer(result)
        rounded, bias = layer_result.weight, layer_result.bias
        if layer_result.encoding is not None:
            quantizer.set_encoding(layer_result.encoding.to(rounded.device))
        with torch.no_grad():
            for layer in (gm.get_submodule(name), wrapper.module):  # the sim frontier runs it next, rounded
                cast(torch.Tensor, layer.weight).copy_(rounded)
                if bias is not None:
                    cast(torch.Tensor, layer.bias).copy_(bias)
        quantizer.frozen = True
    bar.close()
    save_param_encodings(sim, enc_path)
    return gm, enc_path


def calibration_batches(calibration: Iterable[Any], example_input: Any, num_batches: int, what: str) -> list[Inputs]:
    """The model inputs of the first ``num_batches`` calibration batches, checked (structure, NaN/Inf).

    Raises:
        CalibrationDataError: ``calibration`` is None or holds no batch (naming ``what`` needs it), or a bad batch.

    Example:
        >>> [tuple(x.shape) for (x,) in calibration_batches([torch.zeros(2, 4)] * 3, torch.zeros(1, 4), 2, "gptq")]
        [(2, 4), (2, 4)]
    """
    if calibration is None:
        raise CalibrationDataError(
            f"{what} needs calibration data (got None): pass a list or DataLoader of input "
            "batches like the example input"
        )
    check_iterable(calibration)
    num_inputs = len(example_inputs(example_input))
    data = [model_inputs(b, num_inputs, i) for i, b in zip(range(num_batches), calibration)]
    if not data:
        raise CalibrationDataError(
            f"{what} needs calibration data (got no batch): pass a list or DataLoader of "
            "input batches like the example input"
        )
    return data


def rounding_sim(gm: fx.GraphModule, example_input: Any, options: LayerRoundingConfig, data: list[Inputs]) -> QuantSim:
    """The QuantSim whose grids a layer- or block-wise rounding uses: built from ``options``, calibrated on
    ``data``.

    Example:
        >>> from leantorch import prepare
        >>> net, x = nn.Sequential(nn.Linear(4, 2)), torch.randn(8, 4)
        >>> options = LayerRoundingConfig(param_bw=4, path="/tmp", filename_prefix="doc", progress=False)
        >>> rounding_sim(prepare(net, x[:1]), x[:1], options, [(x,)]).param_quantizers()["0.weight"].bitwidth
        4
    """
    sim = QuantSim(
        gm,
        example_input,
        param_bw=options.param_bw,
        act_bw=options.act_bw,
        scheme=options.scheme,
        param_scheme=options.param_scheme,
        per_channel=options.per_channel,
        config=options.config,
        param_block_size=options.param_block_size,
        decompressed_bw=options.decompressed_bw,
    )
    sim.compute_encodings(data, progress=False)
    return sim


def layer_inputs(
    reference: fx.GraphModule, sim: QuantSim, layers: list[str], data: list[Inputs], use_quantized_inputs: bool
) -> Iterator[tuple[str, Sequence[torch.Tensor], Sequence[torch.Tensor] | None]]:
    """Each layer in graph order with its float inputs and (asymmetric mode) its quantized inputs, per batch.

    The sim's layer runs when the sweep moves on, after the caller has copied the rounded weight into its
    wrapper, so later layers see the rounded output (the caller must do so before asking for the next layer)."""
    batches = [tuple(x.to(sim.device) for x in batch) for batch in data]
    float_nodes, sim_nodes = _first_calls(reference, layers), _first_calls(sim.model, layers)
    float_frontier = Frontier(reference, batches)
    sim_frontier = Frontier(sim.model, batches) if use_quantized_inputs else None
    order = sorted(
        (name for name in layers if name in sim_nodes and name in float_nodes),
        key=lambda name: (
            sim_frontier.nodes.index(sim_nodes[name]) if sim_frontier else float_frontier.nodes.index(float_nodes[name])
        ),
    )
    for name in order:
        with torch.no_grad():
            float_frontier.advance_to(float_nodes[name])
        inputs = BatchInputs(float_frontier, float_nodes[name])
        quantized = None
        if sim_frontier is not None:
            with torch.no_grad():
                sim_frontier.advance_to(sim_nodes[name])
            wrapper = sim.layers()[name]
            # what the wrapped layer multiplies its weights with: its input after its input quantizer
            quantizer = wrapper.input_quantizers[0] if len(wrapper.input_quantizers) else None
            quantized = BatchInputs(sim_frontier, sim_nodes[name], quantizer)
        yield name, inputs, quantized


class BatchInputs(Sequence[torch.Tensor]):
    """A layer's input for every calibration batch, read from a :class:`~leantorch.ptq.frontier.Frontier` one batch
    at a time (optionally through the layer's input quantizer).

    Why not a list: the frontier keeps what exceeds its memory budget in temporary files, and a list would
    read every batch back into memory at once: EfficientNet-Lite0's widest layer input is 96 × 112² floats per
    crop, 9.9 GB for 2,048 crops, twice (float and quantized inputs), which ran a 23 GB machine out of memory in
    GPTQ. Iterating holds one batch's copy at a time; valid only until the sweep moves on to the next layer.

    Example:
        >>> from torch import fx
        >>> gm = fx.symbolic_trace(nn.Sequential(nn.Linear(3, 4), nn.ReLU()))
        >>> frontier = Frontier(gm, [(torch.randn(2, 3),), (torch.randn(5, 3),)])
        >>> relu = [n for n in gm.graph.nodes if n.target == "1"][0]; frontier.advance_to(relu)
        >>> [tuple(x.shape) for x in BatchInputs(frontier, relu)]
        [(2, 4), (5, 4)]
    """

    def __init__(self, frontier: Frontier, node: fx.Node, transform: Callable[[torch.Tensor], Any] | None = None):
        self.frontier, self.node, self.transform = frontier, node, transform

    def __len__(self) -> int:
        return len(self.frontier.envs)

    @overload
    def __getitem__(self, index: int) -> torch.Tensor: ...

    @overload
    def __getitem__(self, index: slice) -> list[torch.Tensor]: ...

    def __getitem__(self, index: int | slice) -> torch.Tensor | list[torch.Tensor]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        if not -len(self) <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        with torch.no_grad():
            x = cast(torch.Tensor, self.frontier.argument_of(self.node, index % len(self))).detach()
            return cast(torch.Tensor, self.transform(x)) if self.transform is not None else x


def _first_calls(gm: fx.GraphModule, layers: list[str]) -> dict[str, fx.Node]:
    """The first ``call_module`` node of each named layer (a layer called twice is fitted at its first call)."""
    wanted, found = set(layers), {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target in wanted and node.target not in found:
            found[str(node.target)] = node
    return found


def save_param_encodings(sim: QuantSim, path: Path) -> None:
    """The active parameter encodings only (activations empty), checked and staged like every written file."""
    params = {n: q.encoding for n, q in sim.param_quantizers().items() if q.is_active and q.encoding is not None}
    write_encodings(path, encodings_dict({}, params))


def weight_grid(
    encoding: Encoding, groups: int, out: int, device: torch.device, shape: Sequence[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``encoding``'s scale and offset (float64) shaped ``[groups, out/groups]`` (per output channel) or ``[1, 1]``
    (per tensor), to broadcast against a weight viewed as ``[groups, out/groups, ...]``; a blockwise encoding
    (which needs the weight's ``shape``) gives one per weight element, ``[groups, out/groups, K]``.

    Raises:
        InvalidOptionError: a per-channel encoding that is not along the output channels (axis 0).
    """
    scale = encoding.scale.to(device=device, dtype=torch.float64)
    offset = encoding.offset.to(device=device, dtype=torch.float64)
    if encoding.is_blockwise:
        assert shape is not None and encoding.axis == 0, "blockwise rounding needs the weight's shape, axis 0"
        assert encoding.block_axis is not None and encoding.block_size is not None
        where = (shape, encoding.axis, encoding.block_axis, encoding.block_size)
        return expand_blocks(scale, *where).reshape(groups, out, -1), expand_blocks(offset, *where).reshape(
            groups, out, -1
        )
    if encoding.axis is None:
        return scale.reshape(1, 1), offset.reshape(1, 1)
    if encoding.axis != 0 or scale.numel() != groups * out:
        raise InvalidOptionError(
            f"layer-wise rounding works per output channel (axis 0, {groups * out} channels); got an "
            f"encoding along axis {encoding.axis} with {scale.numel()} channels"
        )
    return scale.reshape(groups, out), offset.reshape(groups, out)


def round_to_grid(values: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, steps: int) -> torch.Tensor:
    """``values`` rounded to nearest on the grid (half to even, as ONNX), clipped to its ``steps + 1`` points.

    Example:
        >>> round_to_grid(torch.tensor([0.26, 0.25, 9.0]), torch.tensor(0.5), torch.tensor(-2.0), 3).tolist()
        [0.5, 0.0, 0.5]
    """
    return scale * (torch.clamp(torch.round(values / scale) - offset, 0, steps) + offset)
