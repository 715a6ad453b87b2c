"""Encodings files: every bad number or name is refused before anything changes; files round-trip exactly.

The references are independent of the loader: a hand-written consistent entry (``entry``), the sim that
wrote the file (its outputs and encodings), and snapshots of the target sim taken before a failed load.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import leantorch as lt

INTERMEDIATE = "2.output_quantizers.0"  # the ReLU after conv 0 (asymmetric, unsigned range)
MODEL_INPUT = "input_quantizers.0"  # asymmetric, negative offset
CONV = "3.weight"  # a per-channel (4 channels) symmetric weight in the per-channel config


def small_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 4, 3, padding=1),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 5),
    ).eval()
    model[1].running_mean.uniform_(-0.3, 0.3)
    model[1].running_var.uniform_(0.5, 1.5)
    return model


def calibrated(model: nn.Module, seed: int = 1, **options: Any) -> lt.QuantSim:
    gen = torch.Generator().manual_seed(seed)
    sim = lt.QuantSim(model, torch.randn(1, 3, 8, 8), **options)
    sim.compute_encodings([torch.randn(4, 3, 8, 8, generator=gen) for _ in range(2)], progress=False)
    return sim


def entry(bitwidth: int, symmetric: bool, scale: float, offset: int) -> dict[str, Any]:
    """A consistent AIMET entry written from the format's definition (min = offset*scale, ...)."""
    return {
        "bitwidth": bitwidth,
        "dtype": "int",
        "is_symmetric": str(symmetric),
        "scale": scale,
        "offset": offset,
        "min": offset * scale,
        "max": (offset + 2**bitwidth - 1) * scale,
    }


def snapshot(sim: lt.QuantSim) -> dict[str, tuple]:
    return {
        n: (
            q.bitwidth,
            q.symmetric,
            q.axis,
            q.enabled,
            q.frozen,
            None if q.scale is None else q.scale.detach().clone(),
            None if q.offset is None else q.offset.detach().clone(),
        )
        for n, q in sim.quantizers().items()
    }


def assert_same_state(sim: lt.QuantSim, before: dict[str, tuple]) -> None:
    after = snapshot(sim)
    assert after.keys() == before.keys()
    for name, old in before.items():
        new = after[name]
        assert new[:5] == old[:5], name
        for a, b in zip(new[5:], old[5:]):
            assert (a is None and b is None) or torch.equal(a, b), f"{name} changed by a failed load"


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return small_model()


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory) -> dict[str, Any]:
    """The content of a file saved from a calibrated per-channel sim."""
    path = tmp_path_factory.mktemp("enc") / "saved.encodings"
    calibrated(model, per_channel=True).save_encodings(path)
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def target(model) -> lt.QuantSim:
    """A calibrated sim (other data than the file's) that every failed load must leave as it is."""
    return calibrated(model, seed=7, per_channel=True)


def write(tmp_path, content: Any, name: str = "case.encodings"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


# ------------------------------------------------------------------------------------------ bad entries
def set_field(section: str, key: str, field: str, value: Any, channel: int = 0) -> Callable[[dict], None]:
    def mutate(data: dict) -> None:
        data[section][key][channel][field] = value

    return mutate


def drop_field(section: str, key: str, field: str) -> Callable[[dict], None]:
    def mutate(data: dict) -> None:
        del data[section][key][0][field]

    return mutate


def replace_entry(section: str, key: str, new: Any, channel: int | None = 0) -> Callable[[dict], None]:
    def mutate(data: dict) -> None:
        if channel is None:
            data[section][key] = new
        else:
            data[section][key][channel] = new

    return mutate


def shift_range(section: str, key: str, steps: float) -> Callable[[dict], None]:
    """min and max moved together by ``steps`` steps: still ordered, but not the grid of scale/offset."""

    def mutate(data: dict) -> None:
        e = data[section][key][0]
        e["min"] += steps * e["scale"]
        e["max"] += steps * e["scale"]

    return mutate


ACT, PARAM = "activation_encodings", "param_encodings"
BAD_ENTRIES = {
    "scale zero": (set_field(ACT, INTERMEDIATE, "scale", 0.0), r"2\.output_quantizers\.0'\]: scale=0\.0"),
    "scale negative": (set_field(PARAM, CONV, "scale", -0.01, channel=2), r"3\.weight'\] channel 2: scale=-0\.01"),
    "scale nan": (set_field(ACT, INTERMEDIATE, "scale", math.nan), r"2\.output_quantizers\.0'\]: scale=nan"),
    "scale inf": (set_field(PARAM, CONV, "scale", math.inf, channel=1), r"channel 1: scale=inf is not finite"),
    "scale tiny": (set_field(ACT, INTERMEDIATE, "scale", 1e-45), r"scale=1e-45 is not a valid scale"),
    "scale string": (set_field(ACT, INTERMEDIATE, "scale", "0.1"), r"scale='0\.1' is not a number"),
    "offset 1e6": (set_field(ACT, MODEL_INPUT, "offset", 1e6), r"offset=1000000\.0 is off the asymmetric 8-bit grid"),
    "offset positive": (set_field(ACT, MODEL_INPUT, "offset", 3), r"offset=3 is off the asymmetric"),
    "offset fraction": (set_field(ACT, MODEL_INPUT, "offset", -3.5), r"offset=-3\.5 is not an integer"),
    "offset huge int": (set_field(ACT, MODEL_INPUT, "offset", 10**400), r"offset=.* is not finite"),
    "symmetric offset": (
        set_field(PARAM, CONV, "offset", -127, channel=3),
        r"channel 3: offset=-127 is off the symmetric",
    ),
    "min above max": (
        replace_entry(ACT, INTERMEDIATE, {**entry(8, False, 0.1, -10), "min": 1.0, "max": -1.0}),
        r"min=1\.0 > max=-1\.0",
    ),
    "min nan": (set_field(ACT, MODEL_INPUT, "min", math.nan), r"min=nan is not finite"),
    "max inf": (set_field(ACT, MODEL_INPUT, "max", math.inf), r"max=inf is not finite"),
    "min off grid": (shift_range(ACT, MODEL_INPUT, 5), r"min=.* disagrees with scale"),
    "max off grid": (set_field(ACT, INTERMEDIATE, "max", 1e3), r"max=1000\.0 disagrees"),
    "missing scale": (drop_field(ACT, INTERMEDIATE, "scale"), r"missing field\(s\) \['scale'\]"),
    "missing is_symmetric": (drop_field(PARAM, CONV, "is_symmetric"), r"missing field\(s\) \['is_symmetric'\]"),
    "bitwidth 17": (set_field(ACT, INTERMEDIATE, "bitwidth", 17), r"bitwidth=17 is not supported"),
    "bitwidth 32": (set_field(ACT, INTERMEDIATE, "bitwidth", 32), r"bitwidth=32 means 'not quantized'"),
    "bitwidth text": (set_field(ACT, INTERMEDIATE, "bitwidth", "8"), r"bitwidth='8' is not supported"),
    "is_symmetric text": (set_field(ACT, INTERMEDIATE, "is_symmetric", "yes"), r"is_symmetric='yes' is not a boolean"),
    "is_symmetric int": (set_field(ACT, INTERMEDIATE, "is_symmetric", 1), r"is_symmetric=1 is not a boolean"),
    "float dtype": (  # an 8-bit float entry must say which fp8 (float entries: tests/test_encodings_floats.py)
        set_field(ACT, INTERMEDIATE, "dtype", "float"),
        r"2\.output_quantizers\.0'\]: an 8-bit float entry without 'float_format': add 'float_format': "
        "'float8_e4m3fn' or 'float8_e5m2'",
    ),
    "unknown dtype": (set_field(ACT, INTERMEDIATE, "dtype", "int8"), r"dtype='int8' is not a known dtype"),
    "per-tensor entry on a per-channel weight": (
        replace_entry(PARAM, CONV, [entry(8, True, 0.01, -128)], channel=None),
        r"3\.weight'\]: the file has one encoding for 3\.weight but this sim quantizes it per channel "
        r"\(4 channels along axis 0\): make the file with per_channel=True",
    ),
    "entry not a dict": (replace_entry(ACT, INTERMEDIATE, 0.5), r"expected an entry object"),
    "entries not a list": (
        replace_entry(ACT, INTERMEDIATE, entry(8, False, 0.1, 0), channel=None),
        r"expected a non-empty list",
    ),
    "empty list": (replace_entry(ACT, INTERMEDIATE, [], channel=None), r"expected a non-empty list"),
    "mixed bitwidths": (
        replace_entry(PARAM, CONV, entry(4, True, 0.01, -8), channel=1),
        r"3\.weight'\] channel 1: bitwidth 4, is_symmetric True differ from channel 0",
    ),
    "mixed signedness": (
        replace_entry(PARAM, CONV, entry(8, True, 0.01, 0), channel=2),
        r"channel 2: offset 0 mixes an unsigned and a signed symmetric grid",
    ),
    "wrong channel count": (lambda d: d[PARAM][CONV].pop(), r"3 per-channel encodings but 3\.weight has 4 channels"),
    "per-channel activation": (
        replace_entry(ACT, INTERMEDIATE, [entry(8, False, 0.1, 0)] * 2, channel=None),
        r"2 per-channel entries, but 2\.output_quantizers\.0 quantizes per tensor",
    ),
    "unknown param": (
        lambda d: d[PARAM].update({"no.such.weight": d[PARAM]["5.weight"]}),
        r"name no quantizer of this model, e\.g\. \['no\.such\.weight'\]",
    ),
    "unknown activation": (
        lambda d: d[ACT].update({"/conv/Conv_output_0": d[ACT][INTERMEDIATE]}),
        r"\['/conv/Conv_output_0'\].*'quantizer_names' map",
    ),
}


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("case", list(BAD_ENTRIES))
def test_bad_entry_is_refused_and_nothing_changes(tmp_path, saved, target, case: str, strict: bool) -> None:
    mutate, message = BAD_ENTRIES[case]
    data = copy.deepcopy(saved)
    mutate(data)
    path = write(tmp_path, data)
    before = snapshot(target)
    with pytest.raises(lt.EncodingsFileError, match=message):
        target.load_encodings(path, strict=strict)
    assert_same_state(target, before)
    # set_and_freeze_param_encodings reads the same file under the same rules.
    with pytest.raises(lt.EncodingsFileError, match=message):
        target.set_and_freeze_param_encodings(path)
    assert_same_state(target, before)


BAD_FILES = {
    "only a version": ({"version": "0.6.1"}, r"holds no encodings"),
    "unknown version": (lambda d: d.update(version="3.0.0"), r"version '3\.0\.0' is not supported"),
    "0.6.1 layout labelled 1.0.0": (
        lambda d: d.update(version="1.0.0"),
        r"'activation_encodings' must be a JSON list of entries .* in version 1\.0\.0",
    ),
    "no version": (lambda d: d.pop("version"), r"version None is not supported"),
    "numeric version": (lambda d: d.update(version=0.61), r"version 0\.61 is not supported"),
    "not an object": ([1, 2], r"expected a JSON object, got list"),
    "section not an object": (lambda d: d.update(param_encodings=[]), r"'param_encodings' must be a JSON object"),
    "names map malformed": (
        lambda d: d.update(quantizer_names={"param_encodings": {"3.weight": "3"}}),
        r"'quantizer_names' must map a section",
    ),
    "names map to unknown quantizer": (
        lambda d: d.update(quantizer_names={ACT: {INTERMEDIATE: ["nope.0"]}}),
        r"2\.output_quantizers\.0 → nope\.0",
    ),
    "two grids for one quantizer": (
        lambda d: d.update(quantizer_names={ACT: {MODEL_INPUT: [INTERMEDIATE]}}),
        r"2\.output_quantizers\.0 gets two different encodings",
    ),
    "not json": ("{version: 0.6.1", r"cannot read encodings file"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_is_refused_and_nothing_changes(tmp_path, saved, target, case: str) -> None:
    change, message = BAD_FILES[case]
    data = copy.deepcopy(saved)
    if callable(change):
        change(data)
    else:
        data = change
    path = write(tmp_path, data)
    before = snapshot(target)
    for load in (target.load_encodings, target.set_and_freeze_param_encodings):
        with pytest.raises(lt.EncodingsFileError, match=message):
            load(path)
        assert_same_state(target, before)


def test_nan_scale_on_an_intermediate_quantizer_is_refused(tmp_path, model) -> None:
    """It used to load and give finite but wrong outputs (NaN steps clamp to the range ends)."""
    source = calibrated(model, per_channel=True)
    source.save_encodings(tmp_path / "good.encodings")
    data = json.loads((tmp_path / "good.encodings").read_text())
    data[ACT][INTERMEDIATE][0]["scale"] = math.nan
    fresh = lt.QuantSim(model, torch.randn(1, 3, 8, 8), per_channel=True)
    with pytest.raises(lt.EncodingsFileError, match=r"activation_encodings\['2\.output_quantizers\.0'\]: scale=nan"):
        fresh.load_encodings(write(tmp_path, data))
    assert all(q.encoding is None for q in fresh.quantizers().values())


# ------------------------------------------------------------------------------------------ coverage
def test_strict_load_needs_every_active_quantizer(tmp_path, saved, target) -> None:
    data = copy.deepcopy(saved)
    del data[ACT]["3.output_quantizers.0"], data[PARAM]["5.weight"]
    path = write(tmp_path, data)
    before = snapshot(target)
    with pytest.raises(
        lt.EncodingsFileError,
        match=r"no encoding for 2, e\.g\. \['3\.output_quantizers\.0', "
        r"'5\.param_quantizers\.weight'\].*strict=False",
    ):
        target.load_encodings(path)
    assert_same_state(target, before)


def test_partial_load_returns_what_it_left_alone(tmp_path, model, saved, caplog) -> None:
    data = copy.deepcopy(saved)
    del data[ACT]["3.output_quantizers.0"], data[PARAM]["5.weight"]
    sim = calibrated(model, seed=7, per_channel=True)
    before = snapshot(sim)
    with caplog.at_level(logging.WARNING, logger="leantorch.quant.sim"):
        left = sim.load_encodings(write(tmp_path, data), strict=False)
    assert left == ["3.output_quantizers.0", "5.param_quantizers.weight"]
    assert "left 2 active quantizer(s)" in caplog.text
    after = snapshot(sim)
    for name in left:  # untouched
        assert torch.equal(after[name][5], before[name][5]) and torch.equal(after[name][6], before[name][6])
    # loaded: exactly the file's numbers
    assert torch.equal(after[INTERMEDIATE][5], torch.tensor(data[ACT][INTERMEDIATE][0]["scale"], dtype=torch.float32))
    assert after["3.param_quantizers.weight"][6].tolist() == [e["offset"] for e in data[PARAM][CONV]]


def test_disabled_quantizers_need_no_entry(tmp_path, model, saved) -> None:
    data = copy.deepcopy(saved)
    del data[PARAM]["5.weight"]
    sim = lt.QuantSim(model, torch.randn(1, 3, 8, 8), per_channel=True)
    sim.set_param_quantization(False, layers=["5"])
    assert sim.load_encodings(write(tmp_path, data)) == []


# ------------------------------------------------------------------------------------------ round trips
ROUND_TRIP_CONFIGS = {
    "per-tensor symmetric weights": {"per_channel": False, "param_symmetric": True},
    "per-channel symmetric weights": {"per_channel": True, "param_symmetric": True},
    "per-tensor asymmetric, symmetric activations": {
        "per_channel": False,
        "param_symmetric": False,
        "activation_symmetric": True,
    },
    "per-channel asymmetric weights": {"per_channel": True, "param_symmetric": False},
}


def assert_same_sim(a: lt.QuantSim, b: lt.QuantSim) -> None:
    x = torch.randn(6, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(a.model(x), b.model(x))
    for name, q in a.quantizers().items():
        other = b.quantizers()[name]
        assert q.is_active == other.is_active, name
        if q.is_active:
            assert (q.bitwidth, q.symmetric, q.axis) == (other.bitwidth, other.symmetric, other.axis), name
            assert torch.equal(q.scale, other.scale) and torch.equal(q.offset, other.offset), name


@pytest.mark.parametrize("config", list(ROUND_TRIP_CONFIGS))
def test_export_then_load_into_a_new_sim_is_exact(tmp_path, model, config: str) -> None:
    options = {"config": ROUND_TRIP_CONFIGS[config], "param_bw": 4 if "asymmetric" in config else 8}
    sim = calibrated(model, **options)
    files = sim.export(tmp_path, "net")
    data = json.loads(files["encodings"].read_text())
    assert data["version"] == "0.6.1" and "/" in "".join(data[ACT])  # keyed by ONNX names, as AIMET does
    fresh = lt.QuantSim(model, torch.randn(1, 3, 8, 8), **options)
    assert fresh.load_encodings(files["encodings"]) == []
    assert_same_sim(sim, fresh)
    # The exported file also feeds set_and_freeze_param_encodings (e.g. to keep the weights' grids in QAT).
    frozen = lt.QuantSim(model, torch.randn(1, 3, 8, 8), **options)
    frozen.set_and_freeze_param_encodings(files["encodings"])
    frozen.compute_encodings([torch.randn(4, 3, 8, 8)], progress=False)
    for name, q in frozen.param_quantizers().items():
        if q.is_active:
            assert q.frozen and torch.equal(q.scale, sim.param_quantizers()[name].scale), name


@pytest.mark.parametrize("per_channel", [False, True])
def test_save_then_load_is_exact_and_freeze_survives_calibration(tmp_path, model, per_channel: bool) -> None:
    sim = calibrated(model, per_channel=per_channel)
    sim.save_encodings(tmp_path / "sim.encodings")
    fresh = lt.QuantSim(model, torch.randn(1, 3, 8, 8), per_channel=per_channel)
    assert fresh.load_encodings(tmp_path / "sim.encodings", freeze=True) == []
    assert_same_sim(sim, fresh)
    fresh.compute_encodings([torch.randn(4, 3, 8, 8) * 5], progress=False)
    assert_same_sim(sim, fresh)


def test_hand_written_aimet_file_with_bool_symmetry_loads(tmp_path, model) -> None:
    """Entries written from the format's definition (JSON booleans, float32-rounded bounds) load as given."""
    sim = lt.QuantSim(model, torch.randn(1, 3, 8, 8))
    data = {"version": "0.6.1", ACT: {}, PARAM: {}}
    for i, name in enumerate(n for n, q in sim.activation_quantizers().items() if q.is_active):
        data[ACT][name] = [entry(8, False, 0.01 * (i + 1), -20)]
    for name, q in sim.param_quantizers().items():
        if q.is_active:
            e = entry(8, True, 0.002, -128)
            e["is_symmetric"], e["min"] = True, float(torch.tensor(e["min"], dtype=torch.float32))
            data[PARAM][name] = [e]
    sim.load_encodings(write(tmp_path, data))
    assert float(sim.quantizers()[INTERMEDIATE].scale) == pytest.approx(data[ACT][INTERMEDIATE][0]["scale"])
    assert int(sim.quantizers()[INTERMEDIATE].offset) == -20 and not sim.quantizers()[INTERMEDIATE].symmetric
    assert sim.param_quantizers()["0.weight"].symmetric and int(sim.param_quantizers()["0.weight"].offset) == -128


def test_writing_refuses_an_invalid_encoding(tmp_path, model) -> None:
    sim = calibrated(model)
    q = sim.quantizers()[INTERMEDIATE]
    q.set_encoding(lt.Encoding(8, False, torch.tensor(float("nan")), torch.tensor(0)))
    with pytest.raises(lt.EncodingsFileError, match=r"2\.output_quantizers\.0'\]: scale=nan"):
        sim.save_encodings(tmp_path / "nan.encodings")
    assert not (tmp_path / "nan.encodings").exists()


def test_freezing_needs_parameter_encodings(tmp_path, saved, target) -> None:
    path = write(tmp_path, {"version": "0.6.1", ACT: saved[ACT]})
    before = snapshot(target)
    with pytest.raises(lt.EncodingsFileError, match="no parameter encodings"):
        target.set_and_freeze_param_encodings(path)
    assert_same_state(target, before)


def test_saving_refuses_a_directory_and_creates_a_missing_one(tmp_path, model) -> None:
    sim = calibrated(model)
    (tmp_path / "old.encodings").write_text("old")
    with pytest.raises(lt.OutputPathError, match="is a directory: give a file path, e.g. .*model.encodings"):
        sim.save_encodings(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(lt.OutputPathError, match="is a file"):
        sim.save_encodings(tmp_path / "file" / "a.encodings")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "old.encodings"]  # nothing staged left
    path = tmp_path / "new" / "deep" / "model.encodings"
    sim.save_encodings(path)  # a missing directory is created, as export does
    fresh = lt.QuantSim(model, torch.randn(1, 3, 8, 8))
    assert fresh.load_encodings(path) == []


def test_per_tensor_file_onto_a_per_channel_sim_is_refused(tmp_path, model) -> None:
    path = tmp_path / "per_tensor.encodings"
    calibrated(model, per_channel=False).save_encodings(path)
    sim = calibrated(model, seed=7, per_channel=True)
    before = snapshot(sim)
    with pytest.raises(
        lt.EncodingsFileError,
        match=r"one encoding for \d\.weight but this sim quantizes it per "
        r"channel \(\d+ channels along axis 0\)",
    ):
        sim.load_encodings(path)
    assert_same_state(sim, before)
    assert sim.param_quantizers()[CONV].axis == 0


def test_adaround_file_holds_active_param_encodings_only(tmp_path, model) -> None:
    from leantorch.ptq.adaround import _save_param_encodings

    sim = calibrated(model, per_channel=True)
    path = tmp_path / "adaround.encodings"
    _save_param_encodings(sim, path)
    data = json.loads(path.read_text())
    assert list(data) == ["version", "activation_encodings", "param_encodings"]
    assert data["version"] == "0.6.1" and data["activation_encodings"] == {}
    want = {n: q.encoding.to_aimet() for n, q in sim.param_quantizers().items() if q.is_active and q.encoding}
    assert data["param_encodings"] == json.loads(json.dumps(want)) and CONV in want
    with pytest.raises(lt.OutputPathError, match="is a directory"):
        _save_param_encodings(sim, tmp_path)
    q = sim.param_quantizers()[CONV]
    q.set_encoding(lt.Encoding(8, True, torch.full((4,), float("nan")), torch.full((4,), -128), 0))
    with pytest.raises(lt.EncodingsFileError, match="scale=nan"):  # checked like every written file
        _save_param_encodings(sim, path)
    assert json.loads(path.read_text())["param_encodings"] == data["param_encodings"]  # old file kept


def test_error_messages_share_one_short_repr() -> None:
    from leantorch import graph, options
    from leantorch.quant import config, encoding, encodings_file

    assert not hasattr(encodings_file, "_short") and not hasattr(config, "_short")
    assert not hasattr(graph, "_short_repr")
    # the entry parser moved to quant/encoding.py (it was in encodings_file.py): still the one short_repr
    assert encoding.short_repr is config.short_repr is graph.short_repr is options.short_repr
    with pytest.raises(lt.EncodingsFileError, match=r"x: expected an entry object .*got \[0, 1, .*\.\.\.$"):
        encodings_file.parse_encoding([list(range(100))], "x")
