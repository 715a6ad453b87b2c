"""Matching the entries of an AIMET encodings file to the quantizers of a QuantSim (nothing is applied).

Files written by ``save_encodings`` name activation quantizers and parameters; files written by ``export``
name ONNX tensors and carry ``quantizer_names`` (see :mod:`.encodings_file`). Each entry is parsed and checked
(:func:`~leantorch.quant.encoding.parse_encoding`), given its quantizer's granularity, and paired with it; one
quantizer gets one encoding.

Float-format entries (:mod:`.encodings_floats`) are adopted by any quantizer, which then rounds to that format
(as a per-channel quantizer adopts a blockwise entry, the file's kind wins): float16/bfloat16 casts have no
channels and fit every quantizer; fp8 scales are fitted per tensor or per channel as integer ones are (a
blockwise quantizer takes them per channel). An integer entry likewise turns a float-format quantizer back to an
integer grid.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .. import ops
from ..errors import EncodingsFileError
from .blocks import block_axis_for, blocks_fit
from .config import PER_CHANNEL_AXIS
from .encoding import Encoding, same_encoding
from .encodings_blocks import Blocks, check_lpbq, parse_entries
from .encodings_file import NAMES_KEY, SECTIONS, check_encodings
from .encodings_formats import POOLED
from .float_formats import is_scaled
from .quantizer import Quantizer
from .wrapper import QuantWrapper

__all__ = ["Target", "encoding_targets", "match_encodings", "uncovered", "check_coverage"]


@dataclass(frozen=True)
class Target:
    """A quantizer that a file entry may set.

    Args:
        name: qualified quantizer name in ``sim.model`` (``"fc.param_quantizers.weight"``).
        quantizer: the quantizer.
        key: its name in files written by ``save_encodings`` (the parameter name for weights).
        is_param: True for parameter quantizers.
        shape: the parameter's shape (checks channel counts), None for activations.
        channel_axis: axis of per-channel entries (None: per-channel entries are refused).
    """

    name: str
    quantizer: Quantizer
    key: str
    is_param: bool = False
    shape: tuple[int, ...] | None = None
    channel_axis: int | None = None


def match_encodings(
    data: dict[str, Any], targets: list[Target], source: str = "the file"
) -> list[tuple[Target, Encoding]]:
    """Pair every entry of a checked file with its quantizer(s); nothing is applied.

    ``data`` is what :func:`read_encodings` / :func:`check_encodings` return (a 0.6.1 file dict works as it
    is; a 1.0.0 or 2.0.0 one is checked and converted first). Entries of a 2.0.0 file, which has no symmetry
    flag, are symmetric when their quantizer is and their grid is symmetric.

    Raises :class:`EncodingsFileError` for a bad number, an unknown name, a wrong channel count or two
    different encodings for one quantizer.

    Example:
        >>> entry = {"bitwidth": 8, "is_symmetric": "False", "scale": 0.5, "offset": -4, "min": -2.0, "max": 125.5}
        >>> target = Target("relu.output_quantizers.0", Quantizer(), "relu.output_quantizers.0")
        >>> data = {"version": "0.6.1", "activation_encodings": {"relu.output_quantizers.0": [entry]}}
        >>> [(t.name, float(enc.scale)) for t, enc in match_encodings(data, [target])]
        [('relu.output_quantizers.0', 0.5)]
    """
    if any(isinstance(data.get(s), list) for s in (*SECTIONS, POOLED)):
        data = check_encodings(data, source)  # a 1.0.0/2.0.0 file as read from JSON
    by_name = {t.name: t for t in targets}
    by_key = {(t.is_param, t.key): t for t in targets}
    names = data.get(NAMES_KEY) or {}
    plan: dict[int, tuple[Target, Encoding, str]] = {}
    unknown: list[str] = []
    pooled = data.get("version") == "2.0.0"
    for section in (*SECTIONS, POOLED) if pooled else SECTIONS:
        for key, entries in (data.get(section) or {}).items():
            label = f"{section}[{key!r}]"
            enc, blocks = parse_entries(entries, label)
            if section == POOLED:  # one list: the name is a parameter's or an activation quantizer's
                mapped = names.get(SECTIONS[1], {}).get(key, names.get(SECTIONS[0], {}).get(key))
                default = by_key.get((True, key)) or by_key.get((False, key))
            else:
                mapped = names.get(section, {}).get(key)
                default = by_key.get((section == "param_encodings", key))
            if mapped is None:  # saved files name the quantizer (activations) or the parameter
                found = [(key, default)]
            else:  # exported files carry the names of the quantizers behind each ONNX name
                found = [(f"{key} → {n}", by_name.get(n)) for n in mapped]
            for what, target in found:
                if target is None:
                    unknown.append(what)
                else:
                    fitted = _fit(enc, target, label) if blocks is None else _fit_blocks(enc, blocks, target, label)
                    # LPBQ grids are symmetric by definition; other 2.0.0 entries take their quantizer's flag
                    pooled = section == POOLED and fitted.decompressed_bw is None and fitted.float_format is None
                    _add(plan, target, _with_symmetry_of(fitted, target) if pooled else fitted, label)
    if unknown:
        raise EncodingsFileError(
            f"{source}: {len(unknown)} encoding(s) name no quantizer of this model, e.g. {unknown[:3]}; was the "
            "file written for another model or another config? (Files keyed by ONNX names load only when they "
            f"carry the {NAMES_KEY!r} map that sim.export writes.)"
        )
    return [(t, enc) for t, enc, _ in plan.values()]


def _fit(enc: Encoding, target: Target, label: str) -> Encoding:
    """Give ``enc`` the granularity of ``target``: per-channel entries need a channel axis of that size."""
    q = target.quantizer
    if enc.float_format is not None and not is_scaled(enc.float_format):
        return enc  # a plain cast (float16, bfloat16): no channels, fits any quantizer
    if (
        q.is_blockwise and enc.float_format is None
    ):  # a per-channel or per-tensor entry would silently turn a blockwise quantizer coarser
        kind = "per-channel encodings" if enc.scale.dim() else "one encoding"
        raise EncodingsFileError(
            f"{label}: the file has {kind} for {target.key} but this sim quantizes it blockwise (blocks of "
            f"{q.block_size} input channels along axis {q.block_axis}"
            f"{'' if q.decompressed_bw is None else f', LPBQ decompressed_bw={q.decompressed_bw}'}): write the "
            "file from a blockwise sim (encodings_version='1.0.0' or '2.0.0'), or build the sim without "
            "param_block_size"
        )
    channels = enc.scale.numel() if enc.scale.dim() else None
    axis = target.quantizer.axis if target.quantizer.axis is not None else target.channel_axis
    if channels is None:
        per_channel = target.quantizer.axis
        if per_channel is None:
            return enc
        count = target.shape[per_channel] if target.shape and per_channel < len(target.shape) else None
        # One entry on a one-channel per-channel weight stays per-channel, as it was saved.
        if count == 1:
            return replace(enc, scale=enc.scale.reshape(1), offset=enc.offset.reshape(1), axis=per_channel)
        # Anything else would silently turn a per-channel quantizer per-tensor.
        along = f"{count} channels along axis {per_channel}" if count is not None else f"along axis {per_channel}"
        raise EncodingsFileError(
            f"{label}: the file has one encoding for {target.key} but this sim quantizes it per channel ({along}): "
            "make the file with per_channel=True, or build the sim per-tensor"
        )
    if axis is None or (target.shape is not None and axis >= len(target.shape)):
        raise EncodingsFileError(
            f"{label}: {channels} per-channel entries, but {target.name} quantizes per tensor "
            "and has no channel axis; give one entry"
        )
    if target.shape is not None and target.shape[axis] != channels:
        raise EncodingsFileError(
            f"{label}: the file has {channels} per-channel encodings but {target.key} has "
            f"{target.shape[axis]} channels along axis {axis}; was it written for another model?"
        )
    return replace(enc, axis=axis)


def _fit_blocks(enc: Encoding, blocks: Blocks, target: Target, label: str) -> Encoding:
    """Give a blockwise entry (flat scales, ``blocks`` from :func:`parse_entries`) the shape ``(C, n_blocks)`` of
    the weight of ``target``, or refuse it naming both settings and the fix.
    """
    quantizer, shape, key, setting = target.quantizer, target.shape, target.key, blocks.describe()
    if shape is None:
        raise EncodingsFileError(
            f"{label}: {setting} is a weight encoding, but {key} is an activation quantizer; give it one entry"
        )
    axis = quantizer.axis if quantizer.axis is not None else target.channel_axis
    if axis is None or axis >= len(shape):
        raise EncodingsFileError(f"{label}: {setting}, but {key} has no output-channel axis to block")
    if quantizer.is_blockwise:
        block_axis = blocks.block_axis if blocks.block_axis is not None else quantizer.block_axis
        ours = Blocks(quantizer.block_size or 0, quantizer.block_axis, None, quantizer.decompressed_bw)
        if replace(blocks, block_axis=block_axis, num_blocks=None) != ours:
            lpbq = "" if blocks.decompressed_bw is None else f" and decompressed_bw={blocks.decompressed_bw}"
            lpbq = lpbq or (" and decompressed_bw=None" if ours.decompressed_bw is not None else "")
            raise EncodingsFileError(
                f"{label}: the file has {setting} for {key}, but this sim quantizes it with {ours.describe()}; "
                f"build the sim with param_block_size={blocks.block_size}{lpbq} (as the file was written), or "
                "write the file from a sim like this one"
            )
    else:
        block_axis = blocks.block_axis if blocks.block_axis is not None else block_axis_for(axis)
    assert block_axis is not None  # a blockwise quantizer has its block axis
    if block_axis == axis or block_axis >= len(shape):
        raise EncodingsFileError(
            f"{label}: block axis {block_axis} of {key} (shape {list(shape)}) is not an input-channel axis "
            f"(the output channels are on axis {axis}); give the weight's input-channel axis"
        )
    if not blocks_fit(shape, block_axis, blocks.block_size):
        raise EncodingsFileError(
            f"{label}: {key} has {shape[block_axis]} input channels along axis {block_axis}, which do not split "
            f"into blocks of {blocks.block_size}; was the file written for another model?"
        )
    channels, count = shape[axis], shape[block_axis] // blocks.block_size
    if enc.scale.numel() != channels * count or blocks.num_blocks not in (None, count):
        given = f" ({blocks.num_blocks} per channel)" if blocks.num_blocks is not None else ""
        raise EncodingsFileError(
            f"{label}: the file has {enc.scale.numel()} block encodings{given} but {key} has {channels} channels "
            f"along axis {axis} × {count} blocks of {blocks.block_size}; was it written for another model?"
        )
    scale, offset = enc.scale.reshape(channels, count), enc.offset.reshape(channels, count)
    if blocks.decompressed_bw is not None:
        check_lpbq(scale, enc.bitwidth, blocks.decompressed_bw, label)
    return Encoding(
        enc.bitwidth, enc.symmetric, scale, offset, axis, blocks.block_size, block_axis, blocks.decompressed_bw
    )


def _with_symmetry_of(enc: Encoding, target: Target) -> Encoding:
    """A 2.0.0 entry (no symmetry flag) is symmetric when its quantizer is and its grid is a symmetric one."""
    grid = bool((enc.offset == -(2 ** (enc.bitwidth - 1))).all()) or bool((enc.offset == 0).all())
    symmetric = bool(target.quantizer.symmetric) and grid
    return enc if enc.symmetric == symmetric else replace(enc, symmetric=symmetric)


def _add(plan: dict[int, tuple[Target, Encoding, str]], target: Target, enc: Encoding, label: str) -> None:
    """One encoding per quantizer: a repeat (a quantizer called at two places) must be the same grid."""
    seen = plan.get(id(target.quantizer))
    if seen is not None and not same_encoding(seen[1], enc):
        raise EncodingsFileError(f"{target.name} gets two different encodings, from {seen[2]} and {label}; keep one")
    plan.setdefault(id(target.quantizer), (target, enc, label))


def uncovered(targets: list[Target], plan: list[tuple[Target, Encoding]]) -> list[str]:
    """Names of the active quantizers that ``plan`` leaves alone.

    Example:
        >>> uncovered([Target("fc.output_quantizers.0", Quantizer(), "fc.output_quantizers.0")], [])
        ['fc.output_quantizers.0']
    """
    covered = {id(t.quantizer) for t, _ in plan}
    return [t.name for t in targets if t.quantizer.is_active and id(t.quantizer) not in covered]


def check_coverage(
    targets: list[Target], plan: list[tuple[Target, Encoding]], strict: bool, source: str = "the file"
) -> list[str]:
    """The active quantizers ``plan`` leaves alone; with ``strict`` there must be none.

    Example:
        >>> check_coverage([Target("fc.output_quantizers.0", Quantizer(), "fc.output_quantizers.0")], [], strict=False)
        ['fc.output_quantizers.0']
    """
    missing = uncovered(targets, plan)
    if missing and strict:
        active = sum(t.quantizer.is_active for t in targets)
        raise EncodingsFileError(
            f"{source} covers {active - len(missing)} of the {active} active quantizers; no encoding for "
            f"{len(missing)}, e.g. {missing[:5]}. Load it with strict=False to keep the current encodings of "
            "the others, or write the file from a sim with the same config."
        )
    return missing


def encoding_targets(layers: dict[str, QuantWrapper], quantizers: dict[str, Quantizer]) -> list[Target]:
    """Every quantizer of a sim (``sim.layers()``, ``sim.quantizers()``) with the names, shapes and channel axes
    that encodings files refer to: parameters by parameter name, activations by quantizer name."""
    params: dict[int, tuple[str, tuple[int, ...], int]] = {}
    for layer, wrapper in layers.items():
        if wrapper.repeat_of is not None:
            continue  # its weight quantizers are its first call's
        for pname, q in wrapper.param_quantizers.items():
            # A weight's channels lie on its op's output-channel axis; a bias has only axis 0.
            weight = pname in ops.weight_names(wrapper.module)
            axis = PER_CHANNEL_AXIS.get(wrapper.op_type, 0) if weight else 0
            params[id(q)] = (f"{layer}.{pname}", tuple(getattr(wrapper.module, pname).shape), axis)
    targets = []
    for name, q in quantizers.items():
        if id(q) in params:
            key, shape, axis = params[id(q)]
            targets.append(Target(name, q, key, is_param=True, shape=shape, channel_axis=axis))
        else:
            targets.append(Target(name, q, name, channel_axis=q.axis))
    return targets
