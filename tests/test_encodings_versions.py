"""AIMET encodings formats 0.6.1, 1.0.0 and 2.0.0: round trips, hand-written files, bad entries, export.

References independent of the converters: the sim that wrote a file (its encodings and outputs), entries
written literally from AIMET's definitions (1.0.0: ``offset`` as in 0.6.1, lists per tensor; 2.0.0:
``offset = -y_zero_point`` for ``uint``, ``-y_zero_point - 2**(bw-1)`` for ``int``), and the
QuantizeLinear initializers of the exported ONNX model.
"""

from __future__ import annotations

import copy
import doctest
import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import leantorch as lt
from leantorch.quant import encodings_formats

from .test_encodings_file import assert_same_sim, assert_same_state, calibrated, small_model, snapshot, write

VERSIONS = ("0.6.1", "1.0.0", "2.0.0")
CONV, MODEL_INPUT, INTERMEDIATE = "3.weight", "input_quantizers.0", "2.output_quantizers.0"
CONFIGS = {  # per-tensor and per-channel; symmetric, asymmetric and unsigned-symmetric (ReLU output) grids
    "per-tensor symmetric weights": {"config": {"per_channel": False, "param_symmetric": True}},
    "per-channel symmetric weights, symmetric activations": {
        "config": {"per_channel": True, "param_symmetric": True, "activation_symmetric": True}
    },
    "per-channel asymmetric 4-bit weights": {"config": {"per_channel": True, "param_symmetric": False}, "param_bw": 4},
    "per-tensor asymmetric 16-bit activations": {
        "config": {"per_channel": False, "param_symmetric": False},
        "act_bw": 16,
    },
}


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return small_model()


def grids(sim: lt.QuantSim) -> set[str]:
    """Kinds of grid among the active quantizers."""
    kinds = set()
    for q in sim.quantizers().values():
        if q.is_active:
            signed = bool((q.offset != 0).any())
            kinds.add(("symmetric" if signed else "unsigned symmetric") if q.symmetric else "asymmetric")
            kinds.add("per-channel" if q.axis is not None else "per-tensor")
    return kinds


# ------------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_save_then_load_is_identical(tmp_path, model, config: str, version: str) -> None:
    sim = calibrated(model, **CONFIGS[config])
    path = tmp_path / "sim.encodings"
    sim.save_encodings(path, encodings_version=version)
    assert json.loads(path.read_text())["version"] == version
    fresh = lt.QuantSim(model, torch.randn(1, 3, 8, 8), **CONFIGS[config])
    assert fresh.load_encodings(path) == []
    assert_same_sim(sim, fresh)  # bitwidth, symmetry, axis, scales, offsets and outputs


def test_round_trips_cover_every_kind_of_grid(model) -> None:
    kinds = set().union(*(grids(calibrated(model, **options)) for options in CONFIGS.values()))
    assert kinds == {"symmetric", "unsigned symmetric", "asymmetric", "per-channel", "per-tensor"}


@pytest.mark.parametrize("version", ["1.0.0", "2.0.0"])
def test_export_writes_the_version_and_loads_back(tmp_path, model, version: str) -> None:
    options = CONFIGS["per-channel symmetric weights, symmetric activations"]
    sim = calibrated(model, **options)
    files = sim.export(tmp_path, "net", encodings_version=version)
    data = json.loads(files["encodings"].read_text())
    assert data["version"] == version and "quantizer_names" in data
    items = data["encodings"] if version == "2.0.0" else data["activation_encodings"] + data["param_encodings"]
    assert "input" in {e["name"] for e in items}  # keyed by ONNX names, as AIMET does
    fresh = lt.QuantSim(model, torch.randn(1, 3, 8, 8), **options)
    assert fresh.load_encodings(files["encodings"]) == []
    assert_same_sim(sim, fresh)
    frozen = lt.QuantSim(model, torch.randn(1, 3, 8, 8), **options)
    frozen.set_and_freeze_param_encodings(files["encodings"])
    assert frozen.param_quantizers()[CONV].frozen
    assert torch.equal(frozen.param_quantizers()[CONV].scale, sim.param_quantizers()[CONV].scale)


@pytest.mark.parametrize(
    "config", ["per-channel symmetric weights, symmetric activations", "per-channel asymmetric 4-bit weights"]
)
def test_exported_2_0_0_entries_are_the_quantize_linear_parameters(tmp_path, model, config: str) -> None:
    """2.0.0 mirrors onnx QuantizeLinear: each entry equals the scale, zero point and axis of the node
    that quantizes that tensor in the exported model (below 8 bits the container is wider, same numbers)."""
    files = calibrated(model, **CONFIGS[config]).export(tmp_path, "net", encodings_version="2.0.0")
    entries = {e["name"]: e for e in json.loads(files["encodings"].read_text())["encodings"]}
    proto = onnx.load(str(files["onnx"]))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    checked = 0
    for node in proto.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        source = node.input[0]
        producer = next((n for n in proto.graph.node if source in n.output and n.op_type == "Clip"), None)
        name = producer.input[0] if producer is not None else source
        e = entries[name]
        scale, zero_point = inits[node.input[1]], inits[node.input[2]]
        np.testing.assert_array_equal(np.float32(e["y_scale"]), scale)
        np.testing.assert_array_equal(np.asarray(e.get("y_zero_point", np.zeros_like(zero_point))), zero_point)
        assert e["output_dtype"].startswith("int") == (zero_point.dtype.kind == "i"), name
        axis = next((a.i for a in node.attribute if a.name == "axis"), None)
        assert e.get("axis") == (axis if scale.ndim else None), name
        checked += 1
    assert checked == len(entries) >= 5


# ------------------------------------------------------------------------------------------ hand-written files
def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()


# One set of grids, written in each version from AIMET's definitions. Expected (bitwidth, symmetric, scales,
# offsets) as loaded into a default per-channel sim (asymmetric activations, symmetric weights).
EXPECTED = {
    "input_quantizers.0": (8, False, [0.02], [-100]),
    "1.output_quantizers.0": (8, False, [0.01], [0]),
    "2.output_quantizers.0": (16, False, [0.001], [-30000]),
    "0.param_quantizers.weight": (4, True, [0.125, 0.25, 0.5], [-8, -8, -8]),
    "2.param_quantizers.weight": (8, False, [0.0625, 0.03125], [-128, -3]),
}
HAND_WRITTEN = {
    "0.6.1": {
        "version": "0.6.1",
        "activation_encodings": {
            "input_quantizers.0": [
                {
                    "bitwidth": 8,
                    "dtype": "int",
                    "is_symmetric": "False",
                    "scale": 0.02,
                    "offset": -100,
                    "min": -2.0,
                    "max": 3.1,
                }
            ],
            "1.output_quantizers.0": [
                {
                    "bitwidth": 8,
                    "dtype": "int",
                    "is_symmetric": "False",
                    "scale": 0.01,
                    "offset": 0,
                    "min": 0.0,
                    "max": 2.55,
                }
            ],
            "2.output_quantizers.0": [
                {
                    "bitwidth": 16,
                    "dtype": "int",
                    "is_symmetric": "False",
                    "scale": 0.001,
                    "offset": -30000,
                    "min": -30.0,
                    "max": 35.535,
                }
            ],
        },
        "param_encodings": {
            "0.weight": [
                {
                    "bitwidth": 4,
                    "dtype": "int",
                    "is_symmetric": "True",
                    "scale": s,
                    "offset": -8,
                    "min": -8 * s,
                    "max": 7 * s,
                }
                for s in (0.125, 0.25, 0.5)
            ],
            "2.weight": [
                {
                    "bitwidth": 8,
                    "dtype": "int",
                    "is_symmetric": "False",
                    "scale": 0.0625,
                    "offset": -128,
                    "min": -8.0,
                    "max": 7.9375,
                },
                {
                    "bitwidth": 8,
                    "dtype": "int",
                    "is_symmetric": "False",
                    "scale": 0.03125,
                    "offset": -3,
                    "min": -0.09375,
                    "max": 7.875,
                },
            ],
        },
    },
    "1.0.0": {
        "version": "1.0.0",
        "activation_encodings": [
            {
                "name": "input_quantizers.0",
                "enc_type": "PER_TENSOR",
                "dtype": "INT",
                "bw": 8,
                "is_sym": False,
                "scale": [0.02],
                "offset": [-100],
            },
            {
                "name": "1.output_quantizers.0",
                "enc_type": "PER_TENSOR",
                "dtype": "INT",
                "bw": 8,
                "is_sym": False,
                "scale": [0.01],
                "offset": [0],
            },
            {
                "name": "2.output_quantizers.0",
                "enc_type": "PER_TENSOR",
                "dtype": "INT",
                "bw": 16,
                "is_sym": False,
                "scale": [0.001],
                "offset": [-30000],
            },
        ],
        "param_encodings": [
            {
                "name": "0.weight",
                "enc_type": "PER_CHANNEL",
                "dtype": "INT",
                "bw": 4,
                "is_sym": True,
                "scale": [0.125, 0.25, 0.5],
                "offset": [-8.0, -8.0, -8.0],
            },  # aimet_onnx writes float offsets
            {
                "name": "2.weight",
                "enc_type": "PER_CHANNEL",
                "dtype": "INT",
                "bw": 8,
                "is_sym": False,
                "scale": [0.0625, 0.03125],
                "offset": [-128, -3],
            },
        ],
        "quantizer_args": {
            "activation_bitwidth": 8,
            "param_bitwidth": 8,
            "dtype": "int",
            "is_symmetric": True,
            "per_channel_quantization": True,
            "quant_scheme": "post_training_tf_enhanced",
        },
        "excluded_layers": [],
    },
    "2.0.0": {
        "version": "2.0.0",
        "encodings": [
            {"name": "input_quantizers.0", "output_dtype": "uint8", "y_scale": 0.02, "y_zero_point": 100},
            # a zero-based 8-bit grid as aimet_onnx writes it: int8 with zero point -128
            {"name": "1.output_quantizers.0", "output_dtype": "int8", "y_scale": 0.01, "y_zero_point": -128},
            {"name": "2.output_quantizers.0", "output_dtype": "uint16", "y_scale": 0.001, "y_zero_point": 30000},
            {"name": "0.weight", "output_dtype": "int4", "y_scale": [0.125, 0.25, 0.5], "axis": 0},
            {
                "name": "2.weight",
                "output_dtype": "uint8",
                "y_scale": [0.0625, 0.03125],
                "y_zero_point": [128, 3],
                "axis": 0,
            },
        ],
    },
}


@pytest.mark.parametrize("version", VERSIONS)
def test_hand_written_file_loads_to_the_expected_grids(tmp_path, version: str) -> None:
    sim = lt.QuantSim(tiny(), torch.randn(1, 4), per_channel=True)
    assert sim.load_encodings(write(tmp_path, HAND_WRITTEN[version])) == []  # strict: covers every quantizer
    for name, (bitwidth, symmetric, scales, offsets) in EXPECTED.items():
        q = sim.quantizers()[name]
        assert (q.bitwidth, q.symmetric) == (bitwidth, symmetric), name
        assert q.scale.reshape(-1).tolist() == torch.tensor(scales, dtype=torch.float32).tolist(), name
        assert q.offset.reshape(-1).tolist() == offsets, name
        assert q.axis == (0 if "param" in name else None), name


def test_2_0_0_symmetry_comes_from_the_quantizer_when_the_grid_allows(tmp_path) -> None:
    """2.0.0 has no symmetry flag: the same file gives symmetric grids to a symmetric sim where it can."""
    sim = lt.QuantSim(tiny(), torch.randn(1, 4), config={"per_channel": True, "activation_symmetric": True})
    sim.load_encodings(write(tmp_path, HAND_WRITTEN["2.0.0"]))
    symmetric = {n: sim.quantizers()[n].symmetric for n in EXPECTED}
    assert symmetric == {
        "input_quantizers.0": False,  # offset -100: asymmetric whatever the quantizer
        "1.output_quantizers.0": True,  # offset 0: unsigned symmetric
        "2.output_quantizers.0": False,
        "0.param_quantizers.weight": True,
        "2.param_quantizers.weight": False,
    }  # offsets -128 and -3: not a symmetric grid


def test_1_0_0_and_0_6_1_files_of_one_sim_load_alike(tmp_path) -> None:
    one = lt.QuantSim(tiny(), torch.randn(1, 4), per_channel=True)
    two = lt.QuantSim(tiny(), torch.randn(1, 4), per_channel=True)
    one.load_encodings(write(tmp_path, HAND_WRITTEN["0.6.1"], "a.encodings"))
    two.load_encodings(write(tmp_path, HAND_WRITTEN["1.0.0"], "b.encodings"))
    x = torch.randn(5, 4)
    with torch.no_grad():
        assert torch.equal(one.model(x), two.model(x))


# ------------------------------------------------------------------------------------------ bad entries
def item(version: str, name: str) -> Callable[[dict], dict]:
    """The entry named ``name`` of a 1.0.0 or 2.0.0 file."""

    def find(data: dict) -> dict:
        sections = ["encodings"] if version == "2.0.0" else ["activation_encodings", "param_encodings"]
        return next(e for s in sections for e in data[s] if e["name"] == name)

    return find


def set_item(version: str, entry_name: str, /, **fields: Any) -> Callable[[dict], None]:
    return lambda data: item(version, entry_name)(data).update(fields)


def drop_item_field(version: str, name: str, field: str) -> Callable[[dict], None]:
    return lambda data: item(version, name)(data).pop(field)


V1, V2 = "1.0.0", "2.0.0"
ACT, PARAM = "activation_encodings", "param_encodings"
BAD = {
    (V1, "scale zero"): (
        set_item(V1, INTERMEDIATE, scale=[0.0]),
        r"activation_encodings\['2\.output_quantizers\.0'\]: "
        r"scale=0\.0 is not a valid scale",
    ),
    (V1, "scale nan in a channel"): (
        lambda d: item(V1, CONV)(d)["scale"].__setitem__(2, math.nan),
        r"param_encodings\['3\.weight'\] channel 2: scale=nan",
    ),
    (V1, "offset off the grid"): (set_item(V1, MODEL_INPUT, offset=[3]), r"offset=3 is off the asymmetric 8-bit grid"),
    (V1, "symmetric offset"): (
        lambda d: item(V1, CONV)(d)["offset"].__setitem__(1, -127),
        r"3\.weight'\] channel 1: offset=-127 is off the symmetric",
    ),
    (V1, "is_sym text"): (set_item(V1, CONV, is_sym="yes"), r"3\.weight'\]: is_sym='yes' is not a boolean"),
    (V1, "bw 17"): (set_item(V1, INTERMEDIATE, bw=17), r"bw=17: 17-bit encodings are not supported"),
    (V1, "bw 32"): (set_item(V1, INTERMEDIATE, bw=32), r"bw=32: 32-bit encodings .* drop the entry"),
    (V1, "bw text"): (set_item(V1, INTERMEDIATE, bw="8"), r"bw='8' is not supported"),
    (V1, "float"): (  # float items: tests/test_encodings_floats.py
        set_item(V1, INTERMEDIATE, dtype="FLOAT"),
        r"an 8-bit float entry without 'float_format': add 'float_format': 'float8_e4m3fn' or 'float8_e5m2'",
    ),
    (V1, "unknown dtype"): (set_item(V1, INTERMEDIATE, dtype="int"), r"dtype='int' is not a known dtype of version"),
    (V1, "per block, one scale per channel"): (  # blockwise entries: tests/test_encodings_blockwise.py
        set_item(V1, CONV, enc_type="PER_BLOCK", block_size=2),
        r"3\.weight'\]: the file has 4 block encodings but 3\.weight has 4 channels along axis 0 × 3 blocks",
    ),
    (V1, "lpbq without its fields"): (
        set_item(V1, CONV, enc_type="LPBQ", compressed_bw=4),
        r"missing field\(s\) \['block_size', 'per_block_int_scale'\]; an LPBQ entry needs",
    ),
    (V1, "block size on per channel"): (
        set_item(V1, CONV, block_size=2),
        r"\['block_size'\] given with enc_type="
        "'PER_CHANNEL'",
    ),
    (V1, "unknown enc_type"): (set_item(V1, CONV, enc_type="PER_AXIS"), r"enc_type='PER_AXIS' is not a known"),
    (V1, "missing offset"): (drop_item_field(V1, MODEL_INPUT, "offset"), r"missing field\(s\) \['offset'\]"),
    (V1, "scale not a list"): (set_item(V1, MODEL_INPUT, scale=0.1), r"scale=0\.1 must be a non-empty list"),
    (V1, "lengths differ"): (lambda d: item(V1, CONV)(d)["offset"].pop(), r"4 scales but 3 offsets"),
    (V1, "per tensor with channels"): (
        set_item(V1, MODEL_INPUT, scale=[0.1, 0.2], offset=[0, 0]),
        r"enc_type='PER_TENSOR' with 2 scales",
    ),
    (V1, "wrong channel count"): (
        lambda d: [item(V1, CONV)(d)[f].pop() for f in ("scale", "offset")],
        r"3 per-channel encodings but 3\.weight has 4 channels",
    ),
    (V1, "zero point shift"): (
        set_item(V1, CONV, zero_point_shift=[0.5] * 4),
        r"zero_point_shift=.* not supported yet",
    ),
    (V1, "no name"): (lambda d: d[PARAM][0].pop("name"), r"param_encodings\[0\]: 'name' must be a non-empty string"),
    (V1, "name twice"): (lambda d: d[ACT].append(copy.deepcopy(d[ACT][0])), r"the name appears twice"),
    (V1, "section not a list"): (lambda d: d.update(param_encodings={}), r"'param_encodings' must be a JSON list"),
    (V1, "unknown name"): (set_item(V1, CONV, name="no.such.weight"), r"name no quantizer .*no\.such\.weight"),
    (V2, "y_scale zero"): (
        set_item(V2, INTERMEDIATE, y_scale=0.0),
        r"encodings\['2\.output_quantizers\.0'\]: "
        r"y_scale=0\.0 is not a valid scale",
    ),
    (V2, "y_scale nan in a channel"): (
        lambda d: item(V2, CONV)(d)["y_scale"].__setitem__(1, math.nan),
        r"encodings\['3\.weight'\] channel 1: y_scale=nan is not a valid scale",
    ),
    (V2, "y_scale text"): (set_item(V2, MODEL_INPUT, y_scale="0.1"), r"y_scale='0\.1' is not a valid scale"),
    (V2, "zero point outside uint8"): (
        set_item(V2, MODEL_INPUT, y_zero_point=256),
        r"y_zero_point=256 is outside the range \[0, 255\] of 'uint8'",
    ),
    (V2, "zero point outside int8"): (
        set_item(V2, CONV, y_zero_point=[0, 0, 128, 0]),
        r"3\.weight'\] channel 2: y_zero_point=128 is outside the range \[-128, 127\]",
    ),
    (V2, "fractional zero point"): (
        set_item(V2, MODEL_INPUT, output_dtype="int2", y_zero_point=-0.5),
        r"y_zero_point=-0\.5 is not an integer .*not supported yet",
    ),
    (V2, "zero point shape"): (set_item(V2, CONV, y_zero_point=0), r"y_zero_point=0 does not match y_scale"),
    (V2, "float dtype"): (  # float items: tests/test_encodings_floats.py
        set_item(V2, INTERMEDIATE, output_dtype="float32"),
        r"output_dtype='float32' is not a supported float type; use one of \['float16', 'bfloat16', 'float8e4m3fn'",
    ),
    (V2, "int32"): (set_item(V2, INTERMEDIATE, output_dtype="int32"), r"output_dtype='int32': 32-bit encodings"),
    (V2, "int17"): (set_item(V2, INTERMEDIATE, output_dtype="uint17"), r"17-bit encodings are not supported"),
    (V2, "unknown dtype"): (set_item(V2, INTERMEDIATE, output_dtype="q8"), r"output_dtype='q8' is not an integer type"),
    (V2, "no dtype"): (drop_item_field(V2, INTERMEDIATE, "output_dtype"), r"output_dtype=None is not an integer"),
    (V2, "no y_scale"): (drop_item_field(V2, INTERMEDIATE, "y_scale"), r"missing field 'y_scale'"),
    (V2, "per block, flat y_scale"): (
        set_item(V2, CONV, block_size=2),
        r"3\.weight'\]: y_scale=\[.* must be nested lists: one non-empty list per channel",
    ),
    (V2, "lpbq without block_size"): (
        lambda d: item(V2, CONV)(d).update(per_block_int_scale=[[1, 2]], per_channel_float_scale=[0.1]),
        r"missing field\(s\) \['block_size'\]; an LPBQ entry needs",
    ),
    (V2, "nested y_scale without block_size"): (
        set_item(V2, CONV, y_scale=[[0.1, 0.2]] * 4),
        r"3\.weight'\]: missing field 'block_size'",
    ),
    (V2, "meta y_scale"): (set_item(V2, CONV, y_scale={"x": [[3]], "x_scale": [0.1]}), r"y_scale is an object"),
    (V2, "no axis"): (drop_item_field(V2, CONV, "axis"), r"per-channel y_scale \(4 values\) needs 'axis'"),
    (V2, "wrong channel count"): (
        lambda d: item(V2, CONV)(d)["y_scale"].pop(),
        r"3 per-channel encodings but 3\.weight has 4 channels",
    ),
    (V2, "per-tensor entry on a per-channel weight"): (
        set_item(V2, CONV, y_scale=0.1, axis=None),
        r"one encoding for 3\.weight but this sim quantizes it per",
    ),
    (V2, "name twice"): (lambda d: d["encodings"].append(copy.deepcopy(d["encodings"][0])), r"the name appears twice"),
    (V2, "not a list"): (lambda d: d.update(encodings={}), r"'encodings' must be a JSON list"),
    (V2, "no encodings"): (lambda d: d.pop("encodings"), r"holds no encodings: 'encodings' is not present"),
    (V2, "0.6.1 sections"): (lambda d: d.update(param_encodings={}), r"version 2\.0\.0 files hold one list"),
    (V2, "unknown name"): (set_item(V2, INTERMEDIATE, name="/relu/Relu_output_0"), r"\['/relu/Relu_output_0'\]"),
}


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory) -> dict[str, dict]:
    """Files of each version saved from one calibrated per-channel sim."""
    sim = calibrated(model, per_channel=True)
    out = {}
    for version in (V1, V2):
        path = tmp_path_factory.mktemp("enc") / "saved.encodings"
        sim.save_encodings(path, encodings_version=version)
        out[version] = json.loads(path.read_text())
    return out


@pytest.fixture(scope="module")
def target(model) -> lt.QuantSim:
    return calibrated(model, seed=7, per_channel=True)


@pytest.mark.parametrize("version,case", list(BAD))
def test_bad_entry_is_refused_and_nothing_changes(tmp_path, saved, target, version: str, case: str) -> None:
    mutate, message = BAD[version, case]
    data = copy.deepcopy(saved[version])
    mutate(data)
    path = write(tmp_path, json.dumps(data))  # json.dumps writes NaN as NaN, which json.loads reads back
    before = snapshot(target)
    for load in (target.load_encodings, target.set_and_freeze_param_encodings):
        with pytest.raises(lt.EncodingsFileError, match=message):
            load(path)
        assert_same_state(target, before)


# ------------------------------------------------------------------------------------------ options
@pytest.mark.parametrize("version", ["0.6.2", "2.1.0", 1, ""])  # None means "pick": see below
def test_unknown_version_is_refused_before_anything_is_written(tmp_path, model, version: Any) -> None:
    sim = calibrated(model)
    with pytest.raises(lt.InvalidOptionError, match=r"encodings_version=.*use one of '0\.6\.1', '1\.0\.0', '2\.0\.0'"):
        sim.save_encodings(tmp_path / "a.encodings", encodings_version=version)
    with pytest.raises(lt.InvalidOptionError, match=r"encodings_version=.*'2\.0\.0'"):
        sim.export(tmp_path / "out", "net", encodings_version=version)
    assert list(tmp_path.iterdir()) == []


def test_default_stays_0_6_1(tmp_path, model) -> None:
    sim = calibrated(model)
    sim.save_encodings(tmp_path / "a.encodings")
    files = sim.export(tmp_path, "net")
    assert json.loads((tmp_path / "a.encodings").read_text())["version"] == "0.6.1"
    assert json.loads(files["encodings"].read_text())["version"] == "0.6.1"


def test_without_a_version_blockwise_weights_are_written_in_1_0_0(tmp_path) -> None:
    # 0.6.1 has no block fields: the default is the oldest version that can hold the encodings.
    model = nn.Sequential(nn.Linear(32, 8)).eval()
    sim = lt.QuantSim(model, torch.randn(1, 32), param_bw=4, param_block_size=16)
    sim.compute_encodings([torch.randn(8, 32)], progress=False)
    sim.save_encodings(tmp_path / "a.encodings")
    data = json.loads((tmp_path / "a.encodings").read_text())
    assert data["version"] == "1.0.0" and data["param_encodings"][0]["enc_type"] == "PER_BLOCK"
    with pytest.raises(lt.EncodingsFileError, match="1.0.0"):
        sim.save_encodings(tmp_path / "b.encodings", encodings_version="0.6.1")  # asked for: refused, named


def test_formats_module_examples_run() -> None:
    result = doctest.testmod(encodings_formats, extraglobs={"torch": torch})
    assert result.attempted >= 5 and result.failed == 0
