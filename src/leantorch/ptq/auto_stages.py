"""The stages :func:`~leantorch.ptq.auto.auto_quant` tries, as a registry: each stage turns a float model into the
candidate that is quantized and scored, and may hand over frozen weight encodings.

Built in (registered by :mod:`.auto`), in this order: ``bn_fold`` (fold BatchNorms), ``cle`` (BN fold +
cross-layer equalization), ``adaround`` (AdaRound on the CLE model), ``gptq`` (asymmetric GPTQ
on the CLE model: each layer fitted to the float model's outputs from the quantized model's inputs;
opt-in) and ``reconstruct`` (block reconstruction, BRECQ + QDrop, on the CLE model; opt-in: it costs many times
AdaRound's time). A new stage is one
:func:`register_stage` call; ``auto_quant`` runs the registered default stages in registration order unless told
otherwise (``stages=``), and the CLI's ``--auto-stages`` choices come from :func:`stage_names`.

Example:
    >>> import leantorch.ptq.auto  # registers the built-in stages
    >>> stage_names()
    ('bn_fold', 'cle', 'adaround', 'gptq', 'reconstruct')
    >>> default_stage_names()
    ('bn_fold', 'cle', 'adaround')
    >>> get_stage("cle").starts_from
    'float'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..registry import Registry
from .adaround import AdaroundConfig
from .block_reconstruction import BlockReconstructionConfig
from .gptq import GptqConfig

__all__ = ["StageContext", "AutoQuantStage", "register_stage", "stage_names", "default_stage_names", "get_stage"]


@dataclass(frozen=True)
class StageContext:
    """What a stage may use: the example input, the calibration batches and the AdaRound, block reconstruction and
    GPTQ options (auto_quant's bitwidths, scheme, config and path already in them)."""

    example_input: Any
    calibration: Iterable[Any]
    adaround: AdaroundConfig
    reconstruct: BlockReconstructionConfig = BlockReconstructionConfig()
    gptq: GptqConfig = GptqConfig(asymmetric=True)


#: ``build(start_model, context) -> (candidate float model, frozen weight encodings file or None)``.
BuildStage = Callable[[nn.Module, StageContext], "tuple[nn.Module, Path | None]"]


@dataclass(frozen=True)
class AutoQuantStage:
    """One auto_quant stage.

    Attributes:
        name: the stage's name (results table, ``stages=``, CLI).
        build: makes the candidate from the model of stage ``starts_from``.
        starts_from: ``"float"`` (the user's model) or the name of an earlier stage whose candidate it refines
            (used when that stage ran before it; the float model otherwise).
        default: run when ``auto_quant`` is not told which stages (``stages=None``).
        activation_encodings: the stage's encodings file also holds activation encodings to keep (learned
            step sizes): auto_quant loads the whole file frozen instead of recalibrating the activations.
    """

    name: str
    build: BuildStage
    starts_from: str = "float"
    default: bool = True
    activation_encodings: bool = False


_STAGES: Registry[AutoQuantStage] = Registry("auto_quant stage", "auto_quant stage")


def register_stage(stage: AutoQuantStage) -> AutoQuantStage:
    """Add a stage (after the existing ones); raises :class:`ConfigError` if the name is taken."""
    if stage.starts_from != "float" and stage.starts_from not in _STAGES:
        raise ConfigError(
            f"auto_quant stage {stage.name!r} starts from {stage.starts_from!r}, which is not registered before it"
        )
    if stage.name == "float":
        raise ConfigError("'float' names the user's model in auto_quant's table: pick another stage name")
    return _STAGES.add(stage.name, stage)


def unregister_stage(name: str) -> None:
    """Remove a stage (tests add toy stages and take them away again)."""
    _STAGES.remove(name)


def stage_names() -> tuple[str, ...]:
    """The registered stage names, in the order auto_quant runs them."""
    return _STAGES.names()


def default_stage_names() -> tuple[str, ...]:
    """The stages auto_quant runs when not told which, in order."""
    return tuple(name for name in _STAGES.names() if _STAGES.get(name).default)


def get_stage(name: str) -> AutoQuantStage:
    """The stage called ``name``; :class:`InvalidOptionError` listing the stages otherwise."""
    return _STAGES.get(name)
