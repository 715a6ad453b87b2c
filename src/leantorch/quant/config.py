"""QuantSim configs: which tensors are quantized, how, and which ops form supergroups.

A config is a dataclass, loadable from and savable to JSON. Op type names are those of
:func:`leantorch.graph.op_type` (``Conv``, ``Linear``, ``ReLU6``, ``Add``, ``MatMul``...).

JSON example (every key optional; missing keys keep the defaults below)::

    {
      "output_quantized": true, "params_quantized": true, "param_symmetric": true,
      "activation_symmetric": false, "per_channel": false, "model_input_quantized": true,
      "op_types": {"Softmax": {"output_quantized": true}, "Dropout": {"output_quantized": false}},
      "supergroups": [["Conv", "BatchNorm", "ReLU"], ["Add", "ReLU"]]
    }

Supergroups model runtimes that fuse a chain (Conv+BN+ReLU runs as one kernel): inside a chain only the
last output is quantized.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..graph import PASSTHROUGH_TYPES

#: Op types whose ``weight`` may be quantized per output channel, with the channel axis of the weight.
PER_CHANNEL_AXIS = {"Conv": 0, "Linear": 0, "ConvTranspose": 1}


@dataclass
class OpRule:
    """Overrides for one op type; None means "use the config-wide default"."""

    input_quantized: bool | None = None
    output_quantized: bool | None = None
    params_quantized: bool | None = None
    per_channel: bool | None = None


@dataclass(frozen=True)
class ResolvedRule:
    """What a layer of some op type gets after defaults and overrides are combined."""

    input_quantized: bool
    output_quantized: bool
    params_quantized: bool
    per_channel: bool


def _default_supergroups() -> list[list[str]]:
    groups = [["Conv", "BatchNorm"], ["ConvTranspose", "BatchNorm"], ["Linear", "BatchNorm"]]
    for act in ("ReLU", "ReLU6", "BoundedReLU"):
        groups += [["Conv", act], ["Conv", "BatchNorm", act], ["ConvTranspose", act],
                   ["ConvTranspose", "BatchNorm", act], ["Linear", act], ["Add", act]]
    return groups


def _default_op_types() -> dict[str, OpRule]:
    rules = {name: OpRule(output_quantized=False) for name in PASSTHROUGH_TYPES}
    # BatchNorm statistics are folded into the conv before deployment; their affine is not a weight.
    rules["BatchNorm"] = OpRule(params_quantized=False)
    return rules


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
    model_input_quantized: bool = True
    op_types: dict[str, OpRule] = field(default_factory=_default_op_types)
    supergroups: list[list[str]] = field(default_factory=_default_supergroups)

    def rule(self, op_type: str) -> ResolvedRule:
        """Settings for layers of ``op_type``."""
        over = self.op_types.get(op_type, OpRule())
        pick = lambda value, default: default if value is None else value  # noqa: E731
        return ResolvedRule(
            input_quantized=pick(over.input_quantized, self.input_quantized),
            output_quantized=pick(over.output_quantized, self.output_quantized),
            params_quantized=pick(over.params_quantized, self.params_quantized),
            per_channel=pick(over.per_channel, self.per_channel) and op_type in PER_CHANNEL_AXIS,
        )

    @classmethod
    def preset(cls, name: str) -> "QuantSimConfig":
        """``default`` (per-tensor everywhere) or ``per_channel`` (per-channel weights)."""
        if name == "default":
            return cls(name="default")
        if name == "per_channel":
            return cls(name="per_channel", per_channel=True)
        raise ConfigError(f"unknown config preset {name!r}; use 'default', 'per_channel' or a JSON file path")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QuantSimConfig":
        """Build from a dict (as read from JSON); unknown keys raise ConfigError."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}; known keys: {sorted(known)}")
        data = dict(data)
        cfg = cls()
        op_types = data.pop("op_types", None)
        for key, value in data.items():
            setattr(cfg, key, value)
        if op_types is not None:
            try:
                cfg.op_types.update({k: OpRule(**v) for k, v in op_types.items()})
            except TypeError as exc:
                raise ConfigError(f"bad op_types entry: {exc}") from exc
        return cfg

    @classmethod
    def from_json(cls, path: str | Path) -> "QuantSimConfig":
        """Load a config file."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        cfg = cls.from_dict(data)
        if "name" not in data:
            cfg.name = Path(path).stem
        return cfg

    def to_json(self, path: str | Path) -> None:
        """Write the config as JSON (loadable with :meth:`from_json`)."""
        Path(path).write_text(json.dumps(asdict(self), indent=2))


def load_config(config: "str | Path | QuantSimConfig | dict[str, Any]") -> QuantSimConfig:
    """A config from a preset name, a JSON path, a dict, or a config (copied).

    Example:
        >>> load_config("default").per_channel
        False
    """
    if isinstance(config, QuantSimConfig):
        return copy.deepcopy(config)
    if isinstance(config, dict):
        return QuantSimConfig.from_dict(config)
    if isinstance(config, Path) or str(config).endswith(".json"):
        return QuantSimConfig.from_json(config)
    return QuantSimConfig.preset(str(config))
