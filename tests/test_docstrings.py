"""The examples in the docstrings run (the quick-start contract of every public function)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "leantorch.quant.encoding",
    "leantorch.quant.encodings_file",
    "leantorch.quant.estimators",
    "leantorch.quant.quantizer",
    "leantorch.quant.config",
    "leantorch.quant.wrapper",
    "leantorch.quant.sim",
    "leantorch.quant.qat",
    "leantorch.graph",
    "leantorch.ops",
    "leantorch.metrics",
    "leantorch.evaluation",
    "leantorch.data",
    "leantorch.cli",
    "leantorch.cli_args",
    "leantorch.errors",
    "leantorch.staging",
    "leantorch.paths",
    "leantorch.options",
    "leantorch.batches",
    "leantorch.ptq.bn_fold",
    "leantorch.ptq.cle",
    "leantorch.ptq.relu6",
    "leantorch.ptq.bias_correction",
    "leantorch.ptq.adaround",
    "leantorch.ptq.layer_rounding",
    "leantorch.ptq.input_moments",
    "leantorch.ptq.frontier",
    "leantorch.ptq.auto",
    "leantorch.models.resnet",
    "leantorch.models.transformer",
    "leantorch.models.digits",
    "leantorch.analysis.analyzer",
    "leantorch.analysis.report",
    "leantorch.analysis.html",
    "leantorch.compress.cost",
    "leantorch.compress.svd",
    "leantorch.compress.channel_pruning",
    "leantorch.compress.ratio_selection",
    "leantorch.compress.compressor",
    "leantorch.compress.report",
    "leantorch.sweep",
    "leantorch.parallel",
    "leantorch.distributed",
    "leantorch.quant.histogram",
    "leantorch.quant.range_search",
    "leantorch.compress.suffix_table",
    "leantorch.compress.pruning_pass",
    "leantorch.compress.stage",
]


def _all_modules() -> list[str]:
    """Every module of the package, so that a new module's examples run without being listed here."""
    import pkgutil

    import leantorch

    found = [m.name for m in pkgutil.walk_packages(leantorch.__path__, "leantorch.")]
    return sorted(set(found) - set(MODULES) - {"leantorch.__main__"})


@pytest.mark.parametrize("name", MODULES + _all_modules())
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(
        module, extraglobs={"torch": importlib.import_module("torch"), "nn": importlib.import_module("torch.nn")}
    )
    assert result.failed == 0
