"""QuantSim configs: which tensors are quantized, how, and which ops form supergroups.

A config is a dataclass, loadable from and savable to JSON. Op type names are those of
:func:`leantorch.graph.op_type` (``Conv``, ``Linear``, ``ReLU6``, ``Add``, ``MatMul``...).

JSON example (every key optional; missing keys keep the defaults below)::

    {
      "output_quantized": true, "params_quantized": true, "param_symmetric": true,
      "activation_symmetric": false, "per_channel": false, "model_input_quantized": true,
      "op_types": {"Softmax": {"output_quantized": true, "act_bw": 16}, "Dropout": {"output_quantized": false}},
      "layers": {"conv_stem": {"param_bw": 8}, "classifier": {"param_bw": 8}},
      "supergroups": [["Conv", "BatchNorm", "ReLU"], ["Add", "ReLU"]]
    }

An op rule's ``act_bw`` gives that op type's activation quantizers their own bitwidth (16-bit softmax
outputs in an otherwise 8-bit model); the ``transformer`` preset uses it (:meth:`QuantSimConfig.preset`).
``param_bw`` does the same for weights. ``layers`` holds rules for single layers by name, over their op type's
rule: the usual "first and last layer at 8 bits" of a W4 model. A name that is not a layer of the model is
refused when the QuantSim is built. ``param_block_size`` and ``decompressed_bw`` (LPBQ; 0: none) work per op
type or layer the same way; on a sim with LPBQ, a layer kept at 8 bits needs ``"decompressed_bw": 0``.

Supergroups model runtimes that fuse a chain (Conv+BN+ReLU runs as one kernel): inside a chain only the
last output is quantized.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InvalidOptionError
from ..ops import WEIGHT_AXES, default_supergroups, specs
from ..options import short_repr
from .blocks import check_block_size
from .config_checks import BOOL_KEYS, check_block_count, check_bool, check_op_type, check_rule, check_rule_bitwidth
from .encoding import check_bitwidth

__all__ = [
    "PER_CHANNEL_AXIS",
    "TRANSFORMER_ACT_BW",
    "OpRule",
    "ResolvedRule",
    "QuantSimConfig",
    "load_config",
    "merged_rule",
]

#: Op types whose ``weight`` may be quantized per output channel, with the channel axis of the weight
#: (each op's ``OpSpec.weight_axis``; a live view of the op registry).
PER_CHANNEL_AXIS = WEIGHT_AXES

#: The ``transformer`` preset's activation bitwidths per op type (the rest use QuantSim's ``act_bw``).
#: Linear outputs (a BERT FFN's output projection reaches 100-200 against a typical 1-5), LayerNorm outputs
#: and the residual stream (``Add``) carry a few huge outlier channels and softmax outputs need resolution
#: near 0: an 8-bit grid over their range flattens most of the values. On the real all-MiniLM-L6-v2
#: (``benchmarks/minilm.py``) the Linear outputs dominate the error of 8-bit activations. ``Concat`` starts a
#: ViT's residual stream: it joins the class (and DeiT's distillation) token, small, to the patch embeddings,
#: large; an 8-bit grid over both rounds the class token that the classifier reads (``benchmarks/vit.py``:
#: ViT-tiny logits 16 dB with it at 8 bits, 30 dB at 16).
TRANSFORMER_ACT_BW: dict[str, int] = {"Linear": 16, "LayerNorm": 16, "Softmax": 16, "Add": 16, "Concat": 16}


@dataclass
class OpRule:
    """Overrides for one op type (``op_types``) or one layer (``layers``); None means "use the default" (for a
    layer: its op type's rule, then the config-wide default)."""

    input_quantized: bool | None = None
    output_quantized: bool | None = None
    params_quantized: bool | None = None
    per_channel: bool | None = None
    #: Bitwidth of this op type's activation quantizers (outputs, inputs, inner) instead of QuantSim's
    #: ``act_bw`` (2–16, or 32 to keep them float); None: ``act_bw``.
    act_bw: int | None = None
    #: Bitwidth of the weights instead of QuantSim's ``param_bw`` (2–16, or 32 to keep them float); None:
    #: ``param_bw``. Per layer it keeps, say, the first conv and the classifier at 8 bits in a W4 model.
    param_bw: int | None = None
    #: Input channels per weight block (blockwise weights) for this op type; 0: per channel; None: the config's.
    param_block_size: int | None = None
    #: LPBQ's decompressed bitwidth for these blockwise weights; 0: float block scales (no LPBQ), e.g. for a layer
    #: kept at 8 bits on a sim with ``decompressed_bw=8``; None: the config's.
    decompressed_bw: int | None = None
    #: A float format for this op type's weights and activations (float16, bfloat16, float8_e4m3fn, float8_e5m2).
    float_format: str | None = None


@dataclass(frozen=True)
class ResolvedRule:
    """What a layer of some op type gets after defaults and overrides are combined."""

    input_quantized: bool
    output_quantized: bool
    params_quantized: bool
    per_channel: bool
    act_bw: int | None = None
    param_bw: int | None = None
    param_block_size: int | None = None
    decompressed_bw: int | None = None
    float_format: str | None = None


def merged_rule(base: OpRule, top: OpRule) -> OpRule:
    """``top``'s settings where it has them, ``base``'s elsewhere.

    Example:
        >>> merged_rule(OpRule(per_channel=True, param_bw=8), OpRule(param_bw=4)).param_bw
        4
    """
    return OpRule(
        **{f.name: getattr(base, f.name) if getattr(top, f.name) is None else getattr(top, f.name) for f in fields(top)}
    )


def _rules(key: str, what: str, value: Any, example: str) -> dict[str, OpRule]:
    """A JSON object of ``what`` → rule as OpRules; the value types are checked by ``validate``."""
    if not isinstance(value, dict):
        raise ConfigError(
            f"config key {key!r} is {short_repr(value)} (a {type(value).__name__}); it must be an object of {what} → "
            f"rule, e.g. {example}"
        )
    rule_fields = {f.name for f in fields(OpRule)}
    for name, rule in value.items():
        bad = sorted(set(rule) - rule_fields, key=str) if isinstance(rule, dict) else None
        if bad is None or bad:
            raise ConfigError(
                f"bad {key} entry {name!r}: {short_repr(rule)}; a rule is an object with keys from "
                f"{sorted(rule_fields)} (true, false or null each; act_bw and param_bw a bitwidth or null)"
            )
    return {str(k): OpRule(**v) for k, v in value.items()}


def _default_supergroups() -> list[list[str]]:
    # Each op's OpSpec.supergroups (Conv→BN→ReLU ...), expanded over the fusable activations.
    return default_supergroups()


def _default_op_types() -> dict[str, OpRule]:
    # Passthrough ops keep their input's grid (no output quantizer); ops whose parameters are not weights
    # (BatchNorm) keep them float.
    return {
        s.name: OpRule(
            output_quantized=False if s.passthrough else None, params_quantized=None if s.params_quantized else False
        )
        for s in specs()
        if s.passthrough or not s.params_quantized
    }


@dataclass
class QuantSimConfig:
    """Which tensors QuantSim quantizes. See the module docstring for the JSON form.

    Example:
        >>> cfg = QuantSimConfig.preset("per_channel")
        >>> cfg.rule("Conv").per_channel, cfg.rule("Flatten").output_quantized
        (True, False)
    """

    name: str = "custom"
    output_quantized: bool = True
    input_quantized: bool = False
    params_quantized: bool = True
    quantize_bias: bool = False
    param_symmetric: bool = True
    activation_symmetric: bool = False
    unsigned_symmetric: bool = True
    per_channel: bool = False
    #: Blockwise weights: one scale per block of this many input channels of each output channel (None: off).
    param_block_size: int | None = None
    #: LPBQ: block scales are integers in [1, 2**(decompressed_bw - param_bw)] times a float per channel.
    decompressed_bw: int | None = None
    model_input_quantized: bool = True
    op_types: dict[str, OpRule] = field(default_factory=_default_op_types)
    #: Rules for single layers by name (as in ``QuantSim.layers()``), over their op type's rule.
    layers: dict[str, OpRule] = field(default_factory=dict)
    supergroups: list[list[str]] = field(default_factory=_default_supergroups)

    def rule(self, op_type: str, layer: str | None = None) -> ResolvedRule:
        """Settings for layers of ``op_type``; with ``layer``, that layer's own rule (:attr:`layers`) goes on top.

        Example:
            >>> cfg = QuantSimConfig(layers={"stem": OpRule(param_bw=8)})
            >>> cfg.rule("Conv", "stem").param_bw, cfg.rule("Conv", "head").param_bw
            (8, None)
        """
        over = merged_rule(self.op_types.get(op_type, OpRule()), self.layers.get(layer or "", OpRule()))

        def pick(value: bool | None, default: bool) -> bool:
            return default if value is None else value

        weighted = op_type in PER_CHANNEL_AXIS
        block = (over.param_block_size if over.param_block_size is not None else self.param_block_size) or None
        # The config-wide LPBQ covers the blockwise weights (a layer made per channel leaves it); a rule's own
        # decompressed_bw always holds, so that asking for LPBQ without blocks is refused rather than ignored.
        lpbq = over.decompressed_bw if over.decompressed_bw is not None else (self.decompressed_bw if block else None)
        return ResolvedRule(
            input_quantized=pick(over.input_quantized, self.input_quantized),
            output_quantized=pick(over.output_quantized, self.output_quantized),
            params_quantized=pick(over.params_quantized, self.params_quantized),
            per_channel=pick(over.per_channel, self.per_channel) and weighted,
            act_bw=over.act_bw,
            param_bw=over.param_bw,
            param_block_size=block if weighted else None,
            decompressed_bw=(lpbq or None) if weighted else None,
            float_format=over.float_format,
        )

    @classmethod
    def preset(cls, name: str) -> QuantSimConfig:
        """``default`` (per-tensor everywhere), ``per_channel`` (per-channel weights) or ``transformer``.

        ``transformer``: per-channel weights (at ``param_bw``, every weight, embeddings included) and
        16-bit activations where 8 bits lose a transformer's accuracy: the outputs of LayerNorm, Softmax
        and the residual ``Add``, of Linear, and of ``Concat`` (a ViT's class token joining the patch
        embeddings; see :data:`TRANSFORMER_ACT_BW`); every other activation
        (GELU, MatMul, Mul, Embedding outputs, model inputs) at ``act_bw``.

        Example:
            >>> QuantSimConfig.preset("transformer").rule("LayerNorm").act_bw
            16
        """
        if name == "default":
            return cls(name="default")
        if name == "per_channel":
            return cls(name="per_channel", per_channel=True)
        if name == "transformer":
            cfg = cls(name="transformer", per_channel=True)
            for op, bw in TRANSFORMER_ACT_BW.items():
                rule = cfg.op_types.setdefault(op, OpRule())
                rule.act_bw = bw
            return cfg
        raise ConfigError(
            f"unknown config preset {name!r}; use 'default', 'per_channel', 'transformer' or a JSON file path"
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantSimConfig:
        """Build from a dict (as read from JSON); unknown keys and wrongly typed values raise ConfigError.

        Example:
            >>> QuantSimConfig.from_dict({"param_symmetric": "False"})  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            leantorch.errors.ConfigError: config key 'param_symmetric' is 'False' (a str); it must be true or false...
        """
        if not isinstance(data, dict):
            raise ConfigError(
                f"a config must be an object of settings (a dict; in JSON {{...}}), got "
                f'{type(data).__name__} {short_repr(data)}; e.g. {{"per_channel": true}}'
            )
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown, key=str)}; known keys: {sorted(known)}")
        data = dict(data)
        cfg = cls()
        op_types, layers = data.pop("op_types", None), data.pop("layers", None)
        for key, value in data.items():
            setattr(cfg, key, value)
        if op_types is not None:
            cfg.op_types.update(_rules("op_types", "op type", op_types, '{"Softmax": {"output_quantized": true}}'))
        if layers is not None:
            cfg.layers = _rules("layers", "layer name", layers, '{"conv1": {"param_bw": 8}}')
        cfg.validate()
        return cfg

    def validate(self) -> QuantSimConfig:
        """Check every value's type (and op type names); returns ``self``.

        Raises:
            ConfigError: names the key, the value and the expected type.
        """
        for key in BOOL_KEYS:
            check_bool(key, getattr(self, key))
        if not isinstance(self.name, str):
            raise ConfigError(
                f"config key 'name' is {short_repr(self.name)} (a {type(self.name).__name__}); it must be a string"
            )
        if not isinstance(self.op_types, dict):
            raise ConfigError(
                f"config key 'op_types' is {short_repr(self.op_types)}; it must map op type names to rules"
            )
        for op, rule in self.op_types.items():
            check_op_type(op, "op_types")
            if not isinstance(rule, OpRule):
                raise ConfigError(f"op_types[{op!r}] is {short_repr(rule)}; it must be an OpRule (in JSON an object)")
            check_rule(f"op_types.{op}", rule)
        if not isinstance(self.layers, dict):
            raise ConfigError(f"config key 'layers' is {short_repr(self.layers)}; it must map layer names to rules")
        for name, rule in self.layers.items():
            if not isinstance(name, str) or not isinstance(rule, OpRule):
                raise ConfigError(
                    f"layers[{name!r}] is {short_repr(rule)}; it must be an OpRule (in JSON an object) under a "
                    "layer name"
                )
            check_rule(f"layers.{name}", rule)
        check_block_count("param_block_size", self.param_block_size)
        check_rule_bitwidth("decompressed_bw", self.decompressed_bw)
        groups = self.supergroups
        if not isinstance(groups, list) or not all(isinstance(g, list) and g for g in groups):
            raise ConfigError(
                f"config key 'supergroups' is {short_repr(groups)}; it must be a list of non-empty lists "
                'of op type names, e.g. [["Conv", "BatchNorm", "ReLU"], ["Add", "ReLU"]]'
            )
        for group in groups:
            for op in group:
                check_op_type(op, f"supergroup {group}")
        return self

    @classmethod
    def from_json(cls, path: str | Path) -> QuantSimConfig:
        """Load a config file (a JSON object; see the module docstring)."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(
                f"config {path} holds {type(data).__name__} {short_repr(data)} at its top level; a "
                'config file is a JSON object of settings, e.g. {"per_channel": true}'
            )
        cfg = cls.from_dict(data)
        if "name" not in data:
            cfg.name = Path(path).stem
        return cfg

    def with_blocks(self, block_size: int | None, decompressed_bw: int | None, param_bw: int) -> QuantSimConfig:
        """Set blockwise weights (and LPBQ) from QuantSim's arguments (None keeps the config's); returns ``self``.

        Raises:
            InvalidOptionError: a block size that is not a positive int; ``decompressed_bw`` without blocks, not
                above ``param_bw`` or with asymmetric weights (LPBQ grids are symmetric).

        Example:
            >>> QuantSimConfig().with_blocks(32, 8, param_bw=4).rule("Linear").param_block_size
            32
        """
        if block_size is not None:
            self.param_block_size = check_block_size(block_size)
        if decompressed_bw is not None:
            self.decompressed_bw = check_bitwidth(decompressed_bw, "decompressed_bw")
        if self.decompressed_bw is not None:
            if not self.param_block_size or self.decompressed_bw <= param_bw or not self.param_symmetric:
                raise InvalidOptionError(
                    f"decompressed_bw={self.decompressed_bw} (LPBQ) needs blockwise weights (param_block_size), "
                    f"symmetric weights and a bitwidth above param_bw={param_bw}, e.g. param_bw=4, "
                    "param_block_size=32, decompressed_bw=8"
                )
        return self

    def to_json(self, path: str | Path) -> None:
        """Write the config as JSON (loadable with :meth:`from_json`)."""
        Path(path).write_text(json.dumps(asdict(self), indent=2))


def load_config(config: str | Path | QuantSimConfig | dict[str, Any]) -> QuantSimConfig:
    """A config from a preset name, a JSON path, a dict, or a config (copied).

    Example:
        >>> load_config("default").per_channel
        False
    """
    if isinstance(config, QuantSimConfig):
        return copy.deepcopy(config).validate()
    if isinstance(config, dict):
        return QuantSimConfig.from_dict(config)
    if isinstance(config, Path) or str(config).endswith(".json"):
        return QuantSimConfig.from_json(config)
    return QuantSimConfig.preset(str(config))
