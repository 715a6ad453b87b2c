"""Float-format encodings (float16, bfloat16, fp8 e4m3 / e5m2) in AIMET encodings files 0.6.1, 1.0.0 and 2.0.0:
round trips through save_encodings and the export's JSON, the items as written, AIMET's own fp16 entries, a float
entry turning an integer quantizer float, and bad entries refused with nothing changed."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
import torch

import leantorch as lt
from leantorch.errors import EncodingsFileError
from leantorch.quant.encoding import same_encoding

from .test_encodings_file import assert_same_state, small_model, snapshot, write

FORMATS = ("float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")
VERSIONS = ("0.6.1", "1.0.0", "2.0.0")
FLOAT_LAYERS = ["3", "5"]  # the second conv and the linear: weights, inputs and outputs in the float format
CONV, FC_OUT, INTERMEDIATE = "3.weight", "5.output_quantizers.0", "2.output_quantizers.0"
V2_NAMES = {"float16": "float16", "bfloat16": "bfloat16", "float8_e4m3fn": "float8e4m3fn", "float8_e5m2": "float8e5m2"}


def make(fmt: str | None) -> lt.QuantSim:
    sim = lt.QuantSim(small_model(), torch.randn(1, 3, 8, 8), per_channel=True)
    if fmt is not None:
        lt.set_float_format(sim, fmt, layers=FLOAT_LAYERS)
    return sim


def calibrate(sim: lt.QuantSim) -> lt.QuantSim:
    gen = torch.Generator().manual_seed(1)
    sim.compute_encodings([torch.randn(4, 3, 8, 8, generator=gen) for _ in range(2)], progress=False)
    return sim


def assert_same(a: lt.QuantSim, b: lt.QuantSim) -> None:
    floats = 0
    for name, q in a.quantizers().items():
        other = b.quantizers()[name]
        assert (q.encoding is None) == (other.encoding is None), name
        if q.encoding is not None:
            assert same_encoding(q.encoding, other.encoding), (name, q.encoding, other.encoding)
            assert q.float_format == other.float_format, name
            floats += q.float_format is not None
    assert floats >= 3  # weights and activations of FLOAT_LAYERS
    x = torch.randn(6, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(a.model(x), b.model(x))


@pytest.fixture(scope="module", params=FORMATS)
def sims(request) -> tuple[str, lt.QuantSim]:
    return request.param, calibrate(make(request.param))


@pytest.mark.parametrize("version", VERSIONS)
def test_save_then_load_is_identical(tmp_path, sims, version: str) -> None:
    fmt, sim = sims
    path = tmp_path / "sim.encodings"
    sim.save_encodings(path, encodings_version=version)
    fresh = make(fmt)
    assert fresh.load_encodings(path) == []
    assert_same(sim, fresh)
    into_int = make(None)  # an integer sim adopts the float entries
    into_int.load_encodings(path)
    assert_same(sim, into_int)


@pytest.mark.parametrize("version", VERSIONS)
def test_export_then_load_is_identical(tmp_path, sims, version: str) -> None:
    fmt, sim = sims
    files = sim.export(tmp_path, "net", encodings_version=version)
    data = json.loads(files["encodings"].read_text())
    assert data["version"] == version
    fresh = make(fmt)
    assert fresh.load_encodings(files["encodings"]) == []
    assert_same(sim, fresh)


def test_default_version_stays_0_6_1(tmp_path, sims) -> None:
    _, sim = sims
    sim.save_encodings(tmp_path / "a.encodings")
    assert json.loads((tmp_path / "a.encodings").read_text())["version"] == "0.6.1"


def find(data: dict, name: str) -> Any:
    if data["version"] == "0.6.1":
        return {**data["activation_encodings"], **data["param_encodings"]}[name]
    items = data["encodings"] if data["version"] == "2.0.0" else data["activation_encodings"] + data["param_encodings"]
    return next(i for i in items if i["name"] == name)


@pytest.mark.parametrize("version", VERSIONS)
def test_items_as_written(tmp_path, sims, version: str) -> None:
    fmt, sim = sims
    sim.save_encodings(tmp_path / "a.encodings", encodings_version=version)
    data = json.loads((tmp_path / "a.encodings").read_text())
    weight, output = find(data, CONV), find(data, FC_OUT)
    bits = 16 if fmt in ("float16", "bfloat16") else 8
    enc = sim.param_quantizers()[CONV].encoding
    scales = enc.scale.double().tolist()
    assert enc.axis == (None if bits == 16 else 0)
    out_scale = float(sim.quantizers()[FC_OUT].encoding.scale.double())
    head = {"bitwidth": bits, "dtype": "float", "float_format": fmt}
    if version == "0.6.1":
        want_w = [head] if bits == 16 else [head | {"scale": s, "offset": 0} for s in scales]
        want_o = [head] if bits == 16 else [head | {"scale": out_scale, "offset": 0}]
    elif version == "1.0.0":
        item = {"enc_type": "PER_TENSOR", "dtype": "FLOAT", "bw": bits, "float_format": fmt}
        want_w = {"name": CONV, **item} | ({} if bits == 16 else {"enc_type": "PER_CHANNEL", "scale": scales})
        want_o = {"name": FC_OUT, **item} | ({} if bits == 16 else {"scale": [out_scale]})
    else:
        want_w = {"name": CONV, "output_dtype": V2_NAMES[fmt]} | ({} if bits == 16 else {"y_scale": scales, "axis": 0})
        want_o = {"name": FC_OUT, "output_dtype": V2_NAMES[fmt]} | ({} if bits == 16 else {"y_scale": out_scale})
    assert (weight, output) == (want_w, want_o)


@pytest.fixture(scope="module")
def int_sim() -> lt.QuantSim:
    return calibrate(make(None))


def saved(sim: lt.QuantSim, tmp_path, version: str) -> dict:
    sim.save_encodings(tmp_path / "int.encodings", encodings_version=version)
    return json.loads((tmp_path / "int.encodings").read_text())


@pytest.mark.parametrize(
    "version, entry",
    [
        ("0.6.1", [{"bitwidth": 16, "dtype": "float"}]),
        ("1.0.0", {"name": INTERMEDIATE, "dtype": "FLOAT", "bw": 16, "enc_type": "PER_TENSOR", "is_sym": True}),
        ("2.0.0", {"name": INTERMEDIATE, "output_dtype": "float16"}),
    ],
)
def test_aimet_fp16_entry_loads_as_float16(tmp_path, int_sim, version: str, entry: Any) -> None:
    data = saved(int_sim, tmp_path, version)
    put(version, INTERMEDIATE, entry)(data)
    sim = make(None)
    assert sim.load_encodings(write(tmp_path, data)) == []
    q = sim.quantizers()[INTERMEDIATE]
    assert (q.float_format, q.bitwidth, q.axis, float(q.scale)) == ("float16", 16, None, 1.0)
    x = torch.tensor([1.0 + 2**-12, 3.0])
    assert q(x).tolist() == [1.0, 3.0]


def put(version: str, name: str, new: Any) -> Callable[[dict], None]:
    def mutate(data: dict) -> None:
        if version == "0.6.1":
            section = "param_encodings" if name in data["param_encodings"] else "activation_encodings"
            data[section][name] = new
        else:
            items = data["encodings"] if version == "2.0.0" else data["activation_encodings"] + data["param_encodings"]
            next(i for i in items if i["name"] == name).clear()
            next(i for i in items if not i).update(new)

    return mutate


def edit(version: str, name: str, **fields: Any) -> Callable[[dict], None]:
    def mutate(data: dict) -> None:
        target = find(data, name)
        for item in target if isinstance(target, list) else [target]:
            for key, value in fields.items():
                if value is DROP:
                    item.pop(key, None)
                else:
                    item[key] = value

    return mutate


DROP = object()
V0, V1, V2 = VERSIONS
BAD = {  # (version, format of the file, case) → (mutation, message)
    (V0, "float8_e4m3fn", "no format"): (
        edit(V0, CONV, float_format=DROP),
        r"3\.weight'\] channel 0: an 8-bit float entry without 'float_format': add 'float_format': 'float8_e4m3fn'",
    ),
    (V0, "float16", "unknown format"): (
        edit(V0, FC_OUT, float_format="float24"),
        r"float_format='float24' is not a float format; use one of \['bfloat16', 'float16', 'float8_e4m3fn', 'f",
    ),
    (V0, "float16", "bits disagree"): (
        edit(V0, FC_OUT, float_format="float8_e5m2"),
        r"float_format='float8_e5m2' has 8 bits, not bitwidth 16",
    ),
    (V0, "float16", "32 bits"): (edit(V0, FC_OUT, bitwidth=32), r"a float entry with bitwidth 32: float formats"),
    (V0, "float16", "scale on a cast"): (edit(V0, FC_OUT, scale=2.0), r"scale=2\.0: float16 is a plain cast"),
    (V0, "float8_e5m2", "scale zero"): (edit(V0, CONV, scale=0.0), r"channel 0: scale=0\.0 is not a valid scale"),
    (V0, "float8_e5m2", "scale negative"): (edit(V0, FC_OUT, scale=-0.5), r"scale=-0\.5 is not a valid scale"),
    (V0, "float8_e5m2", "scale missing"): (edit(V0, FC_OUT, scale=DROP), r"missing field 'scale'"),
    (V0, "float8_e5m2", "offset"): (edit(V0, FC_OUT, offset=-128), r"offset/zero point -128: float8_e5m2 has none"),
    (V0, "float8_e5m2", "min"): (edit(V0, FC_OUT, min=-1.0), r"min=-1\.0: float8_e5m2 has .* drop min/max"),
    (V0, "float8_e4m3fn", "mixed"): (
        lambda d: d["param_encodings"][CONV][1].update(dtype="int"),
        r"3\.weight'\] channel 1: .* is not a float entry like the others",
    ),
    (V0, "float8_e4m3fn", "formats differ"): (
        lambda d: d["param_encodings"][CONV][1].update(float_format="float8_e5m2"),
        r"channel 1: float format float8_e5m2 differs from channel 0's float8_e4m3fn",
    ),
    (V0, "float8_e4m3fn", "channels"): (
        lambda d: d["param_encodings"][CONV].pop(),
        r"3 per-channel encodings but 3\.weight has 4 channels",
    ),
    (V0, "float16", "block keys"): (
        edit(V0, FC_OUT, block_size=4),
        r"cannot be expressed in encodings version 0\.6\.1",
    ),
    (V1, "float16", "block keys"): (edit(V1, FC_OUT, block_size=4), r"\['block_size'\] belong to blockwise"),
    (V0, "float16", "two cast entries"): (
        lambda d: d["activation_encodings"][FC_OUT].append(d["activation_encodings"][FC_OUT][0]),
        r"float16 is a plain cast: give one entry, not 2",
    ),
    (V1, "float8_e4m3fn", "no format"): (edit(V1, FC_OUT, float_format=DROP), r"8-bit float entry without"),
    (V1, "float16", "unknown format"): (edit(V1, FC_OUT, float_format="fp16"), r"'fp16' is not a float format"),
    (V1, "float8_e4m3fn", "scale inf"): (
        edit(V1, CONV, scale=[1e39] * 4),
        r"channel 0: scale=1e\+39 is not a valid scale",
    ),
    (V1, "float8_e4m3fn", "per tensor, many"): (
        edit(V1, CONV, enc_type="PER_TENSOR"),
        r"enc_type='PER_TENSOR' with 4 scales",
    ),
    (V1, "float8_e4m3fn", "per block"): (edit(V1, CONV, enc_type="PER_BLOCK"), r"FLOAT items are PER_TENSOR or"),
    (V1, "float8_e4m3fn", "is_sym"): (edit(V1, FC_OUT, is_sym="yes"), r"is_sym='yes' is not a boolean"),
    (V1, "float8_e4m3fn", "offsets"): (edit(V1, CONV, offset=[0]), r"offset=\[0\]: give one 0 per scale"),
    (V2, "float8_e4m3fn", "float32"): (
        edit(V2, FC_OUT, output_dtype="float32"),
        r"output_dtype='float32' is not a supported float type; use one of \['float16', 'bfloat16', 'float8e4m3fn'",
    ),
    (V2, "float8_e4m3fn", "no y_scale"): (edit(V2, FC_OUT, y_scale=DROP), r"missing field 'y_scale'"),
    (V2, "float8_e4m3fn", "no axis"): (edit(V2, CONV, axis=DROP), r"per-channel y_scale needs 'axis'"),
    (V2, "float8_e4m3fn", "zero point"): (
        edit(V2, FC_OUT, y_zero_point=3),
        r"offset/zero point 3: float8_e4m3fn has none",
    ),
    (V2, "float8_e5m2", "nan scale"): (edit(V2, CONV, y_scale=[float("nan")] * 4), r"y_scale=nan is not a valid"),
    (V2, "float16", "scale on a cast"): (edit(V2, FC_OUT, y_scale=0.5), r"y_scale=0\.5: float16 is a plain cast"),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[tuple[str, str], dict]:
    out = {}
    for fmt in ("float16", "float8_e4m3fn", "float8_e5m2"):
        sim = calibrate(make(fmt))
        for version in VERSIONS:
            path = tmp_path_factory.mktemp("f") / "a.encodings"
            sim.save_encodings(path, encodings_version=version)
            out[version, fmt] = json.loads(path.read_text())
    return out


@pytest.mark.parametrize("case", list(BAD), ids=[" ".join(k) for k in BAD])
def test_bad_entry_is_refused_and_nothing_changes(tmp_path, files, case) -> None:
    version, fmt, _ = case
    mutate, message = BAD[case]
    data = copy.deepcopy(files[version, fmt])
    mutate(data)
    target = calibrate(make(None))
    before = snapshot(target)
    with pytest.raises(EncodingsFileError, match=message):
        target.load_encodings(write(tmp_path, data))
    assert_same_state(target, before)


@pytest.mark.parametrize("version", VERSIONS)
def test_blockwise_quantizer_adopts_a_per_channel_fp8_entry(tmp_path, sims, version: str) -> None:
    fmt, sim = sims
    sim.save_encodings(tmp_path / "a.encodings", encodings_version=version)
    data = json.loads((tmp_path / "a.encodings").read_text())
    item = find(data, CONV)
    if version == "0.6.1":
        data = {"version": version, "param_encodings": {CONV: item}}
    else:
        data = {"version": version, "encodings" if version == "2.0.0" else "param_encodings": [item]}
    blockwise = lt.QuantSim(small_model(), torch.randn(1, 3, 8, 8), per_channel=True, param_bw=4, param_block_size=3)
    q = blockwise.param_quantizers()[CONV]
    assert q.is_blockwise
    blockwise.load_encodings(write(tmp_path, data), strict=False)
    assert (q.float_format, q.is_blockwise) == (fmt, False)
    assert same_encoding(q.encoding, sim.param_quantizers()[CONV].encoding)
