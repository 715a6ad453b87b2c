"""AIMET encodings files (formats 0.6.1, 1.0.0 and 2.0.0): read, validate and write (matching entries to
quantizers: :mod:`.encodings_matching`; one entry ↔ :class:`~leantorch.quant.encoding.Encoding`:
:func:`~leantorch.quant.encoding.parse_encoding`).

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
* ``dtype``, if given, is ``"int"`` or ``"float"``. Float entries (float16, bfloat16, fp8; AIMET's
  ``{"bitwidth": 16, "dtype": "float"}`` is float16) follow :mod:`.encodings_floats` and make their quantizer
  that float format; every integer entry has ``bitwidth``, ``is_symmetric``, ``scale``, ``offset``, ``min``
  and ``max``.
* ``bitwidth`` is an integer from 2 to 16; ``is_symmetric`` is true/false (or ``"True"``/``"False"``).
* ``scale`` is finite and at least :data:`~leantorch.quant.encoding.MIN_SCALE` (and fits float32).
* ``offset`` is an integer on the grid of :mod:`leantorch.quant.encoding`: asymmetric in
  ``[-(2**bw - 1), 0]``; symmetric ``-2**(bw-1)`` (signed) or ``0`` (unsigned).
* ``min ≤ max``, both finite, and ``min = offset * scale``, ``max = min + (2**bw - 1) * scale`` up to
  rounding (a thousandth of a step plus float32 rounding of the bounds).
* The channels of one tensor share bitwidth and symmetry (and signedness); their number matches the
  tensor's channels. A single entry for a quantizer that quantizes per channel (more than one channel) is
  refused rather than silently turning it per-tensor.
* Blockwise weights (``PER_BLOCK``/``LPBQ`` in 1.0.0, ``block_size`` in 2.0.0) are one entry per block,
  channel-major, carrying the block keys ``block_size``, ``block_axis``, ``num_blocks`` and (LPBQ)
  ``decompressed_bw`` (:mod:`.encodings_blocks`); they are written in 1.0.0 and 2.0.0 only (0.6.1 has no
  block fields: refused on writing and reading). The channels × blocks match the weight; a blockwise
  quantizer takes only entries of its block size, block axis and LPBQ setting, while a per-channel or
  per-tensor weight quantizer adopts a blockwise entry (as it adopts a per-channel one). LPBQ block scales
  are an integer in ``[1, 2**(decompressed_bw - bw)]`` times a float per channel, as AIMET computes them.
* Every name in the file names a quantizer of the model; one quantizer gets one encoding. Loading with
  ``strict=True`` also requires every active quantizer to be covered.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import EncodingsFileError
from ..options import check_choice
from ..paths import check_file, writing
from ..staging import staged_outputs
from .encoding import REQUIRED_FIELDS, Encoding, parse_encoding, same_encoding
from .encodings_blocks import BLOCK_KEYS, block_keys, parse_entries
from .encodings_formats import POOLED, VERSIONS, EncodingsVersion, from_legacy, to_legacy

__all__ = [
    "ENCODINGS_VERSION",
    "version_for",
    "EncodingsVersion",
    "READABLE_VERSIONS",
    "SECTIONS",
    "NAMES_KEY",
    "REQUIRED_FIELDS",
    "check_version",
    "check_encodings",
    "read_encodings",
    "parse_encoding",
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
_NO_BLOCKS = (
    "a blockwise (PER_BLOCK/LPBQ) encoding cannot be expressed in encodings version 0.6.1, which has no block "
    'fields; write encodings_version="1.0.0" or "2.0.0"'
)


def check_version(version: Any, what: str = "encodings_version") -> str | None:
    """``version`` if leantorch writes it (one of :data:`READABLE_VERSIONS`, or None: the oldest that can hold the
    encodings, :func:`version_for`), else InvalidOptionError.

    Example:
        >>> check_version("1.0.0")
        '1.0.0'
        >>> check_version("0.6.2")
        Traceback (most recent call last):
        ...
        leantorch.errors.InvalidOptionError: encodings_version='0.6.2': use one of '0.6.1', '1.0.0', '2.0.0'
    """
    if version is None:
        return None
    checked: str = check_choice(what, version, READABLE_VERSIONS)
    return checked


def version_for(encodings: Any) -> EncodingsVersion:
    """The version written when none is asked for: 0.6.1 (:data:`ENCODINGS_VERSION`, which holds float formats
    too), or 1.0.0 when an encoding is blockwise (0.6.1 has no block fields).

    Example:
        >>> version_for([])
        '0.6.1'
    """
    return "1.0.0" if any(e.is_blockwise for e in encodings) else ENCODINGS_VERSION


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
    for section in present:  # leantorch's block keys live only in files converted from 1.0.0/2.0.0
        for key, entries in data[section].items():
            if isinstance(entries, list) and any(isinstance(e, dict) and e.keys() & set(BLOCK_KEYS) for e in entries):
                raise EncodingsFileError(f"{section}[{key!r}]: {_NO_BLOCKS}")
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
# ---------------------------------------------------------------------------------------------- writing
def encodings_dict(
    activations: dict[str, Encoding],
    params: dict[str, Encoding],
    quantizer_names: dict[str, dict[str, list[str]]] | None = None,
    extra: dict[str, Any] | None = None,
    version: EncodingsVersion | None = None,
) -> dict[str, Any]:
    """The JSON object of an encodings file (AIMET ``version``; None: :func:`version_for` the encodings) for
    encodings keyed by their file names.

    For 1.0.0 and 2.0.0 the encodings are checked first (an invalid one raises EncodingsFileError naming
    it); ``quantizer_names`` and ``extra`` are top-level keys in every version. Blockwise (and LPBQ)
    encodings need 1.0.0 or 2.0.0 (0.6.1 raises EncodingsFileError naming the fix; LPBQ in 2.0.0 needs
    ``decompressed_bw == 2 * bitwidth``).

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
    chosen: str = check_version(version, "version") or version_for([*activations.values(), *params.values()])
    if chosen == ENCODINGS_VERSION:
        blockwise = [n for n, e in (activations | params).items() if e.is_blockwise]
        if blockwise:
            more = f" (and {len(blockwise) - 1} more)" if len(blockwise) > 1 else ""
            raise EncodingsFileError(f"{blockwise[0]!r}{more}: {_NO_BLOCKS}")
    data: dict[str, Any] = {
        "version": ENCODINGS_VERSION,
        "activation_encodings": {n: _entries(e) for n, e in activations.items()},
        "param_encodings": {n: _entries(e) for n, e in params.items()},
    }
    if quantizer_names is not None:
        data[NAMES_KEY] = quantizer_names
    data |= extra or {}
    if chosen == ENCODINGS_VERSION:
        return data
    for section in SECTIONS:  # the 0.6.1 checks name the bad encoding before its fields are moved
        for key, entries in data[section].items():
            parse_entries(entries, f"{section}[{key!r}]")
    axes = {(s, n): e.axis for s, encs in zip(SECTIONS, (activations, params)) for n, e in encs.items()}
    return from_legacy(data, chosen, axes)


def _entries(enc: Encoding) -> list[dict[str, Any]]:
    # one 0.6.1 entry per tensor, channel or block; a block's carry the block keys (module docstring)
    keys = block_keys(enc)
    return [entry | keys for entry in enc.to_aimet()]


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
            parse_entries(entries, f"{section}[{key!r}]")
    try:
        return json.dumps(data, indent=2, allow_nan=False)
    except ValueError as exc:  # a NaN/Inf outside the entries (e.g. in extra keys)
        raise EncodingsFileError(f"{source}: {exc}; encodings files are strict JSON") from exc
