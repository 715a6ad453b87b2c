"""Blockwise (PER_BLOCK) and LPBQ weight encodings in AIMET encodings files (issue 13 item 1). References: the
sim that wrote a file, :func:`leantorch.quant.blocks.lpbq_compress`, and items written from AIMET's definitions.
"""

from __future__ import annotations

import copy
import doctest
import json
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import leantorch as lt
from leantorch.quant import encodings_blocks, encodings_fields, encodings_matching
from leantorch.quant.blocks import lpbq_compress
from leantorch.quant.encoding import same_encoding

V1, V2 = "1.0.0", "2.0.0"
CONV, FC = "0.weight", "3.weight"
LPBQ = {"plain": None, "lpbq": 8}


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(32, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 8)).eval()


def sim_for(net: nn.Module, block_size: int | None = 16, decompressed_bw: int | None = None) -> lt.QuantSim:
    """A W4 symmetric per-channel sim, blockwise when ``block_size`` is given (LPBQ with ``decompressed_bw``)."""
    config = {"per_channel": True, "param_symmetric": True}
    example = torch.randn(1, 32, 4, 4)
    return lt.QuantSim(
        net, example, param_bw=4, config=config, param_block_size=block_size, decompressed_bw=decompressed_bw
    )


def calibrated(net: nn.Module, block_size: int | None = 16, decompressed_bw: int | None = None) -> lt.QuantSim:
    sim = sim_for(net, block_size, decompressed_bw)
    torch.manual_seed(1)
    sim.compute_encodings([torch.randn(4, 32, 4, 4)], progress=False)
    return sim


def encodings(sim: lt.QuantSim) -> dict[str, Any]:
    return {n: q.encoding for n, q in sim.quantizers().items() if q.encoding is not None}


def assert_same_encodings(a: lt.QuantSim, b: lt.QuantSim) -> None:
    ours, theirs = encodings(a), encodings(b)
    assert ours.keys() == theirs.keys()
    for name, enc in ours.items():
        assert same_encoding(enc, theirs[name]), name


def items(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    listed = data.get("param_encodings", []) + data.get("activation_encodings", []) + data.get("encodings", [])
    return {i["name"]: i for i in listed}


def save(sim: lt.QuantSim, tmp_path, version: str, name: str = "model.encodings"):
    path = tmp_path / name
    sim.save_encodings(path, encodings_version=version)
    return path, json.loads(path.read_text())


def rewrite(tmp_path, data: dict[str, Any], name: str = "edited.encodings"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def net() -> nn.Module:
    return model()


# ------------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("lpbq", list(LPBQ))
@pytest.mark.parametrize("version", [V1, V2])
def test_blockwise_encodings_load_back_identical(tmp_path, net, version: str, lpbq: str) -> None:
    sim = calibrated(net, 16, LPBQ[lpbq])
    assert sim.param_quantizers()[CONV].is_blockwise and sim.param_quantizers()[FC].is_blockwise
    path, _ = save(sim, tmp_path, version)
    fresh = sim_for(net, 16, LPBQ[lpbq])
    fresh.load_encodings(path)
    assert_same_encodings(sim, fresh)
    x = torch.randn(2, 32, 4, 4)
    with torch.no_grad():
        assert torch.equal(sim.model(x), fresh.model(x))
    # and the file the fresh sim writes is the same file
    again = tmp_path / "again.encodings"
    fresh.save_encodings(again, encodings_version=version)
    assert json.loads(again.read_text()) == json.loads(path.read_text())


@pytest.mark.parametrize("version", [V1, V2])
def test_conv_transpose_blocks_its_first_axis(tmp_path, version: str) -> None:
    """ConvTranspose weights hold input channels first: 2.0.0 writes axis 0, 1.0.0 leaves it to the weight."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.ConvTranspose2d(32, 16, 2, stride=2), nn.ReLU(), nn.Conv2d(16, 8, 1)).eval()
    sim = calibrated(net, 16, decompressed_bw=8)
    assert sim.param_quantizers()[CONV].encoding.scale.shape == (16, 2)  # 16 output channels x 2 blocks
    path, data = save(sim, tmp_path, version)
    assert items(data)[CONV].get("axis", 0) == 0
    for block_size, decompressed_bw in ((16, 8), (None, None)):  # the same setting, or a per-channel sim adopting
        fresh = sim_for(net, block_size, decompressed_bw)
        fresh.load_encodings(path)
        assert_same_encodings(sim, fresh)


def test_per_block_items_are_aimets(tmp_path, net) -> None:
    sim = calibrated(net, 16)
    enc = sim.param_quantizers()[FC].encoding
    _, v1 = save(sim, tmp_path, V1, "v1.encodings")
    assert items(v1)[FC] == {
        "name": FC,
        "enc_type": "PER_BLOCK",
        "dtype": "INT",
        "bw": 4,
        "is_sym": True,
        "scale": enc.scale.reshape(-1).double().tolist(),  # channel-major
        "offset": [-8] * enc.scale.numel(),
        "block_size": 16,
    }
    _, v2 = save(sim, tmp_path, V2, "v2.encodings")
    assert items(v2)[FC] == {
        "name": FC,
        "output_dtype": "int4",
        "y_scale": enc.scale.double().tolist(),  # (C, n_blocks)
        "axis": 1,
        "block_size": 16,
    }
    assert torch.tensor(items(v2)[FC]["y_scale"]).shape == (8, 16)


def test_lpbq_items_are_aimets(tmp_path, net) -> None:
    sim = calibrated(net, 16, decompressed_bw=8)
    enc = sim.param_quantizers()[CONV].encoding
    floats, ints = lpbq_compress(enc.scale, 4, 8)
    assert int(ints.max()) == 16 and int(ints.min()) >= 1
    _, v1 = save(sim, tmp_path, V1, "v1.encodings")
    assert items(v1)[CONV] == {
        "name": CONV,
        "enc_type": "LPBQ",
        "dtype": "INT",
        "bw": 8,
        "is_sym": True,
        "scale": floats.double().tolist(),
        "offset": [-128] * 16,
        "compressed_bw": 4,
        "block_size": 16,
        "per_block_int_scale": ints.reshape(-1).tolist(),
    }
    _, v2 = save(sim, tmp_path, V2, "v2.encodings")
    assert items(v2)[CONV] == {
        "name": CONV,
        "output_dtype": "int4",
        "per_channel_float_scale": [[f] for f in floats.double().tolist()],
        "per_block_int_scale": ints.tolist(),
        "axis": 1,
        "block_size": 16,
    }


def test_hand_written_aimet_lpbq_item_loads_as_integer_times_float(tmp_path, net) -> None:
    sim = calibrated(net, 16, decompressed_bw=8)
    _, data = save(sim, tmp_path, V1)
    item = items(data)[CONV]
    floats = [0.001 * (c + 1) for c in range(16)]
    ints = [[16, 1 + c % 16] for c in range(16)]
    item.update(scale=floats, per_block_int_scale=[v for row in ints for v in row])
    sim.load_encodings(rewrite(tmp_path, data))
    got = sim.param_quantizers()[CONV].encoding
    want = torch.tensor(ints, dtype=torch.float32) * torch.tensor(floats, dtype=torch.float32)[:, None]
    assert torch.equal(got.scale, want) and got.decompressed_bw == 8 and got.block_size == 16


def test_blockwise_entries_come_through_the_export(tmp_path, net) -> None:
    sim = calibrated(net, 16, decompressed_bw=8)
    files = sim.export(tmp_path, "model", encodings_version=V1)
    data = json.loads(files["encodings"].read_text())
    assert {i["enc_type"] for i in data["param_encodings"]} == {"LPBQ"}
    fresh = sim_for(net, 16, decompressed_bw=8)
    fresh.load_encodings(files["encodings"])
    assert_same_encodings(sim, fresh)


# ------------------------------------------------------------------------------------------ versions and settings
def test_version_061_refuses_blocks_naming_the_fix(tmp_path, net) -> None:
    sim = calibrated(net, 16)
    with pytest.raises(lt.EncodingsFileError, match=r"'0\.weight' \(and 1 more\): .*version 0\.6\.1.*\"1\.0\.0\""):
        sim.save_encodings(tmp_path / "old.encodings", encodings_version="0.6.1")
    assert not (tmp_path / "old.encodings").exists()
    # a 0.6.1 file carrying leantorch's block keys is refused too
    entry = {"bitwidth": 4, "is_symmetric": "True", "scale": 0.5, "offset": -8, "min": -4.0, "max": 3.5}
    data = {"version": "0.6.1", "param_encodings": {CONV: [entry | {"block_size": 16}] * 32}}
    with pytest.raises(lt.EncodingsFileError, match=r"cannot be expressed in encodings version 0\.6\.1"):
        sim.load_encodings(rewrite(tmp_path, data), strict=False)


def test_lpbq_in_200_needs_twice_the_bits(tmp_path, net) -> None:
    sim = calibrated(net, 16, decompressed_bw=6)
    with pytest.raises(lt.EncodingsFileError, match=r"decompressed_bw=6: .*encodings_version='1\.0\.0'"):
        sim.save_encodings(tmp_path / "v2.encodings", encodings_version=V2)
    path, data = save(sim, tmp_path, V1)  # 1.0.0 carries it
    assert items(data)[CONV]["bw"] == 6 and items(data)[CONV]["compressed_bw"] == 4
    fresh = sim_for(net, 16, decompressed_bw=6)
    fresh.load_encodings(path)
    assert_same_encodings(sim, fresh)


@pytest.mark.parametrize("version", [V1, V2])
def test_per_channel_sim_adopts_blockwise_entries(tmp_path, net, version: str) -> None:
    """As a per-tensor weight quantizer adopts a per-channel entry, a per-channel one adopts a blockwise one."""
    sim = calibrated(net, 16, decompressed_bw=8)
    path, _ = save(sim, tmp_path, version)
    per_channel = sim_for(net, None)
    assert not per_channel.param_quantizers()[CONV].is_blockwise
    per_channel.load_encodings(path)
    assert per_channel.param_quantizers()[CONV].is_blockwise
    assert_same_encodings(sim, per_channel)


@pytest.mark.parametrize(
    "file_blocks,sim_blocks,message",
    [
        (
            (16, None),
            (8, None),
            r"file has blocks of 16 .* this sim quantizes it with blocks of 8 .*param_block_size=16",
        ),
        ((16, 8), (16, None), r"LPBQ decompressed_bw=8 for .* with blocks of 16 input channels along axis 1; build"),
        ((None, None), (16, None), r"per-channel encodings for 0\.weight but this sim quantizes it blockwise"),
    ],
    ids=["block size", "lpbq", "per channel into blockwise"],
)
@pytest.mark.parametrize("version", [V1, V2])
def test_other_block_settings_are_refused(tmp_path, net, version, file_blocks, sim_blocks, message) -> None:
    path, _ = save(calibrated(net, *file_blocks), tmp_path, version)
    target = calibrated(net, *sim_blocks)
    before = encodings(target)
    with pytest.raises(lt.EncodingsFileError, match=message):
        target.load_encodings(path)
    after = encodings(target)
    assert all(same_encoding(before[n], after[n]) for n in before)


# ------------------------------------------------------------------------------------------ bad entries
def at(name: str) -> Callable[[dict], dict]:
    return lambda data: items(data)[name]


def setting(name: str, **fields: Any) -> Callable[[dict], None]:
    return lambda data: at(name)(data).update(fields)


def in_list(name: str, field: str, index: int | tuple[int, int], value: Any) -> Callable[[dict], None]:
    row, col = index if isinstance(index, tuple) else (None, index)  # a nested 2.0.0 list, or a flat one
    return lambda data: (at(name)(data)[field] if row is None else at(name)(data)[field][row]).__setitem__(col, value)


BAD = {
    (V1, "plain", "scale zero in a block"): (in_list(FC, "scale", 5, 0.0), r"3\.weight'\] channel 5: scale=0\.0"),
    (V1, "plain", "scale nan"): (in_list(FC, "scale", 3, math.nan), r"channel 3: scale=nan"),
    (V1, "plain", "offset off the grid"): (in_list(FC, "offset", 2, -7), r"channel 2: offset=-7 is off the symmetric"),
    (V1, "plain", "scale missing"): (
        lambda d: [at(FC)(d)[f].pop() for f in ("scale", "offset")],
        r"the file has 127 block encodings but 3\.weight has 8 channels along axis 0 × 16 blocks of 16",
    ),
    (V1, "plain", "block size of another sim"): (
        setting(FC, block_size=12),
        r"file has blocks of 12 input channels for 3\.weight, but this sim quantizes it with blocks of 16 input "
        r"channels along axis 1; build the sim with param_block_size=12 \(as",
    ),
    (V1, "plain", "block size zero"): (setting(FC, block_size=0), r"block_size=0 must be an integer of at least 1"),
    (V1, "plain", "lpbq field on per block"): (setting(FC, compressed_bw=4), r"\['compressed_bw'\] given with"),
    (V1, "plain", "vector"): (setting(FC, enc_type="VECTOR"), r"enc_type='VECTOR' .*not supported yet"),
    (V1, "lpbq", "int scale zero"): (
        in_list(CONV, "per_block_int_scale", 3, 0),
        r"0\.weight'\] channel 1 block 1: per_block_int_scale=0 must be an integer in \[1, 16\]",
    ),
    (V1, "lpbq", "int scale 17"): (in_list(CONV, "per_block_int_scale", 0, 17), r"per_block_int_scale=17 must be"),
    (V1, "lpbq", "int scale fraction"): (in_list(CONV, "per_block_int_scale", 0, 2.5), r"per_block_int_scale=2\.5"),
    (V1, "lpbq", "float scale negative"): (
        in_list(CONV, "scale", 4, -0.1),
        r"channel 4: per_channel_float_scale=-0\.1 is not a valid scale",
    ),
    (V1, "lpbq", "ints missing"): (
        lambda d: at(CONV)(d)["per_block_int_scale"].pop(),
        r"31 per_block_int_scale values do not split into the 16 channels",
    ),
    (V1, "lpbq", "float scales missing"): (
        lambda d: [at(CONV)(d)[f].pop() for f in ("scale", "offset")],
        r"32 per_block_int_scale values do not split into the 15 channels of scale",
    ),
    (V1, "lpbq", "offset of the stored bits"): (setting(CONV, offset=[-8] * 16), r"offset=.*each -128"),
    (V1, "lpbq", "largest int below the top"): (
        lambda d: at(CONV)(d).update(per_block_int_scale=[8, 4] * 16),
        r"channel 0: the largest per_block_int_scale is 8, not 16",
    ),
    (V1, "lpbq", "compressed above bw"): (setting(CONV, compressed_bw=8), r"compressed_bw=8 must be below bw=8"),
    (V1, "lpbq", "asymmetric"): (setting(CONV, is_sym=False), r"is_sym=False: LPBQ encodings are symmetric"),
    (V2, "plain", "ragged y_scale"): (
        lambda d: at(FC)(d)["y_scale"][2].pop(),
        r"3\.weight'\]: y_scale=.* must be nested lists: one non-empty list per channel, all of one length",
    ),
    (V2, "plain", "y_scale inf"): (in_list(FC, "y_scale", (1, 2), math.inf), r"channel 1 block 2: y_scale=inf"),
    (V2, "plain", "no axis"): (lambda d: at(FC)(d).pop("axis"), r"missing field 'axis \(the block axis\)'"),
    (V2, "plain", "another block axis"): (setting(FC, axis=0), r"blocks of 16 input channels along axis 0 for"),
    (V2, "plain", "zero point shape"): (setting(FC, y_zero_point=[0] * 8), r"y_zero_point=.* must be nested lists"),
    (V2, "plain", "channels missing"): (
        lambda d: at(FC)(d)["y_scale"].pop(),
        r"the file has 112 block encodings \(16 per channel\) but 3\.weight has 8 channels",
    ),
    (V2, "lpbq", "int scale zero"): (
        in_list(CONV, "per_block_int_scale", (2, 0), 0),
        r"channel 2 block 0: per_block_int_scale=0",
    ),
    (V2, "lpbq", "uint"): (setting(CONV, output_dtype="uint4"), r"output_dtype='uint4': LPBQ weights are signed"),
    (V2, "lpbq", "zero point"): (
        setting(CONV, y_zero_point=[[1, 0]] * 16),
        r"y_zero_point=.*: LPBQ grids are symmetric",
    ),
    (V2, "lpbq", "float scales short"): (
        lambda d: at(CONV)(d)["per_channel_float_scale"].pop(),
        r"per_channel_float_scale=.* must hold one scale per channel of per_block_int_scale \(16\)",
    ),
    (V2, "lpbq", "float scale zero"): (
        setting(CONV, per_channel_float_scale=[[0.0]] * 16),
        r"channel 0: per_channel_float_scale=0\.0 is not a valid scale",
    ),
    (V2, "lpbq", "no block size"): (lambda d: at(CONV)(d).pop("block_size"), r"missing field\(s\) \['block_size'\]"),
}


@pytest.mark.parametrize("version,lpbq,case", list(BAD))
def test_bad_blockwise_entry_is_refused_and_nothing_changes(tmp_path, net, version, lpbq, case) -> None:
    mutate, message = BAD[version, lpbq, case]
    sim = calibrated(net, 16, LPBQ[lpbq])
    _, data = save(sim, tmp_path, version)
    data = copy.deepcopy(data)
    mutate(data)
    path = rewrite(tmp_path, data)
    target = calibrated(net, 16, LPBQ[lpbq])
    before = encodings(target)
    for load in (target.load_encodings, target.set_and_freeze_param_encodings):
        with pytest.raises(lt.EncodingsFileError, match=message):
            load(path)
    after = encodings(target)
    assert all(same_encoding(before[n], after[n]) for n in before)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("block_size", 12, r"3\.weight has 256 input channels along axis 1, which do not split into blocks of 12"),
        ("axis", 0, r"block axis 0 of 3\.weight \(shape \[8, 256\]\) is not an input-channel axis"),
        ("axis", 2, r"block axis 2 of 3\.weight \(shape \[8, 256\]\) is not an input-channel axis"),
        (
            "block_size",
            32,
            r"the file has 128 block encodings \(16 per channel\) but 3\.weight has 8 channels along "
            r"axis 0 × 8 blocks of 32",
        ),
    ],
)
def test_blocks_must_fit_the_weight_a_per_channel_sim_adopts(tmp_path, net, field, value, message) -> None:
    _, data = save(calibrated(net, 16), tmp_path, V2)
    items(data)[FC][field] = value
    target = calibrated(net, None)
    before = encodings(target)
    with pytest.raises(lt.EncodingsFileError, match=message):
        target.load_encodings(rewrite(tmp_path, data))
    after = encodings(target)
    assert all(same_encoding(before[n], after[n]) for n in before)


def test_activation_entries_cannot_be_blockwise(tmp_path, net) -> None:
    sim = calibrated(net, 16)
    _, data = save(sim, tmp_path, V1)
    act = data["activation_encodings"][0]
    act.update(enc_type="PER_BLOCK", block_size=4, scale=act["scale"] * 4, offset=act["offset"] * 4)
    with pytest.raises(lt.EncodingsFileError, match=r"is a weight encoding, but .* is an activation quantizer"):
        sim.load_encodings(rewrite(tmp_path, data))


def test_module_examples() -> None:
    for module in (encodings_blocks, encodings_fields, encodings_matching):
        result = doctest.testmod(module, extraglobs={"torch": torch}, optionflags=doctest.ELLIPSIS)
        assert result.attempted >= 3 and result.failed == 0, module.__name__
