"""Export of a calibrated QuantSim: ONNX QDQ model, AIMET encodings file, float weights.

How the ONNX file is made: a copy of ``sim.model`` is exported with torch's TorchScript exporter while
each active quantizer leaves a ``leantorch::Quantize`` marker node, then replaced by ``[Clip →]
QuantizeLinear → DequantizeLinear`` built from that quantizer's encoding (:mod:`.qdq_nodes`):

* containers ``int8``/``uint8`` up to 8 bits, ``int16``/``uint16`` up to 16 (opset 21); signed for symmetric
  encodings with a negative range, ``zero_point = -offset`` otherwise; below the container width a Clip to
  ``[min, max]`` comes first, so ONNX Runtime clamps where the simulation does; per-channel weights get
  per-axis Q/DQ; blockwise weights opset 21's blocked Q/DQ (int4/uint4 up to 4 bits); float formats a Cast
  pair (fp16, bf16) or float8 Q/DQ;
* weights are stored as float initializers already on the quantization grid (the simulated values), so
  re-quantizing them with the file's encodings is exact in any runtime (a tied weight gets one copy per grid);
* the float bias of a Conv/Gemm whose input and weight are quantized (not blockwise) is stored as int32 with
  ``scale = s_input * s_weight`` (the form integer kernels expect; error far below one output step).

The encodings file follows AIMET's encodings format version 0.6.1 (or 1.0.0 / 2.0.0 with
``encodings_version``, see :mod:`.encodings_formats`): ``activation_encodings`` keyed by ONNX
tensor name (the tensor that enters QuantizeLinear), ``param_encodings`` keyed by parameter (initializer)
name, each a list of ``{bitwidth, dtype, is_symmetric, min, max, offset, scale}`` (one per channel). The
extra key ``quantizer_names`` maps each of those names back to the quantizer(s) behind it, so that
``QuantSim.load_encodings`` of a new sim of the same model reproduces this one exactly (see
:mod:`.encodings_file`). A tensor quantized by two quantizers with different grids keeps only the first in
the file (the format has one entry per name); the export warns and leaves the other out of the name map.
"""

from __future__ import annotations

import copy
import io
import numbers
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

import onnx
import torch
from torch import fx

from ..errors import EncodingsMissingError, InvalidOptionError
from ..graph import as_tuple, untie_parameters
from ..options import check_flag
from ..paths import check_directory, check_file_name, writing
from ..staging import staged_outputs
from .encoding import Encoding
from .encodings_file import (
    EncodingsVersion,
    check_version,
    encodings_dict,
    encodings_text,
    same_encoding,
)
from .export_bias import onnx_safe_name, quantize_biases
from .qdq_nodes import needs_opset_21, qdq_nodes
from .quantizer import Quantizer
from .wrapper import QuantWrapper

if TYPE_CHECKING:
    from .sim import QuantSim

__all__ = ["Marked", "FileEncodings", "check_opset", "export_quantsim", "float_state_dict", "build_qdq_onnx"]

_V = TypeVar("_V")


class Marked(NamedTuple):
    """An active quantizer numbered for export: its parameter name (weights) and its name in ``sim.model``."""

    quantizer: Quantizer
    param_name: str | None
    name: str


class FileEncodings(NamedTuple):
    """Encodings keyed by ONNX name, and the quantizers behind each name (``quantizer_names``)."""

    activations: dict[str, Encoding]
    params: dict[str, Encoding]
    names: dict[str, dict[str, list[str]]]


#: Opsets an export can have: 13 is the first with per-axis QuantizeLinear/DequantizeLinear, 21 the first with
#: 16-bit ones. torch's TorchScript exporter writes at most opset 20; opset 21 only adds types (int16 QDQ) to
#: the ops it writes at 20, so a model exported at 20 is stamped 21.
MIN_OPSET, MAX_OPSET, WIDE_OPSET = 13, 21, 21
_TORCHSCRIPT_MAX_OPSET = 20


def check_opset(opset: Any, wide: bool) -> int:
    """The opset to export at (``None``: 17, or 21 when a quantizer has more than 8 bits), checked.

    Raises:
        InvalidOptionError: outside 13..21, or below 21 with 16-bit quantizers (int16 QDQ needs opset 21).

    Example:
        >>> check_opset(None, wide=False), check_opset(None, wide=True), check_opset(13, wide=False)
        (17, 21, 13)
    """
    if opset is None:
        return WIDE_OPSET if wide else 17
    if isinstance(opset, bool) or not isinstance(opset, numbers.Integral) or not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise InvalidOptionError(
            f"opset={opset!r}: leantorch exports ONNX opsets {MIN_OPSET} to {MAX_OPSET} ({MIN_OPSET} is the first with "
            f"per-channel QuantizeLinear, {WIDE_OPSET} the first with 16-bit ones); None picks 17, or {WIDE_OPSET} "
            "when a quantizer has more than 8 bits"
        )
    if wide and opset < WIDE_OPSET:
        raise InvalidOptionError(
            f"opset={opset}: this sim has quantizers with more than 8 bits or blockwise weights, and 16-bit and "
            f"blocked QuantizeLinear exist from opset {WIDE_OPSET} on: pass opset={WIDE_OPSET} or None"
        )
    return int(opset)


def export_quantsim(
    sim: QuantSim,
    path: str | Path,
    filename_prefix: str,
    example_input: Any = None,
    opset: int | None = None,
    unsigned_weights: bool = False,
    encodings_version: EncodingsVersion | None = None,
    rewrite: Callable[[onnx.ModelProto], None] | None = None,
) -> dict[str, Path]:
    """Write ``<prefix>.onnx``, ``<prefix>.encodings`` and ``<prefix>.pth`` into ``path``.

    Returns the three paths by kind (``"onnx"``, ``"encodings"``, ``"pth"``). ``rewrite`` changes the QDQ
    model in place before it is checked and written (the ``onnx_float`` format strips the Q/DQ pairs:
    :func:`~leantorch.quant.export_float.strip_qdq`).

    ``unsigned_weights`` stores symmetric weights in a uint container with zero point ``2**(bw-1)``: the
    same grid, bit for bit, but ONNX Runtime then runs its u8u8 integer kernels. Its default u8s8 kernels
    saturate 16-bit pair sums on x86 CPUs without VNNI (measured on EfficientNet-Lite0: top-1 agreement
    with the exact QDQ graph 50% with int8 weights, 100% with uint8). Keep the default (int8, zero point 0)
    for toolchains that require symmetric int8 weights (TensorRT, QNN).

    The arguments and the output location are checked before anything is computed, and the three files are
    written under temporary names and renamed into place only when all of them were written: a failed
    export leaves no partial files (files already there from an earlier export stay as they were).

    Raises:
        OutputPathError: ``path`` is a file or cannot be created/written; ``filename_prefix`` is empty or has a
            directory part; writing failed (disk full...).
        InvalidOptionError: ``filename_prefix`` is not a string; ``opset`` outside 13..21 (or below 21 with
            16-bit quantizers); ``encodings_version`` not one of "0.6.1", "1.0.0", "2.0.0".
        EncodingsMissingError: a quantizer in use has no encoding (call ``compute_encodings`` first).

    Example:
        >>> sorted(sim.export("out", "model"))  # doctest: +SKIP
        ['encodings', 'onnx', 'pth']
    """
    prefix = check_file_name(filename_prefix, "filename_prefix")
    out_dir = check_directory(path, "path")
    check_opset(opset, wide=any(q.is_active and needs_opset_21(q) for q in sim.quantizers().values()))
    check_flag("unsigned_weights", unsigned_weights)
    check_version(encodings_version)
    missing = [n for n, q in sim.quantizers().items() if q.is_active and q.encoding is None]
    if missing:
        raise EncodingsMissingError(
            f"{len(missing)} quantizer(s) have no encoding (e.g. {missing[:3]}): call "
            "sim.compute_encodings(...) or load encodings before export."
        )
    inputs = as_tuple(example_input) if example_input is not None else sim.example_input
    model_proto, encodings = build_qdq_onnx(sim, inputs, opset, unsigned_weights, encodings_version)
    if rewrite is not None:
        rewrite(model_proto)
        onnx.checker.check_model(model_proto)
    files = {kind: out_dir / f"{prefix}.{kind}" for kind in ("onnx", "encodings", "pth")}
    with writing(f"the export files {prefix}.* in {out_dir}"), staged_outputs() as staging:
        temporary = {kind: staging.file(dest, option="path") for kind, dest in files.items()}
        onnx.save(model_proto, str(temporary["onnx"]))
        # the file is already staged with the others: serialise it (checked) without staging it again
        temporary["encodings"].write_text(encodings_text(encodings, str(files["encodings"])))
        torch.save(float_state_dict(sim), temporary["pth"])
    return files


def float_state_dict(sim: QuantSim) -> dict[str, torch.Tensor]:
    """Float weights of the simulated model under the prepared model's names (``conv1.weight``)."""
    state = {}
    for name, tensor in sim.model.state_dict().items():
        if "_quantizers." in name or name.startswith("input_quantizers."):
            continue
        state[name.replace(".module.", ".").removeprefix("module.")] = tensor.detach().cpu().clone()
    return state


def build_qdq_onnx(
    sim: QuantSim,
    inputs: tuple[Any, ...],
    opset: int | None = None,
    unsigned_weights: bool = False,
    encodings_version: EncodingsVersion | None = None,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The QDQ ONNX model and the encodings dict of a calibrated sim (see module docstring)."""
    model = copy.deepcopy(sim.model).eval().cpu()
    entries = _mark_quantizers(model)
    wide = any(needs_opset_21(m.quantizer) for m in entries)
    target_opset = check_opset(opset, wide)
    export_opset = min(target_opset, _TORCHSCRIPT_MAX_OPSET)
    buffer = io.BytesIO()
    cpu_inputs = tuple(x.cpu() if isinstance(x, torch.Tensor) else x for x in inputs)
    input_names = [f"input{i}" if len(cpu_inputs) > 1 else "input" for i in range(len(cpu_inputs))]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # torch's stub types f as a path, but the TorchScript exporter also writes to a file object
        torch.onnx.export(
            model,
            cpu_inputs,
            buffer,  # type: ignore[arg-type]
            dynamo=False,
            opset_version=export_opset,
            input_names=input_names,
            output_names=["output"],
            custom_opsets={"leantorch": 1},
            do_constant_folding=True,
            dynamic_axes={n: {0: "batch"} for n in input_names} | {"output": {0: "batch"}},
        )
    proto = onnx.load_from_string(buffer.getvalue())
    found = _replace_markers(proto, entries, unsigned_weights)
    quantize_biases(proto)
    _drop_unused_initializers(proto)
    found = _rename_keys(found, _strip_wrapper_names(proto))
    encodings = encodings_dict(
        found.activations,
        found.params,
        found.names,
        extra={"excluded_layers": [], "quantizer_args": _quantizer_args(entries)},
        version=encodings_version,
    )
    # Shapes recorded during tracing describe the example batch; let runtimes infer them instead.
    del proto.graph.value_info[:]
    opsets = [o for o in proto.opset_import if o.domain != "leantorch"]
    del proto.opset_import[:]
    proto.opset_import.extend(opsets)
    if target_opset > export_opset:
        for o in proto.opset_import:
            if o.domain in ("", "ai.onnx"):
                # Opset 21 only adds types (int16 QDQ) to the ops exported at 20: a pure version bump.
                o.version = max(o.version, target_opset)
    onnx.checker.check_model(proto)
    return proto, encodings


def _mark_quantizers(model: torch.nn.Module) -> list[Marked]:
    """Number the active quantizers for export; snap weights onto their grids. Returns them by export index."""
    entries: list[Marked] = []
    param_of = {}
    for layer, wrapper in model.named_modules():
        if isinstance(wrapper, QuantWrapper) and wrapper.repeat_of is None:
            active = [pname for pname, q in wrapper.param_quantizers.items() if q.is_active]
            # A tied weight (GPT-2's lm_head = wte) is snapped onto each quantizer's grid in its own copy.
            untie_parameters(cast(fx.GraphModule, model), wrapper.module, names=active)
            for pname, q in wrapper.param_quantizers.items():
                if q.is_active:
                    param = getattr(wrapper.module, pname)
                    with torch.no_grad():
                        param.copy_(q(param))
                    param_of[id(q)] = f"{layer}.{pname}"
    # The copy has the module names of sim.model, so `name` is the quantizer's name in the sim.
    for name, q in model.named_modules():
        if isinstance(q, Quantizer) and q.is_active:
            q.export_index = len(entries)
            entries.append(Marked(q, param_of.get(id(q)), name))
    return entries


def _replace_markers(proto: onnx.ModelProto, entries: list[Marked], unsigned_weights: bool = False) -> FileEncodings:
    graph = proto.graph
    initializers = {init.name: init for init in graph.initializer}
    found = FileEncodings({}, {}, {"activation_encodings": {}, "param_encodings": {}})
    new_nodes: list[onnx.NodeProto] = []
    # A module called at several places quantizes its weight at each call: the first call's Q/DQ serves all.
    emitted: dict[tuple[str, int], str] = {}
    reused: dict[str, str] = {}
    for node in graph.node:
        if node.domain != "leantorch":
            new_nodes.append(node)
            continue
        index = next(a.i for a in node.attribute if a.name == "index")
        quantizer, param_name, qname = entries[index]
        enc = quantizer.encoding
        assert enc is not None
        x, y = node.input[0], node.output[0]
        if param_name is not None and param_name in initializers and (param_name, index) in emitted:
            x = param_name  # renamed at the first call (below)
        if (x, index) in emitted:
            reused[y] = emitted[(x, index)]
            continue
        if param_name is not None and x in initializers:
            if x != param_name and param_name not in initializers:
                initializers[x].name = param_name
                initializers[param_name] = initializers[x]
                _rename_uses(graph, x, param_name)
                x = param_name
            _record(found, "param_encodings", found.params, x, enc, qname)
        else:
            _record(found, "activation_encodings", found.activations, x, enc, qname)
        emitted[(x, index)] = y
        is_param = param_name is not None
        nodes, inits = qdq_nodes(
            enc,
            x,
            y,
            stem=onnx_safe_name(x) + f"_q{index}",
            on_grid=is_param,
            unsigned=unsigned_weights and is_param,
            shape=tuple(initializers[x].dims) if x in initializers else None,
        )
        new_nodes.extend(nodes)
        graph.initializer.extend(inits)
    del graph.node[:]
    graph.node.extend(new_nodes)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in reused:
                node.input[i] = reused[name]
    return found


def _record(
    found: FileEncodings, section: str, encodings: dict[str, Encoding], key: str, enc: Encoding, qname: str
) -> None:
    """File ``enc`` under ONNX name ``key`` and remember that quantizer ``qname`` produced it.

    The file holds one entry per name: a second quantizer of the same tensor with another grid is left out
    of the name map (loading the file then reports it as not covered instead of giving it a wrong grid)."""
    kept = encodings.setdefault(key, enc)
    if not same_encoding(kept, enc):
        warnings.warn(
            f"tensor {key!r} is quantized by several quantizers with different encodings; the "
            f"encodings file keeps the first, {qname} is left out of it",
            stacklevel=4,
        )
        return
    names = found.names[section].setdefault(key, [])
    if qname not in names:
        names.append(qname)


def _rename_keys(found: FileEncodings, renames: dict[str, str]) -> FileEncodings:
    """Apply initializer renames to the file's keys, so that every key names a tensor of the ONNX model."""

    def rename(mapping: dict[str, _V]) -> dict[str, _V]:
        return {renames.get(k, k): v for k, v in mapping.items()}

    return FileEncodings(
        rename(found.activations),
        rename(found.params),
        {section: rename(names) for section, names in found.names.items()},
    )


def _quantizer_args(entries: list[Marked]) -> dict[str, Any]:
    params = [m.quantizer for m in entries if m.param_name is not None]
    acts = [m.quantizer for m in entries if m.param_name is None]
    return {
        "activation_bitwidth": acts[0].bitwidth if acts else 32,
        "param_bitwidth": params[0].bitwidth if params else 32,
        "dtype": "int",
        "per_channel_quantization": any(q.axis is not None for q in params),
        "quant_scheme": acts[0].scheme.value if acts else "",
        "is_symmetric": bool(params and params[0].symmetric),
    }


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _strip_wrapper_names(proto: onnx.ModelProto) -> dict[str, str]:
    """``layer.module.bias`` → ``layer.bias``: initializer names as in the user's model. Returns the renames."""
    renames = {}
    taken = {init.name for init in proto.graph.initializer}
    for init in proto.graph.initializer:
        new = init.name.replace(".module.", ".")
        if new != init.name and new not in taken:
            renames[init.name] = new
            taken.add(new)
            init.name = new
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    return renames


def _drop_unused_initializers(proto: onnx.ModelProto) -> None:
    used = {name for node in proto.graph.node for name in node.input} | {o.name for o in proto.graph.output}
    keep = [init for init in proto.graph.initializer if init.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
