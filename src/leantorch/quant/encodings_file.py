"""AIMET encodings files (formats 0.6.1, 1.0.0 and 2.0.0): read, validate, match to quantizers, write.

Every file is read, checked and matched in the 0.6.1 layout below; files of versions 1.0.0 and 2.0.0 (lists
of entries carrying their name; 2.0.0 with ONNX QuantizeLinear's fields) are converted to it on reading and
from it on writing (:mod:`.encodings_formats`, which defines them field by field). Writing defaults to
0.6.1 (:data:`ENCODINGS_VERSION`); ``version=`` / ``encodings_version=`` picks another.

Layout (0.6.1)::

    {"version": "0.6.1",
     "activation_encodings": {name: [entry, ...]},    # one entry per tensor, or one per channel
     "param_encodings":      {name: [entry, ...]},
     "quantizer_names":      {section: {name: [quantizer, ...]}},   # optional, see below
     ...}                                                           # other keys (excluded_layers, …) ignored
    entry = {"bitwidth": 8, "dtype": "int", "is_symmetric": "True",
             "min": -1.0, "max": 0.9921875, "offset": -128, "scale": 0.0078125}

Names. :meth:`QuantSim.save_encodings` keys activations by quantizer name (``"fc.output_quantizers.0"``)
and parameters by parameter name (``"fc.weight"``). :meth:`QuantSim.export` keys them by ONNX tensor and
initializer names, as AIMET does, and adds ``quantizer_names``: for each entry, the quantizers it came
from, so that a new ``QuantSim`` of the same model can load the exported file. AIMET tools ignore the
extra key.

Rules, all checked before anything is applied (:class:`~leantorch.errors.EncodingsFileError` names the
entry and channel, the bad value and the fix):

* ``version`` is one of :data:`READABLE_VERSIONS`; the file holds ``activation_encodings`` and/or
  ``param_encodings``, each a JSON object of non-empty lists of entry objects (1.0.0: each a list of
  named entries; 2.0.0: one list ``encodings``). 1.0.0/2.0.0 entries are checked field by field under their
  own names first (see :mod:`.encodings_formats`), then as converted 0.6.1 entries.
* ``dtype``, if given, is ``"int"`` (AIMET float entries, ``"dtype": "float"``, are not supported yet);
  every entry has ``bitwidth``, ``is_symmetric``, ``scale``, ``offset``, ``min`` and ``max``.
* ``bitwidth`` is an integer from 2 to 16; ``is_symmetric`` is true/false (or ``"True"``/``"False"``).
* ``scale`` is finite and at least :data:`~leantorch.quant.encoding.MIN_SCALE` (and fits float32).
* ``offset`` is an integer on the grid of :mod:`leantorch.quant.encoding`: asymmetric in
  ``[-(2**bw - 1), 0]``; symmetric ``-2**(bw-1)`` (signed) or ``0`` (unsigned).
* ``min ≤ max``, both finite, and ``min = offset * scale``, ``max = min + (2**bw - 1) * scale`` up to
  rounding (a thousandth of a step plus float32 rounding of the bounds).
* The channels of one tensor share bitwidth and symmetry (and signedness); their number matches the
  tensor's channels. A single entry for a quantizer that quantizes per channel (more than one channel) is
  refused rather than silently turning it per-tensor.
* Every name in the file names a quantizer of the model; one quantizer gets one encoding. Loading with
  ``strict=True`` also requires every active quantizer to be covered.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import EncodingsFileError, UnsupportedBitwidthError
from ..options import check_choice, short_repr
from ..paths import check_file, writing
from ..staging import staged_outputs
from .encoding import FLOAT_BITWIDTH, MIN_SCALE, Encoding, check_bitwidth
from .encodings_formats import POOLED, VERSIONS, EncodingsVersion, from_legacy, to_legacy
from .quantizer import Quantizer

__all__ = [
    "ENCODINGS_VERSION",
    "EncodingsVersion",
    "READABLE_VERSIONS",
    "SECTIONS",
    "NAMES_KEY",
    "REQUIRED_FIELDS",
    "Target",
    "check_version",
    "check_encodings",
    "read_encodings",
    "parse_encoding",
    "match_encodings",
    "uncovered",
    "check_coverage",
    "same_encoding",
    "encodings_dict",
    "encodings_text",
    "write_encodings",
]

#: Version of the AIMET encodings-file format written by default.
ENCODINGS_VERSION: EncodingsVersion = "0.6.1"
#: Versions this module reads (told apart by the ``version`` key) and writes.
READABLE_VERSIONS = VERSIONS
#: The two sections of a file, in the order they are matched.
SECTIONS = ("activation_encodings", "param_encodings")
#: Top-level key mapping file names back to quantizer names (written by the ONNX export).
NAMES_KEY = "quantizer_names"
#: Fields every entry must have.
REQUIRED_FIELDS = ("bitwidth", "is_symmetric", "scale", "offset", "min", "max")

_FLOAT32_MAX = 3.4028234663852886e38
_SYMMETRY = {True: True, False: False, "True": True, "False": False, "true": True, "false": False}


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


def check_version(version: Any, what: str = "encodings_version") -> str:
    """``version`` if leantorch writes it (one of :data:`READABLE_VERSIONS`), else InvalidOptionError.

    Example:
        >>> check_version("1.0.0")
        '1.0.0'
        >>> check_version("0.6.2")
        Traceback (most recent call last):
        ...
        leantorch.errors.InvalidOptionError: encodings_version='0.6.2': use one of '0.6.1', '1.0.0', '2.0.0'
    """
    checked: str = check_choice(what, version, READABLE_VERSIONS)
    return checked


# ---------------------------------------------------------------------------------------------- reading
def read_encodings(path: str | Path) -> dict[str, Any]:
    """Read and check the structure of an encodings file of any version in :data:`READABLE_VERSIONS`, in the
    0.6.1 layout (see :func:`check_encodings`; entries are checked by :func:`match_encodings`).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "empty.encodings"
        >>> _ = path.write_text('{"version": "0.6.1", "param_encodings": {}}')
        >>> read_encodings(path)["param_encodings"]
        {}
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EncodingsFileError(f"cannot read encodings file {path}: {exc}") from exc
    return check_encodings(data, str(path))


def check_encodings(data: Any, source: str = "the file") -> dict[str, Any]:
    """Check the top level of a parsed file: version, sections, name map. Returns it in the 0.6.1 layout.

    A 0.6.1 file is returned as it is; a 1.0.0 file with its lists turned into ``{name: [entry, ...]}``
    sections; a 2.0.0 file with its list turned into the section ``"encodings"`` (activations and parameters
    alike). The ``version`` key keeps the file's version.

    Example:
        >>> check_encodings({"version": "0.6.1"})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        leantorch.errors.EncodingsFileError: the file holds no encodings: ...
    """
    if not isinstance(data, dict):
        raise EncodingsFileError(
            f"{source} is not an encodings file: expected a JSON object, got {type(data).__name__}"
        )
    version = data.get("version")
    if not isinstance(version, str) or version not in READABLE_VERSIONS:
        raise EncodingsFileError(
            f"{source}: encodings version {version!r} is not supported; leantorch reads {list(READABLE_VERSIONS)}. "
            "Write the file with AIMET's encoding_version set to one of them (or sim.save_encodings)."
        )
    if version != ENCODINGS_VERSION:
        legacy = to_legacy(data, source)
        _check_names_map(legacy.get(NAMES_KEY), source)
        return legacy
    present = [s for s in SECTIONS if s in data]
    if not present:
        raise EncodingsFileError(
            f"{source} holds no encodings: neither {SECTIONS[0]!r} nor {SECTIONS[1]!r} is "
            "present. Write the file with sim.save_encodings or sim.export."
        )
    for section in present:
        if not isinstance(data[section], dict):
            raise EncodingsFileError(
                f"{source}: {section!r} must be a JSON object of name → list of entries, "
                f"got {type(data[section]).__name__}"
            )
    _check_names_map(data.get(NAMES_KEY), source)
    return data


def _check_names_map(names: Any, source: str) -> None:
    if names is None:
        return
    ok = isinstance(names, dict) and all(
        s in SECTIONS
        and isinstance(m, dict)
        and all(isinstance(v, list) and v and all(isinstance(n, str) for n in v) for v in m.values())
        for s, m in names.items()
    )
    if not ok:
        raise EncodingsFileError(
            f"{source}: {NAMES_KEY!r} must map a section to {{name: [quantizer names]}}; "
            "remove the key or rewrite the file with sim.export"
        )


# ---------------------------------------------------------------------------------------------- entries
def parse_encoding(entries: Any, name: str) -> Encoding:
    """The :class:`Encoding` of one file entry list, every number checked (rules in the module docstring).

    One entry gives a per-tensor encoding (0-d scale); several give one scale per channel (``axis`` is
    left None for the caller to set).

    Example:
        >>> entry = {"bitwidth": 4, "is_symmetric": "False", "scale": 0.5, "offset": -4, "min": -2.0, "max": 5.5}
        >>> enc = parse_encoding([entry], "x")
        >>> enc.bitwidth, float(enc.scale), int(enc.offset)
        (4, 0.5, -4)
        >>> parse_encoding([dict(entry, scale=0.0)], "x")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        leantorch.errors.EncodingsFileError: x: scale=0.0 is not a valid scale...
    """
    if not isinstance(entries, list) or not entries:
        raise EncodingsFileError(
            f"{name}: expected a non-empty list of entries (one per tensor or one per "
            f"channel), got {short_repr(entries)}"
        )
    many = len(entries) > 1
    parsed = [_parse_entry(e, f"{name} channel {i}" if many else name) for i, e in enumerate(entries)]
    first = parsed[0]
    for i, p in enumerate(parsed[1:], start=1):
        # One tensor has one container: same bitwidth, symmetry and signedness on every channel.
        if (p[0], p[1]) != (first[0], first[1]):
            raise EncodingsFileError(
                f"{name} channel {i}: bitwidth {p[0]}, is_symmetric {p[1]} differ from channel 0 "
                f"(bitwidth {first[0]}, is_symmetric {first[1]}); all channels of one tensor share them"
            )
        if first[1] and (p[3] == 0) != (first[3] == 0):
            raise EncodingsFileError(
                f"{name} channel {i}: offset {p[3]} mixes an unsigned and a signed symmetric grid (channel 0 "
                f"has offset {first[3]}); use one of 0 or {-(2 ** (first[0] - 1))} on every channel"
            )
    scale = torch.tensor([p[2] for p in parsed], dtype=torch.float32)
    offset = torch.tensor([p[3] for p in parsed], dtype=torch.int64)
    if not many:
        scale, offset = scale[0], offset[0]
    return Encoding(first[0], first[1], scale, offset, None)


def _parse_entry(entry: Any, label: str) -> tuple[int, bool, float, int]:
    """(bitwidth, symmetric, scale, offset) of one entry, after every check of the module docstring."""
    if not isinstance(entry, dict):
        raise EncodingsFileError(
            f"{label}: expected an entry object {{bitwidth, is_symmetric, scale, offset, "
            f"min, max}}, got {short_repr(entry)}"
        )
    # dtype first: AIMET float entries ({"bitwidth": 16, "dtype": "float"}) have no scale/offset/min/max.
    dtype = entry.get("dtype", "int")
    if dtype == "float":
        raise EncodingsFileError(
            f"{label}: dtype='float' (bitwidth {short_repr(entry.get('bitwidth'))}): float "
            "encodings are not supported yet; only integer ('int') encodings can be loaded — "
            "drop the entry to keep the tensor in full float"
        )
    if dtype != "int":
        raise EncodingsFileError(
            f"{label}: dtype={short_repr(dtype)} is not a known dtype; only integer ('int') "
            "encodings can be loaded — drop the entry to keep the tensor in float"
        )
    missing = [f for f in REQUIRED_FIELDS if f not in entry]
    if missing:
        raise EncodingsFileError(f"{label}: missing field(s) {missing}; every entry needs {list(REQUIRED_FIELDS)}")
    bitwidth = _bitwidth(entry["bitwidth"], label)
    symmetric = _symmetry(entry["is_symmetric"], label)
    scale = _scale(entry["scale"], label)
    offset = _offset(entry["offset"], bitwidth, symmetric, label)
    _check_range(entry["min"], entry["max"], bitwidth, scale, offset, label)
    return bitwidth, symmetric, scale, offset


def _bitwidth(value: Any, label: str) -> int:
    try:
        bitwidth = check_bitwidth(value, f"{label}: bitwidth")
    except UnsupportedBitwidthError as exc:
        raise EncodingsFileError(str(exc)) from exc
    if bitwidth == FLOAT_BITWIDTH:
        raise EncodingsFileError(
            f"{label}: bitwidth=32 means 'not quantized' and has no integer grid; drop the "
            "entry (and disable that quantizer) or give a bitwidth from 2 to 16"
        )
    return bitwidth


def _symmetry(value: Any, label: str) -> bool:
    if isinstance(value, (bool, str)) and value in _SYMMETRY:
        return _SYMMETRY[value]
    raise EncodingsFileError(f'{label}: is_symmetric={value!r} is not a boolean; use true/false or "True"/"False"')


def _number(value: Any, label: str, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EncodingsFileError(f"{label}: {field}={value!r} is not a number; write it as a JSON number")
    try:
        number = float(value)
    except OverflowError:  # a JSON integer beyond float range
        number = math.inf
    if not math.isfinite(number):
        raise EncodingsFileError(
            f"{label}: {field}={value!r} is not finite; recompute the encodings from "
            "finite data (sim.compute_encodings) and write the file again"
        )
    return number


def _scale(value: Any, label: str) -> float:
    scale = _number(value, label, "scale")
    if not MIN_SCALE <= scale <= _FLOAT32_MAX:
        raise EncodingsFileError(
            f"{label}: scale={value!r} is not a valid scale: it must be positive, at least "
            f"{MIN_SCALE} and fit float32; recompute the encodings or correct the entry"
        )
    return scale


def _offset(value: Any, bitwidth: int, symmetric: bool, label: str) -> int:
    number = _number(value, label, "offset")
    if number != round(number):
        raise EncodingsFileError(
            f"{label}: offset={value!r} is not an integer; offsets are integer grid "
            "positions (offset = round(min / scale))"
        )
    offset = int(number)
    if symmetric:
        allowed = (-(2 ** (bitwidth - 1)), 0)
        if offset not in allowed:
            raise EncodingsFileError(
                f"{label}: offset={value!r} is off the symmetric {bitwidth}-bit grid: use {allowed[0]} (signed) "
                "or 0 (unsigned), or set is_symmetric to false for an asymmetric offset"
            )
    elif not -(2**bitwidth - 1) <= offset <= 0:
        raise EncodingsFileError(
            f"{label}: offset={value!r} is off the asymmetric {bitwidth}-bit grid: it must lie in "
            f"[{-(2**bitwidth - 1)}, 0] so that 0.0 is representable (offset = round(min / scale))"
        )
    return offset


def _check_range(lo_value: Any, hi_value: Any, bitwidth: int, scale: float, offset: int, label: str) -> None:
    lo, hi = _number(lo_value, label, "min"), _number(hi_value, label, "max")
    if lo > hi:
        raise EncodingsFileError(f"{label}: min={lo_value!r} > max={hi_value!r}; swap them or recompute the entry")
    steps = 2**bitwidth - 1
    want_lo, want_hi = offset * scale, (offset + steps) * scale
    # Bounds written as float32 (AIMET) are off by float32 rounding of values up to `steps` steps large.
    tolerance = scale * (1e-3 + 1e-6 * (abs(offset) + steps))
    for field, got, want, value in (("min", lo, want_lo, lo_value), ("max", hi, want_hi, hi_value)):
        if abs(got - want) > tolerance:
            raise EncodingsFileError(
                f"{label}: {field}={value!r} disagrees with scale={scale!r} and offset={offset} (which give "
                f"{field}={want!r}); min must be offset * scale and max = min + {steps} * scale — fix the "
                "numbers or recompute the entry"
            )


# ---------------------------------------------------------------------------------------------- matching
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
            enc = parse_encoding(entries, label)
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
                    fitted = _fit(enc, target, label)
                    _add(plan, target, _with_symmetry_of(fitted, target) if section == POOLED else fitted, label)
    if unknown:
        raise EncodingsFileError(
            f"{source}: {len(unknown)} encoding(s) name no quantizer of this model, e.g. {unknown[:3]}; was the "
            "file written for another model or another config? (Files keyed by ONNX names load only when they "
            f"carry the {NAMES_KEY!r} map that sim.export writes.)"
        )
    return [(t, enc) for t, enc, _ in plan.values()]


def _fit(enc: Encoding, target: Target, label: str) -> Encoding:
    """Give ``enc`` the granularity of ``target``: per-channel entries need a channel axis of that size."""
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


def same_encoding(a: Encoding, b: Encoding) -> bool:
    """True when two encodings define the same grid (bitwidth, symmetry, scales, offsets, axis).

    Example:
        >>> from leantorch.quant.encoding import compute_encoding
        >>> e = compute_encoding(torch.tensor(-1.0), torch.tensor(1.0), 8, symmetric=False)
        >>> same_encoding(e, e.to("cpu"))
        True
    """
    return (
        (a.bitwidth, a.symmetric, a.axis) == (b.bitwidth, b.symmetric, b.axis)
        and a.scale.shape == b.scale.shape
        and torch.equal(a.scale.cpu(), b.scale.cpu())
        and torch.equal(a.offset.cpu(), b.offset.cpu())
    )


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


# ---------------------------------------------------------------------------------------------- writing
def encodings_dict(
    activations: dict[str, Encoding],
    params: dict[str, Encoding],
    quantizer_names: dict[str, dict[str, list[str]]] | None = None,
    extra: dict[str, Any] | None = None,
    version: EncodingsVersion = ENCODINGS_VERSION,
) -> dict[str, Any]:
    """The JSON object of an encodings file (AIMET ``version``) for encodings keyed by their file names.

    For 1.0.0 and 2.0.0 the encodings are checked first (an invalid one raises EncodingsFileError naming
    it); ``quantizer_names`` and ``extra`` are top-level keys in every version.

    Example:
        >>> from leantorch.quant.encoding import compute_encoding
        >>> e = compute_encoding(torch.tensor(-1.0), torch.tensor(1.0), 8, symmetric=True)
        >>> data = encodings_dict({}, {"fc.weight": e})
        >>> data["version"], data["param_encodings"]["fc.weight"][0]["offset"]
        ('0.6.1', -128)
        >>> encodings_dict({}, {"fc.weight": e}, version="1.0.0")["param_encodings"][0]["offset"]
        [-128]
        >>> encodings_dict({}, {"fc.weight": e}, version="2.0.0")["encodings"][0]["output_dtype"]
        'int8'
    """
    check_version(version, "version")
    data: dict[str, Any] = {
        "version": ENCODINGS_VERSION,
        "activation_encodings": {n: e.to_aimet() for n, e in activations.items()},
        "param_encodings": {n: e.to_aimet() for n, e in params.items()},
    }
    if quantizer_names is not None:
        data[NAMES_KEY] = quantizer_names
    data |= extra or {}
    if version == ENCODINGS_VERSION:
        return data
    for section in SECTIONS:  # the 0.6.1 checks name the bad encoding before its fields are moved
        for key, entries in data[section].items():
            parse_encoding(entries, f"{section}[{key!r}]")
    axes = {(s, n): e.axis for s, encs in zip(SECTIONS, (activations, params)) for n, e in encs.items()}
    return from_legacy(data, version, axes)


def write_encodings(path: str | Path, data: dict[str, Any], what: str = "path") -> None:
    """Check ``data`` with the reading rules, then write it as strict JSON (so every file written loads).

    The destination is checked first (:func:`leantorch.paths.check_file`) and the file is staged
    (:mod:`leantorch.staging`): a failed write leaves any existing file untouched.

    Raises:
        OutputPathError: ``path`` is a directory, or its directory cannot be created or written.
        EncodingsFileError: ``data`` breaks a rule of this module (including a NaN or infinite number).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "model.encodings"
        >>> write_encodings(path, {"version": "0.6.1", "activation_encodings": {}})
        >>> read_encodings(path)["activation_encodings"]
        {}
    """
    out = check_file(path, what, example="model.encodings")
    text = encodings_text(data, str(path))
    with writing(out), staged_outputs() as staging:
        staging.file(out, option=what).write_text(text)


def encodings_text(data: dict[str, Any], source: str = "the encodings") -> str:
    """``data`` (a file of any version in :data:`READABLE_VERSIONS`) checked with the reading rules and
    serialised as strict JSON (what :func:`write_encodings` writes; for a caller that stages its own files).

    Example:
        >>> encodings_text({"version": "0.6.1", "param_encodings": {}}).splitlines()[1]
        '  "version": "0.6.1",'
    """
    checked = check_encodings(data, source)
    for section in (*SECTIONS, POOLED) if checked.get("version") == "2.0.0" else SECTIONS:
        for key, entries in (checked.get(section) or {}).items():
            parse_encoding(entries, f"{section}[{key!r}]")
    try:
        return json.dumps(data, indent=2, allow_nan=False)
    except ValueError as exc:  # a NaN/Inf outside the entries (e.g. in extra keys)
        raise EncodingsFileError(f"{source}: {exc}; encodings files are strict JSON") from exc
