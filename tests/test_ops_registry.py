"""The op registry (leantorch.ops) answers exactly what the per-op tables it replaced answered, has one
depthwise definition, and takes a new op type in one registration."""

from __future__ import annotations

import doctest
import importlib
import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import leantorch as lt
from leantorch import ops
from leantorch.compress.cost import COUNTED, cost, layer_macs
from leantorch.errors import ConfigError
from leantorch.graph import OP_TYPE_NAMES, PASSTHROUGH_TYPES, op_type
from leantorch.quant.config import PER_CHANNEL_AXIS, load_config

# The tables as they were written out before the registry (graph.py _OP_TYPES, PASSTHROUGH_TYPES,
# quant/config.py PER_CHANNEL_AXIS, compress/cost.py COUNTED): the expected values.
OLD_OP_TYPES = [
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d), "Conv"),
    ((nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), "ConvTranspose"),
    ((nn.Linear,), "Linear"),
    ((nn.modules.batchnorm._BatchNorm,), "BatchNorm"),
    ((nn.LayerNorm,), "LayerNorm"),
    ((nn.GroupNorm,), "GroupNorm"),
    ((nn.ReLU6,), "ReLU6"),
    ((nn.ReLU,), "ReLU"),
    ((ops.BoundedReLU,), "BoundedReLU"),
    ((nn.Hardtanh,), "Hardtanh"),
    ((nn.GELU,), "GELU"),
    ((nn.Sigmoid,), "Sigmoid"),
    ((nn.Tanh,), "Tanh"),
    ((nn.SiLU,), "SiLU"),
    ((nn.Hardswish,), "Hardswish"),
    ((nn.Hardsigmoid,), "Hardsigmoid"),
    ((nn.LeakyReLU, nn.PReLU), "LeakyReLU"),
    ((nn.ELU,), "ELU"),
    ((nn.Softmax, nn.LogSoftmax), "Softmax"),
    ((ops.Add,), "Add"),
    ((ops.Sub,), "Sub"),
    ((ops.Mul,), "Mul"),
    ((ops.Div,), "Div"),
    ((ops.MatMul,), "MatMul"),
    ((ops.Cat,), "Concat"),
    ((ops.Interpolate, nn.Upsample), "Interpolate"),
    ((ops.Mean,), "Mean"),
    ((nn.Flatten, nn.Unflatten), "Flatten"),
    ((ops.Pad, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d), "Pad"),
    ((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool2d), "MaxPool"),
    ((nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d), "AvgPool"),
    ((nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d), "Dropout"),
    ((nn.Identity,), "Identity"),
    ((nn.Embedding,), "Embedding"),
]
OLD_PASSTHROUGH = {"Flatten", "Pad", "MaxPool", "Dropout", "Identity"}
OLD_PER_CHANNEL_AXIS = {"Conv": 0, "Linear": 0, "ConvTranspose": 1}
# Op types registered since the tables were replaced (name → per-channel weight axis): not in the old tables.
NEW_OP_TYPES = {"LSTM": 0, "GRU": 0, "RNN": 0, "TransposedLinear": 1}
# The same, for new op types without a per-channel weight (attention: replaced/decomposed before tracing), and
# the new passthrough types and function targets among them.
NEW_OP_TYPES_WITHOUT_AXIS = {
    "MultiheadAttention",
    "TransformerEncoderLayer",
    "TransformerEncoder",
    "ScaledDotProductAttention",
    "AttentionMask",
    "FrozenBatchNorm",  # torchvision's, recognised by duck typing and replaced by a BatchNorm before tracing
}
NEW_PASSTHROUGH = {"AttentionMask"}
OLD_COUNTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)


def _old_op_type(module: nn.Module) -> str:
    for classes, name in OLD_OP_TYPES:
        if isinstance(module, classes):
            return name
    return "Unknown"


def _old_layer_macs(module: nn.Module, input_shape: tuple, output_shape: tuple) -> int:
    if isinstance(module, nn.Linear):
        rows = math.prod(output_shape[1:-1]) if len(output_shape) > 1 else 1
        return rows * module.in_features * module.out_features
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        kernel = math.prod(module.kernel_size)
        return module.in_channels * math.prod(input_shape[2:]) * (module.out_channels // module.groups) * kernel
    kernel = math.prod(module.kernel_size)
    return module.out_channels * math.prod(output_shape[2:]) * (module.in_channels // module.groups) * kernel


def _old_cle_depthwise(m: nn.Module) -> bool:  # ptq/cle.py before the registry
    return isinstance(m, nn.Conv2d) and m.groups == m.in_channels == m.out_channels and m.groups > 1


def _old_pruning_depthwise(m: nn.Module) -> bool:  # compress/channel_pruning.py before the registry
    return type(m) is nn.Conv2d and m.groups == m.in_channels == m.out_channels and m.groups > 1


class _SamePadConv(nn.Conv2d):
    """Like EfficientNet's Conv2dStaticSamePadding: a Conv2d subclass with its own forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, [1, 1, 1, 1]), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _every_old_class() -> list[type]:
    return [cls for classes, _ in OLD_OP_TYPES for cls in classes]


@pytest.mark.parametrize(
    "cls",
    _every_old_class()
    + [nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm, _SamePadConv, nn.LazyConv2d, nn.Module, nn.Sequential],
)
def test_op_type_matches_old_table(cls: type) -> None:
    module = cls.__new__(cls)  # no constructor arguments needed: lookup only looks at the class
    nn.Module.__init__(module)
    assert op_type(module) == _old_op_type(module)


def test_name_tables_match_old_tables() -> None:
    assert set(OP_TYPE_NAMES) == {name for _, name in OLD_OP_TYPES} | {"Unknown"} | set(NEW_OP_TYPES) | (
        NEW_OP_TYPES_WITHOUT_AXIS
    )
    assert set(PASSTHROUGH_TYPES) == OLD_PASSTHROUGH | NEW_PASSTHROUGH
    assert dict(PER_CHANNEL_AXIS) == OLD_PER_CHANNEL_AXIS | NEW_OP_TYPES
    # the cost model also counts the new TransposedLinear (GPT-2's Conv1D), right after Linear
    assert tuple(c for c in COUNTED if c is not ops.TransposedLinear) == OLD_COUNTED
    assert layer_macs(ops.TransposedLinear(torch.ones(3, 2), None), (4, 3), (4, 2)) == 6
    assert "Conv" in OP_TYPE_NAMES and "Nope" not in OP_TYPE_NAMES and "Unknown" in OP_TYPE_NAMES


def test_mac_formulas_match_old_cost_model() -> None:
    rng = random.Random(0)
    for _ in range(60):
        groups = rng.choice([1, 2, 4])
        cin, cout, k = groups * rng.randint(1, 4), groups * rng.randint(1, 4), rng.randint(1, 3)
        kind = rng.choice([nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d])
        layer = kind(cin, cout, k, groups=groups, stride=rng.randint(1, 2))
        x = torch.randn(1, cin, *[rng.randint(k, 7)] * (len(layer.kernel_size)))
        y = layer(x)
        assert layer_macs(layer, tuple(x.shape), tuple(y.shape)) == _old_layer_macs(
            layer, tuple(x.shape), tuple(y.shape)
        )
    for shape in [(2, 5), (2, 3, 5), (1, 2, 3, 5)]:
        layer = nn.Linear(5, 7)
        out = shape[:-1] + (7,)
        assert layer_macs(layer, shape, out) == _old_layer_macs(layer, shape, out)
    with pytest.raises(lt.CompressionError, match="no MAC formula for ReLU"):
        layer_macs(nn.ReLU(), (1, 2), (1, 2))


@pytest.mark.parametrize(
    "layer",
    [
        nn.Conv2d(8, 8, 3, groups=8),
        _SamePadConv(8, 8, 3, groups=8),
        nn.Conv2d(8, 16, 3, groups=8),
        nn.Conv2d(8, 8, 3, groups=4),
        nn.Conv2d(8, 8, 3),
        nn.Conv2d(1, 1, 3),
        nn.Conv1d(8, 8, 3, groups=8),
        nn.ConvTranspose2d(8, 8, 3, groups=8),
        nn.Linear(8, 8),
    ],
)
def test_one_depthwise_definition(layer: nn.Module) -> None:
    from leantorch.compress import channel_pruning
    from leantorch.ptq import cle

    assert ops.is_depthwise(layer) == _old_cle_depthwise(layer)
    assert cle._is_depthwise(layer) == _old_cle_depthwise(layer)
    assert channel_pruning._is_depthwise(layer) == _old_pruning_depthwise(layer)


def test_register_refuses_duplicates() -> None:
    with pytest.raises(ConfigError, match="already registered"):
        ops.register(ops.OpSpec("Conv", ()))
    with pytest.raises(ConfigError, match="already belong to op type 'Linear'"):
        ops.register(ops.OpSpec("MyLinear", (nn.Linear,)))


@pytest.mark.parametrize(
    "name",
    [
        "leantorch.ops.registry",
        "leantorch.ops.conv",
        "leantorch.ops.linear",
        "leantorch.ops.modules",
        "leantorch.ops.rules",
        "leantorch.ops",
    ],
)
def test_registry_docstrings(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), extraglobs={"torch": torch, "nn": nn})
    assert result.failed == 0


# --- A new op type is one registration: everything below the class is the whole "file" of the new op. ---


class ToyDense(nn.Module):
    """A custom weighted layer (not a torch.nn class): y = x @ weight.T * 2."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / n_in**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight) * 2


def _toy_macs(module: nn.Module, input_shape: tuple, output_shape: tuple) -> int:
    return math.prod(output_shape[1:-1]) * module.weight.shape[0] * module.weight.shape[1]


@pytest.fixture
def toy_op():
    spec = ops.register(ops.OpSpec("ToyDense", (ToyDense,), weight_axis=0, mac_count=_toy_macs))
    yield spec
    ops.unregister("ToyDense")


def test_new_op_in_one_registration(toy_op, tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), ToyDense(8, 4)).eval()
    x = torch.randn(16, 6)
    # recognised (kept opaque by tracing) and named in configs
    gm = lt.prepare(model, x)
    assert [op_type(m) for m in gm.children()] == ["Linear", "ReLU", "ToyDense"]
    assert "ToyDense" in OP_TYPE_NAMES and PER_CHANNEL_AXIS["ToyDense"] == 0
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"op_types": {"ToyDense": {"per_channel": True}}}))
    load_config(str(config))
    # cost-counted
    report = cost(model, x)
    assert report.layers["2"].macs == 8 * 4 and report.layers["2"].kind == "ToyDense"
    # quantized: its weight per output channel, its output on the grid
    sim = lt.QuantSim(model, x, per_channel=True)
    sim.compute_encodings([x])
    wrapper = sim.model.get_submodule("2")
    assert wrapper.op_type == "ToyDense"
    assert wrapper.param_quantizers["weight"].enabled and wrapper.param_quantizers["weight"].axis == 0
    assert wrapper.output_quantizers[0].enabled
    out = sim.model(x)
    assert torch.allclose(out, model(x), atol=0.1)
    # exported: ONNX + encodings naming its weight
    sim.export(tmp_path, "toy")
    assert (tmp_path / "toy.onnx").is_file()
    encodings = json.loads((tmp_path / "toy.encodings").read_text())
    assert "2.weight" in encodings["param_encodings"]
    assert len(encodings["param_encodings"]["2.weight"]) == 4  # one encoding per output channel


# --- Roles: the old predicates of CLE, bias correction and channel pruning, written out. ---


def _old_cle_scalable(m):
    return isinstance(m, nn.Linear) or (
        isinstance(m, (nn.Conv1d, nn.Conv2d)) and (m.groups == 1 or _old_cle_depthwise(m))
    )


def _old_relu6(m):
    return isinstance(m, nn.Hardtanh) and (m.min_val, m.max_val) == (0.0, 6.0)


def _old_cle_activation(m):
    return isinstance(m, (nn.ReLU, ops.BoundedReLU)) or _old_relu6(m)


def _old_equivariant(m):
    if _old_cle_activation(m) or isinstance(m, (nn.Identity, nn.Dropout, nn.MaxPool1d, nn.MaxPool2d, nn.ZeroPad2d)):
        return True
    if isinstance(m, (nn.ConstantPad1d, nn.ConstantPad2d)):
        return m.value == 0
    return isinstance(m, ops.Pad) and m.mode == "constant" and not m.value


def _old_zero_pads(m):
    return isinstance(m, (nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, ops.Pad))


def _old_bc_activation(m):
    return isinstance(m, (nn.ReLU, nn.ReLU6, ops.BoundedReLU))


def _old_bc_transparent(m):
    return isinstance(m, (nn.Identity, nn.Dropout))


_OLD_CHANNELWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.LeakyReLU,
    nn.ELU,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
    nn.ZeroPad2d,
    nn.ConstantPad2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
)

ROLE_MODULES = [
    nn.Conv1d(4, 4, 3),
    nn.Conv1d(4, 4, 3, groups=4),
    nn.Conv2d(4, 8, 3),
    nn.Conv2d(4, 4, 3, groups=4),
    nn.Conv2d(4, 8, 3, groups=2),
    _SamePadConv(4, 4, 3, groups=4),
    nn.Conv3d(2, 2, 1),
    nn.ConvTranspose2d(4, 4, 3),
    nn.Linear(3, 3),
    nn.Embedding(4, 2),
    nn.BatchNorm2d(4),
    nn.LayerNorm(4),
    nn.GroupNorm(2, 4),
    nn.ReLU(),
    nn.ReLU6(),
    nn.Hardtanh(),
    nn.Hardtanh(0.0, 6.0),
    nn.Hardtanh(0.0, 4.0),
    ops.BoundedReLU(torch.ones(4)),
    nn.GELU(),
    nn.SiLU(),
    nn.Sigmoid(),
    nn.Tanh(),
    nn.Hardswish(),
    nn.Hardsigmoid(),
    nn.LeakyReLU(),
    nn.PReLU(),
    nn.ELU(),
    nn.Softmax(1),
    nn.LogSoftmax(1),
    ops.Add(),
    ops.Sub(),
    ops.Mul(),
    ops.Div(),
    ops.MatMul(),
    ops.Cat(1),
    ops.Interpolate(scale_factor=2),
    nn.Upsample(scale_factor=2),
    ops.Mean(1),
    nn.Flatten(),
    nn.Unflatten(1, (2, 2)),
    nn.ZeroPad2d(1),
    nn.ConstantPad1d(1, 0.0),
    nn.ConstantPad1d(1, 2.0),
    nn.ConstantPad2d(1, 0.0),
    nn.ConstantPad2d(1, 1.0),
    nn.ConstantPad3d(1, 0.0),
    ops.Pad([1, 1]),
    ops.Pad([1, 1], value=1.0),
    ops.Pad([1, 1], mode="reflect"),
    nn.MaxPool1d(2),
    nn.MaxPool2d(2),
    nn.MaxPool3d(2),
    nn.AdaptiveMaxPool2d(1),
    nn.AvgPool1d(2),
    nn.AvgPool2d(2),
    nn.AvgPool3d(2),
    nn.AdaptiveAvgPool1d(1),
    nn.AdaptiveAvgPool2d(1),
    nn.Dropout(),
    nn.Dropout1d(),
    nn.Dropout2d(),
    nn.Dropout3d(),
    nn.Identity(),
    nn.Module(),
    nn.Sequential(),
]


@pytest.mark.parametrize("module", ROLE_MODULES, ids=lambda m: repr(m)[:40])
def test_roles_match_old_predicates(module: nn.Module) -> None:
    from leantorch.ptq import cle

    assert cle._is_scalable_layer(module) == _old_cle_scalable(module)
    assert cle._is_relu6(module) == _old_relu6(module)
    assert cle._is_activation(module) == _old_cle_activation(module)
    assert cle._scale_equivariant(module) == _old_equivariant(module)
    assert ops.has_role(module, "zero_pads") == _old_zero_pads(module)
    assert (ops.relu_upper(module) is not None) == _old_bc_activation(module)
    assert ops.has_role(module, "bc_transparent") == _old_bc_transparent(module)
    assert ops.has_role(module, "prune_channelwise") == isinstance(module, _OLD_CHANNELWISE)


def test_relu_upper_matches_old_bias_correction() -> None:
    mean = torch.randn(4, dtype=torch.float64)
    bounded = ops.BoundedReLU(torch.rand(4) + 1)
    for module, old in [
        (nn.ReLU(), torch.full_like(mean, math.inf)),
        (nn.ReLU6(), torch.full_like(mean, 6.0)),
        (bounded, bounded.upper.double()),
    ]:
        bound = ops.relu_upper(module)
        new = bound.double() if isinstance(bound, torch.Tensor) else torch.full_like(mean, bound)
        assert torch.equal(new, old)


def test_default_supergroups_match_old_config() -> None:
    from leantorch.quant.config import QuantSimConfig

    old = [["Conv", "BatchNorm"], ["ConvTranspose", "BatchNorm"], ["Linear", "BatchNorm"]]
    for act in ("ReLU", "ReLU6", "BoundedReLU"):
        old += [
            ["Conv", act],
            ["Conv", "BatchNorm", act],
            ["ConvTranspose", act],
            ["ConvTranspose", "BatchNorm", act],
            ["Linear", act],
            ["Add", act],
        ]
    assert ops.default_supergroups() == old
    assert QuantSimConfig().supergroups == old


# --- Recognition: the functional calls prepare() turns into op modules (graph_rewrite's old tables). ---

OLD_FUNCTION_TARGETS = {
    "operator.add",
    "torch.add",
    "operator.sub",
    "torch.sub",
    "operator.mul",
    "torch.mul",
    "operator.truediv",
    "torch.div",
    "operator.matmul",
    "torch.matmul",
    "torch.bmm",
    "torch.cat",
    "torch.concat",
    "F.relu",
    "torch.relu",
    "F.relu6",
    "F.hardtanh",
    "F.gelu",
    "torch.sigmoid",
    "F.sigmoid",
    "torch.tanh",
    "F.tanh",
    "F.silu",
    "F.hardswish",
    "F.hardsigmoid",
    "F.leaky_relu",
    "F.softmax",
    "torch.softmax",
    "F.interpolate",
    "torch.mean",
    "torch.flatten",
    "F.adaptive_avg_pool2d",
    "F.avg_pool2d",
    "F.max_pool2d",
    "F.pad",
}
OLD_METHODS = {"add", "sub", "mul", "div", "matmul", "relu", "sigmoid", "tanh", "softmax", "mean", "flatten"}

# (call, args, kwargs) → the module the old rules made (repr) and its tensor arguments, or None.
RULE_CASES = [
    ("operator.add", ("a", "b"), {}, "Add()", ("a", "b")),
    ("torch.add", ("a", "b"), {"alpha": 2}, None, None),
    ("torch.bmm", ("a", "b"), {}, "MatMul()", ("a", "b")),
    ("torch.cat", (["a", "b"], 1), {}, "Cat(dim=1)", ("a", "b")),
    ("torch.cat", ("a",), {}, None, None),
    ("F.relu", ("x",), {"inplace": True}, "ReLU()", ("x",)),
    ("F.relu", ("x",), {"other": 1}, None, None),
    ("F.hardtanh", ("x", 0.0, 6.0), {}, "ReLU6()", ("x",)),
    ("F.hardtanh", ("x",), {"max_val": 2.0}, "Hardtanh(min_val=-1.0, max_val=2.0)", ("x",)),
    ("F.gelu", ("x",), {"approximate": "tanh"}, "GELU(approximate='tanh')", ("x",)),
    ("F.leaky_relu", ("x", 0.2), {}, "LeakyReLU(negative_slope=0.2)", ("x",)),
    ("F.softmax", ("x",), {"dim": -1}, "Softmax(dim=-1)", ("x",)),
    ("F.softmax", ("x",), {}, None, None),
    ("torch.softmax", ("x", 1), {"dtype": torch.float64}, None, None),
    (
        "F.interpolate",
        ("x", None, 2.0),
        {"mode": "nearest"},
        "Interpolate(size=None, scale_factor=2.0, mode=nearest)",
        ("x",),
    ),
    ("torch.mean", ("x", (2, 3), True), {}, "Mean(dim=(2, 3), keepdim=True)", ("x",)),
    ("torch.mean", ("x",), {"dtype": torch.float64}, None, None),
    ("torch.flatten", ("x", 1), {}, "Flatten(start_dim=1, end_dim=-1)", ("x",)),
    ("F.adaptive_avg_pool2d", ("x", 1), {}, "AdaptiveAvgPool2d(output_size=1)", ("x",)),
    (
        "F.max_pool2d",
        ("x", 2),
        {"stride": 1},
        "MaxPool2d(kernel_size=2, stride=1, padding=0, dilation=1, ceil_mode=False)",
        ("x",),
    ),
    ("F.avg_pool2d", ("x", 3, 2, 1), {}, "AvgPool2d(kernel_size=3, stride=2, padding=1)", ("x",)),
    ("F.pad", ("x", [1, 1]), {"value": 0.5}, "Pad(pad=(1, 1), mode=constant)", ("x",)),
]


def _target(name: str):
    module, _, attr = name.partition(".")
    return getattr({"operator": __import__("operator"), "torch": torch, "F": F}[module], attr)


def test_function_and_method_tables_match_old_graph_rewrite() -> None:
    from leantorch.ops import registry
    from leantorch.ops.attention import attention_mask

    assert set(registry._FUNCTIONS) == {_target(n) for n in OLD_FUNCTION_TARGETS} | {attention_mask}
    assert set(registry._METHODS) == OLD_METHODS


@pytest.mark.parametrize("name,args,kwargs,module,tensor_args", RULE_CASES, ids=lambda c: str(c)[:30])
def test_function_rules_make_the_old_modules(name, args, kwargs, module, tensor_args) -> None:
    made = ops.function_rule(_target(name))(args, kwargs)
    if module is None:
        assert made is None
    else:
        assert (repr(made[0]), made[1]) == (module, tensor_args)


class _Softplus2(nn.Module):
    """A toy op quantized as its decomposition: log(1 + exp(2x)) / 2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(2 * x) / 2


class _Softplus2Decomposed(nn.Module):
    lt_traced_through = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.exp(x * 2) + 1) * 0.5


def _logaddexp_decomposed(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.maximum(x, y) + torch.log1p(torch.exp(-torch.abs(x - y)))


def test_replace_and_decomposition_hooks_trace_into_registered_ops() -> None:
    # A module type with `replace` is swapped before tracing and its decomposition traced into (so the
    # multiplication inside it becomes a Mul op with its own quantizers); a function with a decomposition is
    # traced as that decomposition. Both compute the same function; user leaf_modules stay untouched.
    ops.register(ops.OpSpec("Softplus2", (_Softplus2,), replace=lambda m: _Softplus2Decomposed()))
    ops.register(ops.OpSpec("LogAddExp", (), decompositions=((torch.logaddexp, _logaddexp_decomposed),)))
    try:

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.sp = _Softplus2()

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return torch.logaddexp(self.sp(x), x)

        x = torch.randn(4, 5)
        model = Net()
        gm = lt.prepare(model, x)
        assert type(model.sp) is _Softplus2  # the user's model is not modified
        assert torch.allclose(gm(x), model(x), atol=1e-6)
        targets = {n.target for n in gm.graph.nodes}
        assert torch.logaddexp not in targets and torch.maximum in targets
        types = {op_type(m) for m in gm.modules()}
        assert "Mul" in types and "Add" in types
        kept = lt.prepare(model, x, leaf_modules=["sp"])
        assert isinstance(kept.get_submodule("sp"), _Softplus2)
    finally:
        ops.unregister("Softplus2")
        ops.unregister("LogAddExp")


def test_bn_folding_patterns_derive_from_the_registry() -> None:
    from leantorch.ptq.bn_fold import _patterns

    # the tables bn_fold.py wrote out before the registry roles folds_bn_after / folds_bn_before
    assert sorted(_patterns(after=True)) == sorted(
        [["Conv", "BatchNorm"], ["Linear", "BatchNorm"], ["ConvTranspose", "BatchNorm"]]
    )
    assert sorted(_patterns(after=False)) == sorted([["BatchNorm", "Conv"], ["BatchNorm", "Linear"]])
