"""Bad-input survey: ~300 bad or unusual inputs through the Python API and the CLI, as a new user would.

Each case declares what it expects (one or more leantorch error classes, and/or ``"ok"`` when the input is
unusual but valid) and its outcome is classified as exactly one of:

- ``typed clear``      raised a LeanTorchError of an expected class (CLI: exit 2, one ``error:`` line naming
                       the argument, no traceback),
- ``typed misleading`` raised a LeanTorchError of another class (it blames the wrong cause; CLI: exit 2
                       without a traceback but the message does not name the argument or spans lines),
- ``generic``          raised a non-leantorch exception (CLI: a traceback, exit 1 or another exit code),
- ``silent``           no error where one was due, a wrong/NaN result for a valid input, the sim left with
                       NaN after an error, or (CLI) a failed command that left files in its output,
- ``hang``             did not finish within ``--timeout`` seconds,
- ``ok``               a valid input handled correctly.

Besides, every API case checks that the user's model was never modified (state_dict compare): ``mutated``.

Cases run one at a time, each in a forked child (killed after ``--timeout``), so a crash, a hang or global
state left behind cannot spill into the next case. CLI cases call ``leantorch.cli.main(argv)`` in a forked
child by default (``--cli-mode subprocess`` runs ``python -c 'from leantorch.cli import main; ...'``
instead, slower but a fresh interpreter each). The script imports ``leantorch``, so point PYTHONPATH at
another source tree to measure it::

    PYTHONPATH=/tmp/before/src .venv/bin/python benchmarks/bad_inputs.py --details /tmp/before_details.md

Prints a markdown table (input class x outcome) to stdout; the per-case list goes to ``--details``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import contextlib
import io
import json
import math
import multiprocessing as mp
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import leantorch as lt
import leantorch.models as ltm

OK = "ok"
OUTCOMES = ["typed clear", "typed misleading", "generic", "silent", "hang", "ok"]

# --------------------------------------------------------------------------------------------- registry


@dataclass
class Case:
    group: str
    name: str
    expect: tuple[str, ...]  # error class names and/or "ok"
    fn: Callable[[Ctx], str | None] | None = None  # API case: returns None if correct, else a problem
    cli: dict[str, Any] | None = None  # CLI case: argv, names, setup, expect_files


CASES: list[Case] = []


def add(group: str, name: str, expect: str | tuple[str, ...], fn: Callable[[Ctx], str | None]) -> None:
    CASES.append(Case(group, name, (expect,) if isinstance(expect, str) else tuple(expect), fn=fn))


def add_cli(
    group: str,
    name: str,
    argv: list[str],
    names: list[str] | None = None,
    setup: Callable[[Path], None] | None = None,
    expect_files: list[str] | None = None,
) -> None:
    """``names``: substrings the error must mention (the argument); None means the input is valid."""
    expect = (OK,) if names is None else ("exit 2",)
    CASES.append(
        Case(
            group,
            name,
            expect,
            cli={"argv": argv, "names": names or [], "setup": setup, "expect_files": expect_files or []},
        )
    )


def error_class(name: str) -> type | None:
    """The leantorch exception class called ``name`` in this version of leantorch (None if it has none)."""
    for where in (
        "leantorch",
        "leantorch.errors",
        "leantorch.compress",
        "leantorch.ptq.auto",
        "leantorch.quant.qat",
        "leantorch.compress.ratio_selection",
    ):
        module = sys.modules.get(where)
        cls = getattr(module, name, None) if module is not None else None
        if isinstance(cls, type) and issubclass(cls, BaseException):
            return cls
    return None


# --------------------------------------------------------------------------------------------- helpers


class Ctx:
    """What a case may use: a private temp dir, model tracking (mutation check), post-checks."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.tracked: list[tuple[str, nn.Module, dict[str, torch.Tensor], bool]] = []
        self.checks: list[Callable[[], str | None]] = []

    def track(self, model: nn.Module, label: str = "model") -> nn.Module:
        self.tracked.append((label, model, snapshot(model), model.training))
        return model

    def after(self, check: Callable[[], str | None]) -> None:
        """A check run after the case whether or not it raised; a problem makes the outcome silent."""
        self.checks.append(check)

    def mutations(self) -> list[str]:
        out = []
        for label, model, before, _training in self.tracked:
            diff = state_diff(before, snapshot(model))
            if diff:
                out.append(f"{label}: {diff}")
        return out


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def state_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> str:
    if a.keys() != b.keys():
        return f"state_dict keys changed ({sorted(set(a) ^ set(b))[:3]})"
    for k in a:
        x, y = a[k], b[k]
        if x.shape != y.shape or x.dtype != y.dtype:
            return f"{k} shape/dtype changed"
        if x.is_floating_point():
            same = torch.equal(torch.isnan(x), torch.isnan(y)) and torch.equal(x.nan_to_num(0.0), y.nan_to_num(0.0))
        else:
            same = torch.equal(x, y)
        if not same:
            return f"{k} changed"
    return ""


def finite(t: Any) -> bool:
    if isinstance(t, torch.Tensor):
        return not t.is_floating_point() or bool(torch.isfinite(t).all())
    if isinstance(t, (tuple, list)):
        return all(finite(x) for x in t)
    if isinstance(t, dict):
        return all(finite(x) for x in t.values())
    return True


def run(model: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(*inputs)


def seq_model() -> nn.Module:
    """Conv-BN-ReLU-Conv-ReLU-pool-linear on 3x16x16 inputs (BN statistics not trivial)."""
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    with torch.no_grad():
        bn = m[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return m.eval()


def flat_model() -> nn.Module:
    """Conv + Flatten + Linear: only 3x16x16 inputs fit."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 4)).eval()


def compress_model() -> nn.Module:
    """Two wide convs that SVD and channel pruning can shrink (input 8x16x16)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(8, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1)).eval()


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 4)
        self.b = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(y)


class DataDependent(nn.Module):
    """Python control flow on a tensor value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.sum() > 0:
            y = torch.relu(y)
        return self.fc(y.mean(dim=(2, 3)))


SEQ_SHAPE = (3, 16, 16)
COMPRESS_SHAPE = (8, 16, 16)


def xin(shape: tuple[int, ...] = SEQ_SHAPE, n: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def calib(shape: tuple[int, ...] = SEQ_SHAPE, batches: int = 2, bs: int = 4) -> list[torch.Tensor]:
    return [xin(shape, bs, seed=10 + i) for i in range(batches)]


def mse_score(model: nn.Module, data: list[torch.Tensor]) -> Callable[[nn.Module], float]:
    """eval_fn: minus the mean squared output error against ``model`` (higher is better)."""
    reference = [run(model, x) for x in data]

    def score(candidate: nn.Module) -> float:
        with torch.no_grad():
            return -float(sum(F.mse_loss(candidate(x), r) for x, r in zip(data, reference)))

    return score


def sim_problem(sim: Any, x: torch.Tensor) -> str | None:
    """Why ``sim`` is not usable (a missing or non-finite encoding, non-finite output), or None."""
    for name, q in sim.quantizers().items():
        if getattr(q, "is_active", False):
            enc = q.encoding
            if enc is None:
                return f"quantizer {name} has no encoding"
            if not finite(getattr(enc, "scale", None)) or not finite(getattr(enc, "offset", None)):
                return f"quantizer {name} has a non-finite encoding"
    out = run(sim.model, x)
    if not finite(out):
        return "sim output has NaN/Inf"
    return None


def sim_nonfinite(sim: Any) -> str | None:
    for k, v in sim.model.state_dict().items():
        if isinstance(v, torch.Tensor) and not finite(v):
            return f"sim.model.{k} has NaN/Inf afterwards"
    for name, q in sim.quantizers().items():
        enc = getattr(q, "encoding", None)
        if enc is not None and (not finite(getattr(enc, "scale", None)) or not finite(getattr(enc, "offset", None))):
            return f"encoding of {name} has NaN/Inf afterwards"
    return None


def model_problem(model: nn.Module, x: torch.Tensor) -> str | None:
    out = run(model, x)
    return None if finite(out) else "returned model outputs NaN/Inf"


def calibrated(model: nn.Module | None = None, per_channel: bool = False, scheme: str = "minmax", **kw: Any) -> Any:
    model = model if model is not None else seq_model()
    sim = lt.QuantSim(model, xin(), scheme=scheme, per_channel=per_channel, **kw)
    sim.compute_encodings(calib(), progress=False)
    return sim


def describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}"
    return type(value).__name__


ADA = {"iterations": 5, "param_scheme": "minmax", "progress": False}

# --------------------------------------------------------------------------------------------- API cases

BAD_BITWIDTHS: list[tuple[str, Any]] = [
    ("0", 0),
    ("1", 1),
    ("17", 17),
    ("33", 33),
    ("-1", -1),
    ("8.0", 8.0),
    ("'8'", "8"),
    ("True", True),
    ("None", None),
]
GOOD_BITWIDTHS: list[tuple[str, Any]] = [("2", 2), ("16", 16), ("32", 32)]


def register_bitwidths() -> None:
    def quantsim(arg: str, bw: Any) -> Callable[[Ctx], str | None]:
        def fn(ctx: Ctx) -> str | None:
            model = ctx.track(seq_model())
            sim = lt.QuantSim(model, xin(), scheme="minmax", **{arg: bw})
            sim.compute_encodings(calib(), progress=False)
            return sim_problem(sim, xin(n=2))

        return fn

    def adaround(arg: str, bw: Any) -> Callable[[Ctx], str | None]:
        def fn(ctx: Ctx) -> str | None:
            model = ctx.track(seq_model())
            rounded, enc = lt.adaround(model, xin(), calib(), path=ctx.tmp, **{arg: bw}, **ADA)
            return model_problem(rounded, xin(n=2))

        return fn

    def bias_correction(bw: Any) -> Callable[[Ctx], str | None]:
        def fn(ctx: Ctx) -> str | None:
            model = ctx.track(seq_model())
            fixed = lt.bias_correction(model, xin(), calib(), param_bw=bw, scheme="minmax", progress=False)
            return model_problem(fixed, xin(n=2))

        return fn

    for label, bw in BAD_BITWIDTHS + GOOD_BITWIDTHS:
        expect = OK if (label, bw) in GOOD_BITWIDTHS else "UnsupportedBitwidthError"
        add("bitwidth", f"QuantSim(param_bw={label})", expect, quantsim("param_bw", bw))
        add("bitwidth", f"QuantSim(act_bw={label})", expect, quantsim("act_bw", bw))
        ada_expect = expect if bw != 32 else (OK, "UnsupportedBitwidthError", "InvalidOptionError")
        add("bitwidth", f"adaround(param_bw={label})", ada_expect, adaround("param_bw", bw))
        add("bitwidth", f"adaround(act_bw={label})", expect, adaround("act_bw", bw))
        add("bitwidth", f"bias_correction(param_bw={label})", expect, bias_correction(bw))


def register_options() -> None:
    """Unknown option strings and out-of-range numeric options."""
    scheme_err = ("InvalidOptionError", "ConfigError")

    def quantsim(**kw: Any) -> Callable[[Ctx], str | None]:
        def fn(ctx: Ctx) -> str | None:
            model = ctx.track(seq_model())
            kw2 = {k: (v(ctx) if callable(v) else v) for k, v in kw.items()}
            sim = lt.QuantSim(model, xin(), **kw2)
            sim.compute_encodings(calib(), progress=False)
            return sim_problem(sim, xin(n=2))

        return fn

    def bad_json(ctx: Ctx) -> str:
        p = ctx.tmp / "bad.json"
        p.write_text("{not json")
        return str(p)

    add("option", "QuantSim(scheme='nope')", scheme_err, quantsim(scheme="nope"))
    add("option", "QuantSim(param_scheme='nope')", scheme_err, quantsim(param_scheme="nope"))
    add("option", "QuantSim(scheme=None)", scheme_err, quantsim(scheme=None))
    add("option", "QuantSim(scheme='MinMax') (case-insensitive)", OK, quantsim(scheme="MinMax"))
    add("option", "QuantSim(config='nope')", "ConfigError", quantsim(config="nope"))
    add("option", "QuantSim(config='missing.json')", "ConfigError", quantsim(config="/nonexistent/missing.json"))
    add("option", "QuantSim(config=<bad JSON file>)", "ConfigError", quantsim(config=bad_json))
    add("option", "QuantSim(config={'nope': 1})", "ConfigError", quantsim(config={"nope": 1}))
    add("option", "QuantSim(config=42)", ("ConfigError", "InvalidOptionError"), quantsim(config=42))
    add("option", "QuantSim(per_channel='yes')", ("InvalidOptionError", "ConfigError"), quantsim(per_channel="yes"))

    def bc(**kw: Any) -> Callable[[Ctx], str | None]:
        def fn(ctx: Ctx) -> str | None:
            model = ctx.track(seq_model())
            fixed = lt.bias_correction(model, xin(), calib(), progress=False, **kw)
            return model_problem(fixed, xin(n=2))

        return fn

    add("option", "bias_correction(method='nope')", "InvalidOptionError", bc(method="nope"))
    add(
        "option",
        "bias_correction(method='analytical') on an unfolded model",
        ("InvalidOptionError",),
        bc(method="analytical"),
    )
    add("option", "bias_correction(scheme='nope')", scheme_err, bc(scheme="nope"))
    add("option", "bias_correction(num_samples=0)", ("InvalidOptionError", "CalibrationDataError"), bc(num_samples=0))

    def ada(**kw: Any) -> Callable[[Ctx], str | None]:
        def fn(ctx: Ctx) -> str | None:
            model = ctx.track(seq_model())
            rounded, _ = lt.adaround(model, xin(), calib(), path=ctx.tmp, **{**ADA, **kw})
            return model_problem(rounded, xin(n=2))

        return fn

    add("option", "adaround(objective='nope')", "InvalidOptionError", ada(objective="nope"))
    add("option", "adaround(scheme='nope')", scheme_err, ada(scheme="nope"))
    add("option", "adaround(param_scheme='nope')", scheme_err, ada(param_scheme="nope"))
    add("option", "adaround(iterations=0)", "InvalidOptionError", ada(iterations=0))
    add("option", "adaround(iterations=-5)", "InvalidOptionError", ada(iterations=-5))
    add("option", "adaround(lr=nan)", "InvalidOptionError", ada(lr=float("nan")))
    add("option", "adaround(lr=-1)", "InvalidOptionError", ada(lr=-1.0))
    add("option", "adaround(num_batches=0)", ("InvalidOptionError", "CalibrationDataError"), ada(num_batches=0))
    add("option", "adaround(config='nope')", "ConfigError", ada(config="nope"))

    def eq(**kw: Any) -> Callable[[Ctx], str | None]:
        def fn(ctx: Ctx) -> str | None:
            model = ctx.track(seq_model())
            return model_problem(lt.equalize(model, xin(), **kw), xin(n=2))

        return fn

    add("option", "equalize(relu6='nope')", "InvalidOptionError", eq(relu6="nope"))

    def compute(**kw: Any) -> Callable[[Ctx], str | None]:
        def fn(ctx: Ctx) -> str | None:
            sim = lt.QuantSim(ctx.track(seq_model()), xin(), scheme="minmax")
            sim.compute_encodings(calib(), progress=False, **kw)
            return sim_problem(sim, xin(n=2))

        return fn

    add(
        "option",
        "compute_encodings(num_batches=0)",
        ("InvalidOptionError", "CalibrationDataError"),
        compute(num_batches=0),
    )
    add(
        "option",
        "compute_encodings(num_batches=-1)",
        ("InvalidOptionError", "CalibrationDataError"),
        compute(num_batches=-1),
    )

    def auto(**kw: Any) -> Callable[[Ctx], str | None]:
        def fn(ctx: Ctx) -> str | None:
            model = ctx.track(seq_model())
            data = calib()
            result = lt.auto_quant(
                model,
                xin(),
                data,
                mse_score(model, data),
                path=ctx.tmp,
                progress=False,
                adaround_kwargs={"iterations": 5, "param_scheme": "minmax"},
                **kw,
            )
            return sim_problem(result.sim, xin(n=2))

        return fn

    add("option", "auto_quant(allowed_drop=-1)", "InvalidOptionError", auto(allowed_drop=-1.0))
    add("option", "auto_quant(allowed_drop=nan)", "InvalidOptionError", auto(allowed_drop=float("nan")))
    add("option", "auto_quant(scheme='nope')", scheme_err, auto(scheme="nope"))

    def export(**kw: Any) -> Callable[[Ctx], str | None]:
        def fn(ctx: Ctx) -> str | None:
            sim = calibrated(ctx.track(seq_model()))
            files = sim.export(ctx.tmp / "out", "model", **kw)
            return None if all(Path(p).exists() for p in files.values()) else "export returned missing files"

        return fn

    add("option", "export(opset=5)", ("InvalidOptionError", "ExportError"), export(opset=5))
    add("option", "export(opset=99)", ("InvalidOptionError", "ExportError"), export(opset=99))


def calibration_variants(shape: tuple[int, ...]) -> list[tuple[str, str | tuple[str, ...], Callable[[], Any]]]:
    """(label, expectation, factory) of calibration data for a model taking ``[N, *shape]``."""
    bad_channels = (shape[0] + 2,) + shape[1:]

    def exhausted() -> Any:
        gen = (x for x in calib(shape))
        list(gen)
        return gen

    def with_nan() -> list[torch.Tensor]:
        data = calib(shape)
        data[1][0, 0, 0, 0] = float("nan")
        return data

    def with_inf() -> list[torch.Tensor]:
        data = calib(shape)
        data[0][1, 0, 0, 0] = float("inf")
        return data

    err = "CalibrationDataError"
    return [
        ("[] (empty list)", err, lambda: []),
        ("exhausted generator", err, exhausted),
        ("NaN in batch 1", err, with_nan),
        ("Inf in batch 0", err, with_inf),
        (f"wrong shape {bad_channels}", err, lambda: [xin(bad_channels, 4)]),
        ("int64 batches", (err, OK), lambda: [torch.randint(0, 255, (4, *shape))]),
        ("float64 batches", (err, OK), lambda: [x.double() for x in calib(shape)]),
        ("a single tensor, not a list", err, lambda: calib(shape)[0]),
        ("None", err, lambda: None),
        ("[None]", err, lambda: [None]),
        ("['a', 'b'] (strings)", err, lambda: ["a", "b"]),
        ("[empty batch (0 samples)]", err, lambda: [torch.empty(0, *shape)]),
        ("[(x, labels)] batches", OK, lambda: [(x, torch.zeros(len(x), dtype=torch.long)) for x in calib(shape)]),
        ("[{'x': tensor}] dict batches", (err, OK), lambda: [{"x": x} for x in calib(shape)]),
        ("a generator (one pass)", OK, lambda: (x for x in calib(shape))),
    ]


def register_calibration() -> None:
    def compute(factory: Callable[[], Any]) -> Callable[[Ctx], str | None]:
        def fn(ctx: Ctx) -> str | None:
            sim = lt.QuantSim(ctx.track(seq_model()), xin(), scheme="minmax")
            sim.compute_encodings(factory(), progress=False)
            return sim_problem(sim, xin(n=2))

        return fn

    def bias(factory: Callable[[], Any]) -> Callable[[Ctx], str | None]:
        def fn(ctx: Ctx) -> str | None:
            model = ctx.track(seq_model())
            fixed = lt.bias_correction(model, xin(), factory(), scheme="minmax", progress=False)
            return model_problem(fixed, xin(n=2))

        return fn

    def ada(factory: Callable[[], Any]) -> Callable[[Ctx], str | None]:
        def fn(ctx: Ctx) -> str | None:
            model = ctx.track(seq_model())
            rounded, _ = lt.adaround(model, xin(), factory(), path=ctx.tmp, **ADA)
            return model_problem(rounded, xin(n=2))

        return fn

    def analyze(factory: Callable[[], Any]) -> Callable[[Ctx], str | None]:
        def fn(ctx: Ctx) -> str | None:
            model = ctx.track(seq_model())
            sim = calibrated(model)
            report = lt.analyze(sim, mse_score(model, calib()), factory(), sensitivity=False, progress=False)
            return None if all(math.isfinite(v) for v in report.scores.values()) else "non-finite scores"

        return fn

    def prune(factory: Callable[[], Any]) -> Callable[[Ctx], str | None]:
        def fn(ctx: Ctx) -> str | None:
            model = ctx.track(compress_model())
            data = calib(COMPRESS_SHAPE)
            small, info = lt.compress(
                model,
                xin(COMPRESS_SHAPE),
                mse_score(model, data),
                "channel_pruning",
                0.7,
                calibration=factory(),
                candidates=3,
                progress=False,
            )
            return model_problem(small, xin(COMPRESS_SHAPE, 2))

        return fn

    def auto(factory: Callable[[], Any]) -> Callable[[Ctx], str | None]:
        def fn(ctx: Ctx) -> str | None:
            model = ctx.track(seq_model())
            result = lt.auto_quant(
                model,
                xin(),
                factory(),
                mse_score(model, calib()),
                path=ctx.tmp,
                progress=False,
                adaround_kwargs={"iterations": 5, "param_scheme": "minmax"},
            )
            return sim_problem(result.sim, xin(n=2))

        return fn

    for label, expect, factory in calibration_variants(SEQ_SHAPE):
        add("calibration data", f"compute_encodings({label})", expect, compute(factory))
        add("calibration data", f"bias_correction({label})", expect, bias(factory))
        add("calibration data", f"adaround({label})", expect, ada(factory))
        add("calibration data", f"analyze({label})", expect, analyze(factory))
        add("calibration data", f"auto_quant({label})", expect, auto(factory))
    for label, expect, factory in calibration_variants(COMPRESS_SHAPE):
        if label in (
            "[] (empty list)",
            "NaN in batch 1",
            "Inf in batch 0",
            "None",
            "exhausted generator",
            f"wrong shape {(COMPRESS_SHAPE[0] + 2,) + COMPRESS_SHAPE[1:]}",
            "[(x, labels)] batches",
        ):
            add("calibration data", f"compress(channel_pruning, calibration={label})", expect, prune(factory))

    def never_runs(ctx: Ctx) -> str | None:
        sim = lt.QuantSim(ctx.track(seq_model()), xin(), scheme="minmax")
        sim.compute_encodings(lambda model: None, progress=False)
        return sim_problem(sim, xin(n=2))

    def callable_ok(ctx: Ctx) -> str | None:
        sim = lt.QuantSim(ctx.track(seq_model()), xin(), scheme="minmax")
        sim.compute_encodings(lambda model: [model(x) for x in calib()], progress=False)
        return sim_problem(sim, xin(n=2))

    def two_inputs(batches: Callable[[], Any]) -> Callable[[Ctx], str | None]:
        def fn(ctx: Ctx) -> str | None:
            model = ctx.track(TwoInputs().eval())
            sim = lt.QuantSim(model, (torch.randn(1, 6), torch.randn(1, 6)), scheme="minmax")
            sim.compute_encodings(batches(), progress=False)
            return None if finite(run(sim.model, torch.randn(2, 6), torch.randn(2, 6))) else "NaN output"

        return fn

    add("calibration data", "compute_encodings(callable that never runs the model)", "CalibrationDataError", never_runs)
    add("calibration data", "compute_encodings(callable(model))", OK, callable_ok)
    add(
        "calibration data",
        "two-input model, batches of one tensor (wrong number of inputs)",
        "CalibrationDataError",
        two_inputs(lambda: [torch.randn(4, 6)]),
    )
    add(
        "calibration data",
        "two-input model, (a, b) batches",
        OK,
        two_inputs(lambda: [(torch.randn(4, 6), torch.randn(4, 6))]),
    )


def register_example_input() -> None:
    nan_x = xin()
    nan_x[0, 0, 0, 0] = float("nan")
    inf_x = xin()
    inf_x[0, 1, 2, 3] = float("inf")
    variants: list[tuple[str, tuple[str, ...], Callable[[], Any]]] = [
        ("NaN", ("NonFiniteModelError", "InputShapeError"), lambda: nan_x.clone()),
        ("Inf", ("NonFiniteModelError", "InputShapeError"), lambda: inf_x.clone()),
        ("wrong shape (1,3,20,20) for a Flatten+Linear model", ("InputShapeError",), lambda: xin((3, 20, 20))),
        ("wrong channels (1,5,16,16)", ("InputShapeError",), lambda: xin((5, 16, 16))),
        ("a string", ("InputShapeError", "InvalidOptionError"), lambda: "image.png"),
        ("None", ("InputShapeError", "InvalidOptionError"), lambda: None),
        ("a list of ints", ("InputShapeError", "InvalidOptionError"), lambda: [1, 2, 3]),
        ("a numpy array", ("InputShapeError", "InvalidOptionError", OK), lambda: xin().numpy()),
    ]

    def make(api: str, factory: Callable[[], Any]) -> Callable[[Ctx], str | None]:
        def fn(ctx: Ctx) -> str | None:
            model = ctx.track(flat_model())
            x = factory()
            if api == "prepare":
                return model_problem(lt.prepare(model, x), xin(n=2))
            if api == "QuantSim":
                sim = lt.QuantSim(model, x, scheme="minmax")
                sim.compute_encodings(calib(), progress=False)
                return sim_problem(sim, xin(n=2))
            if api == "fold_batch_norms":
                return model_problem(lt.fold_batch_norms(model, x)[0], xin(n=2))
            if api == "equalize":
                return model_problem(lt.equalize(model, x), xin(n=2))
            if api == "bias_correction":
                return model_problem(lt.bias_correction(model, x, calib(), scheme="minmax", progress=False), xin(n=2))
            if api == "compress.cost":
                report = lt.compress.cost(model, x)
                return None if report.total_macs > 0 else "no MACs counted"
            raise AssertionError(api)

        return fn

    for label, expect, factory in variants:
        for api in ("prepare", "QuantSim", "fold_batch_norms", "equalize", "bias_correction", "compress.cost"):
            # Inf is legal in an example input (attention masks hold -inf) and MACs do not depend on values,
            # so the cost model may accept it; the APIs that run the values must still refuse what it causes.
            allowed = (*expect, OK) if (api, label) == ("compress.cost", "Inf") else expect
            add("example input", f"{api}(example_input={label})", allowed, make(api, factory))


def register_models() -> None:
    def nan_weight() -> nn.Module:
        m = seq_model()
        with torch.no_grad():
            m[0].weight[0, 0, 0, 0] = float("nan")
        return m

    def inf_bias() -> nn.Module:
        m = seq_model()
        with torch.no_grad():
            m[3].bias[2] = float("inf")
        return m

    def nan_bn() -> nn.Module:
        m = seq_model()
        with torch.no_grad():
            m[1].running_var[3] = float("nan")
        return m

    nonfinite = ("NonFiniteModelError",)
    models: list[tuple[str, tuple[str, ...], Callable[[], nn.Module]]] = [
        ("NaN weight", nonfinite, nan_weight),
        ("Inf bias", nonfinite, inf_bias),
        ("NaN BN running_var", nonfinite, nan_bn),
        ("data-dependent control flow", ("TraceError",), lambda: DataDependent().eval()),
    ]

    def make(api: str, factory: Callable[[], nn.Module]) -> Callable[[Ctx], str | None]:
        def fn(ctx: Ctx) -> str | None:
            model = ctx.track(factory())
            x = xin()
            if api == "QuantSim+compute_encodings":
                sim = lt.QuantSim(model, x, scheme="minmax")
                sim.compute_encodings(calib(), progress=False)
                return sim_problem(sim, xin(n=2))
            if api == "prepare":
                return model_problem(lt.prepare(model, x), xin(n=2))
            if api == "fold_batch_norms":
                return model_problem(lt.fold_batch_norms(model, x)[0], xin(n=2))
            if api == "equalize":
                return model_problem(lt.equalize(model, x), xin(n=2))
            if api == "adaround":
                return model_problem(lt.adaround(model, x, calib(), path=ctx.tmp, **ADA)[0], xin(n=2))
            if api == "compress":
                # spatial SVD reaches 0.8 on the clean model (weight SVD cannot: its layers are too small)
                small, _ = lt.compress(model, x, lambda m: 0.0, "spatial_svd", 0.8, candidates=3, progress=False)
                return model_problem(small, xin(n=2))
            raise AssertionError(api)

        return fn

    for label, expect, factory in models:
        for api in ("QuantSim+compute_encodings", "prepare", "fold_batch_norms", "equalize", "adaround", "compress"):
            add("model", f"{api}({label})", expect, make(api, factory))

    def not_a_module(ctx: Ctx) -> str | None:
        lt.QuantSim(lambda x: x * 2, xin(), scheme="minmax")
        return "accepted a lambda as the model"

    add("model", "QuantSim(model=<a lambda>)", ("TraceError", "InvalidOptionError"), not_a_module)

    def valid(
        factory: Callable[[], nn.Module], x: torch.Tensor, data: list[Any], **kw: Any
    ) -> Callable[[Ctx], str | None]:
        def fn(ctx: Ctx) -> str | None:
            model = ctx.track(factory())
            sim = lt.QuantSim(model, x, **kw)
            sim.compute_encodings(data, progress=False)
            problem = sim_problem(sim, x)
            if problem:
                return problem
            err = float((run(sim.model, x) - run(model, x)).abs().max())
            scale = float(run(model, x).abs().max())
            return None if err <= 0.5 * scale + 1e-6 else f"W8A8 output far from FP32 ({err:.3g} vs {scale:.3g})"

        return fn

    def resnet() -> nn.Module:
        torch.manual_seed(0)
        return ltm.ResNetSmall(width=8).eval()

    def transformer() -> nn.Module:
        torch.manual_seed(0)
        return ltm.TransformerClassifier(in_features=16, num_classes=10, dim=32, depth=1).eval()

    add(
        "model",
        "ResNetSmall(width=8) 32x32 W8A8 (valid)",
        OK,
        valid(resnet, xin((3, 32, 32)), calib((3, 32, 32)), scheme="minmax"),
    )
    add(
        "model",
        "TransformerClassifier W8A8 (valid)",
        OK,
        valid(transformer, xin((6, 16)), calib((6, 16)), scheme="minmax"),
    )
    add(
        "model",
        "ResNetSmall tf_enhanced per-channel (valid)",
        OK,
        valid(resnet, xin((3, 32, 32)), calib((3, 32, 32)), per_channel=True),
    )

    def transformer_wrong_features(ctx: Ctx) -> str | None:
        sim = lt.QuantSim(ctx.track(transformer()), xin((6, 16)), scheme="minmax")
        sim.compute_encodings([xin((6, 12), 4)], progress=False)
        return "calibrated on 12 features for a 16-feature model"

    add(
        "model",
        "TransformerClassifier calibrated with 12 features (expects 16)",
        "CalibrationDataError",
        transformer_wrong_features,
    )


ENC_VALUE_CORRUPTIONS: list[tuple[str, Callable[[dict], None]]] = [
    ("scale 0", lambda e: e.update(scale=0.0)),
    ("scale negative", lambda e: e.update(scale=-0.01)),
    ("scale NaN", lambda e: e.update(scale=float("nan"))),
    ("scale inf", lambda e: e.update(scale=float("inf"))),
    ("offset 1e6", lambda e: e.update(offset=1_000_000)),
    ("min > max", lambda e: e.update(min=1.0, max=-1.0)),
    ("bitwidth 99", lambda e: e.update(bitwidth=99)),
    ("scale 'abc'", lambda e: e.update(scale="abc")),
    ("no scale key", lambda e: e.pop("scale")),
]


def register_encodings() -> None:
    def base(ctx: Ctx) -> tuple[Any, dict, Path]:
        model = ctx.track(seq_model())
        sim = calibrated(model, per_channel=True)
        path = ctx.tmp / "base.encodings"
        sim.save_encodings(path)
        return sim, json.loads(path.read_text()), path

    def fresh(ctx: Ctx) -> Any:
        return lt.QuantSim(seq_model(), xin(), scheme="minmax", per_channel=True)

    def apply(api: str, sim: Any, path: Path) -> None:
        if api == "load_encodings":
            sim.load_encodings(path)
        else:
            sim.set_and_freeze_param_encodings(path)

    def outcome(sim: Any) -> str | None:
        out = run(sim.model, xin(n=2))
        return "loaded; output has NaN/Inf" if not finite(out) else "loaded without error"

    def corrupt(api: str, kind: str, change: Callable[[dict], None]) -> Callable[[Ctx], str | None]:
        def fn(ctx: Ctx) -> str | None:
            sim, data, _ = base(ctx)
            section = data["param_encodings" if kind == "param" else "activation_encodings"]
            entry = section[next(iter(section))]
            change(entry[0])
            path = ctx.tmp / "bad.encodings"
            path.write_text(json.dumps(data))
            target = fresh(ctx)
            if api == "set_and_freeze_param_encodings":
                apply(api, target, path)
                target.compute_encodings(calib(), progress=False)
            else:
                apply(api, target, path)
            return outcome(target)

        return fn

    err = "EncodingsFileError"
    for label, change in ENC_VALUE_CORRUPTIONS:
        add("encodings file", f"load_encodings(param {label})", err, corrupt("load_encodings", "param", change))
        add(
            "encodings file",
            f"load_encodings(activation {label})",
            err,
            corrupt("load_encodings", "activation", change),
        )
        add(
            "encodings file",
            f"set_and_freeze_param_encodings(param {label})",
            err,
            corrupt("set_and_freeze_param_encodings", "param", change),
        )

    def file_case(api: str, write: Callable[[Ctx, dict, Path], Path]) -> Callable[[Ctx], str | None]:
        def fn(ctx: Ctx) -> str | None:
            sim, data, good = base(ctx)
            path = write(ctx, data, good)
            target = fresh(ctx)
            apply(api, target, path)
            return outcome(target)

        return fn

    def only_version(ctx: Ctx, data: dict, good: Path) -> Path:
        p = ctx.tmp / "v.encodings"
        p.write_text(json.dumps({"version": "0.6.1"}))
        return p

    def unknown_param(ctx: Ctx, data: dict, good: Path) -> Path:
        data["param_encodings"]["nope.weight"] = next(iter(data["param_encodings"].values()))
        p = ctx.tmp / "u.encodings"
        p.write_text(json.dumps(data))
        return p

    def unknown_activation(ctx: Ctx, data: dict, good: Path) -> Path:
        data["activation_encodings"]["nope.output"] = next(iter(data["activation_encodings"].values()))
        p = ctx.tmp / "u.encodings"
        p.write_text(json.dumps(data))
        return p

    def wrong_channels(ctx: Ctx, data: dict, good: Path) -> Path:
        section = data["param_encodings"]
        name = next(n for n, e in section.items() if isinstance(e, list) and len(e) > 2)
        section[name] = section[name][:-1]
        p = ctx.tmp / "c.encodings"
        p.write_text(json.dumps(data))
        return p

    def text(content: str) -> Callable[[Ctx, dict, Path], Path]:
        def write(ctx: Ctx, data: dict, good: Path) -> Path:
            p = ctx.tmp / "t.encodings"
            p.write_text(content)
            return p

        return write

    def missing(ctx: Ctx, data: dict, good: Path) -> Path:
        return ctx.tmp / "missing.encodings"

    def directory(ctx: Ctx, data: dict, good: Path) -> Path:
        return ctx.tmp

    file_variants = [
        ("only {'version': '0.6.1'}", only_version, ("load_encodings", "set_and_freeze_param_encodings")),
        ("unknown param name", unknown_param, ("load_encodings", "set_and_freeze_param_encodings")),
        ("unknown activation name", unknown_activation, ("load_encodings",)),
        ("wrong channel count", wrong_channels, ("load_encodings", "set_and_freeze_param_encodings")),
        ("bad JSON", text('{"version": '), ("load_encodings", "set_and_freeze_param_encodings")),
        ("missing file", missing, ("load_encodings", "set_and_freeze_param_encodings")),
        ("empty file", text(""), ("load_encodings",)),
        ("a JSON list", text("[1, 2]"), ("load_encodings", "set_and_freeze_param_encodings")),
        ("a directory", directory, ("load_encodings",)),
        (
            "param_encodings is a list",
            text('{"version": "0.6.1", "param_encodings": [1]}'),
            ("load_encodings", "set_and_freeze_param_encodings"),
        ),
    ]
    for label, write, apis in file_variants:
        for api in apis:
            add("encodings file", f"{api}({label})", err, file_case(api, write))

    def save_load(ctx: Ctx) -> str | None:
        sim, _, path = base(ctx)
        target = fresh(ctx)
        target.load_encodings(path)
        diff = float((run(target.model, xin(n=2)) - run(sim.model, xin(n=2))).abs().max())
        return None if diff <= 1e-6 else f"outputs differ by {diff:.3g} after save_encodings -> load_encodings"

    def export_load(api: str) -> Callable[[Ctx], str | None]:
        def fn(ctx: Ctx) -> str | None:
            sim, _, _ = base(ctx)
            files = sim.export(ctx.tmp / "out", "model")
            target = fresh(ctx)
            apply(api, target, files["encodings"])
            if api == "set_and_freeze_param_encodings":
                target.compute_encodings(calib(), progress=False)
            diff = float((run(target.model, xin(n=2)) - run(sim.model, xin(n=2))).abs().max())
            return None if diff <= 1e-6 else f"outputs differ by {diff:.3g} from the exporting sim"

        return fn

    add("encodings file", "save_encodings -> load_encodings into a new sim (identical outputs)", OK, save_load)
    add(
        "encodings file",
        "sim.export's .encodings -> load_encodings into a new sim (identical outputs)",
        OK,
        export_load("load_encodings"),
    )
    add(
        "encodings file",
        "sim.export's .encodings -> set_and_freeze_param_encodings (identical outputs)",
        OK,
        export_load("set_and_freeze_param_encodings"),
    )

    def half_applied(ctx: Ctx) -> str | None:
        sim, data, _ = base(ctx)
        before = run(sim.model, xin(n=2))
        names = list(data["param_encodings"])
        data["param_encodings"][names[-1]][0]["scale"] = "abc"
        path = ctx.tmp / "late.encodings"
        path.write_text(json.dumps(data))
        ctx.after(
            lambda: (
                None
                if torch.equal(run(sim.model, xin(n=2)), before)
                else "a failed load changed the sim (half-applied)"
            )
        )
        sim.load_encodings(path)
        return outcome(sim)

    add("encodings file", "load_encodings(bad last entry) leaves the sim unchanged", err, half_applied)


def register_qat() -> None:
    def batches(n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(5)
        return [(torch.randn(4, *SEQ_SHAPE, generator=g), torch.randint(0, 4, (4,), generator=g)) for _ in range(n)]

    def fit(data: Callable[[], Any], calibrate: bool = True, **kw: Any) -> Callable[[Ctx], str | None]:
        def fn(ctx: Ctx) -> str | None:
            model = ctx.track(seq_model())
            folded, _ = lt.fold_batch_norms(model, xin())
            sim = lt.QuantSim(folded, xin(), scheme="minmax", range_learning=True)
            if calibrate:
                sim.compute_encodings(calib(), progress=False)
            ctx.after(lambda: sim_nonfinite(sim))
            losses = lt.qat.fit(sim, data(), F.cross_entropy, progress=False, **{"epochs": 1, "lr": 1e-3, **kw})
            if not all(math.isfinite(v) for v in losses):
                return f"losses {losses}"
            return sim_nonfinite(sim)

        return fn

    def exhausted() -> Any:
        gen = (b for b in batches())
        return gen

    def nan_batch() -> list:
        data = batches()
        data[1][0][0, 0, 0, 0] = float("nan")
        return data

    def inf_batch() -> list:
        data = batches()
        data[0][0][0, 0, 0, 0] = float("inf")
        return data

    bad = "InvalidOptionError"
    data_err = ("TrainingDataError",)
    add("qat.fit", "lr=nan", bad, fit(batches, lr=float("nan")))
    add("qat.fit", "lr=inf", bad, fit(batches, lr=float("inf")))
    add("qat.fit", "lr=-1e-3", bad, fit(batches, lr=-1e-3))
    add("qat.fit", "lr=0", (bad, OK), fit(batches, lr=0.0))
    add("qat.fit", "range_lr=nan", bad, fit(batches, range_lr=float("nan")))
    add("qat.fit", "epochs=0", (bad, OK), fit(batches, epochs=0))
    add("qat.fit", "epochs=-1", bad, fit(batches, epochs=-1))
    add("qat.fit", "optimizer='nope'", bad, fit(batches, optimizer="nope"))
    add("qat.fit", "weight_decay=nan", bad, fit(batches, weight_decay=float("nan")))
    add("qat.fit", "train_batches=[]", data_err, fit(lambda: []))
    add("qat.fit", "a generator with epochs=2 (exhausted in epoch 2)", data_err, fit(exhausted, epochs=2))
    add("qat.fit", "NaN in training batch 1", data_err, fit(nan_batch))
    add("qat.fit", "Inf in training batch 0", data_err, fit(inf_batch))
    add("qat.fit", "batches without targets (tensors only)", data_err, fit(lambda: [x for x, _ in batches()]))
    add("qat.fit", "train_batches=None", data_err, fit(lambda: None))
    add("qat.fit", "a sim without compute_encodings", "EncodingsMissingError", fit(batches, calibrate=False))
    add("qat.fit", "valid: 2 epochs at lr 1e-3", OK, fit(batches, epochs=2))


def register_layers_analyze_export() -> None:
    def switch(method: str, layers: Any) -> Callable[[Ctx], str | None]:
        def fn(ctx: Ctx) -> str | None:
            sim = calibrated(ctx.track(seq_model()))
            getattr(sim, method)(False, layers=layers)
            return f"{method}(layers={layers!r}) accepted"

        return fn

    unknown = "UnknownLayerError"
    add(
        "layer names",
        "sim.set_param_quantization(False, layers=['nope'])",
        unknown,
        switch("set_param_quantization", ["nope"]),
    )
    add(
        "layer names",
        "sim.set_activation_quantization(False, layers=['nope'])",
        unknown,
        switch("set_activation_quantization", ["nope"]),
    )
    add(
        "layer names",
        "sim.set_param_quantization(False, layers='stem.0') (a string, not a list)",
        (OK, "InvalidOptionError"),
        lambda ctx: _string_layers(ctx),
    )

    def analyze(
        eval_fn: Callable[[nn.Module], Any] | None = None, calibrate: bool = True, **kw: Any
    ) -> Callable[[Ctx], str | None]:
        def fn(ctx: Ctx) -> str | None:
            model = ctx.track(seq_model())
            sim = calibrated(model) if calibrate else lt.QuantSim(model, xin(), scheme="minmax")
            report = lt.analyze(sim, eval_fn or mse_score(model, calib()), calib(), progress=False, **kw)
            return None if all(math.isfinite(v) for v in report.scores.values()) else f"scores {report.scores}"

        return fn

    def raises(model: nn.Module) -> float:
        raise RuntimeError("my eval_fn broke")

    eval_err = "EvalFunctionError"
    add("layer names", "analyze(layers=['nope'])", unknown, analyze(layers=["nope"]))
    add("analyze", "analyze(eval_fn returns NaN)", eval_err, analyze(lambda m: float("nan")))
    add("analyze", "analyze(eval_fn returns inf)", eval_err, analyze(lambda m: float("inf")))
    add("analyze", "analyze(eval_fn raises)", eval_err, analyze(raises))
    add("analyze", "analyze(eval_fn returns a string)", eval_err, analyze(lambda m: "good"))
    add("analyze", "analyze(eval_fn returns None)", eval_err, analyze(lambda m: None))
    add("analyze", "analyze(eval_fn returns a tensor)", (eval_err, OK), analyze(lambda m: torch.tensor(1.0)))
    add("analyze", "analyze(before compute_encodings)", "EncodingsMissingError", analyze(calibrate=False))
    add("analyze", "analyze(bins=0)", "InvalidOptionError", analyze(bins=0))
    add("analyze", "analyze(num_batches=0)", ("InvalidOptionError", "CalibrationDataError"), analyze(num_batches=0))
    add("analyze", "analyze(valid)", OK, analyze())

    def report_to(target: Callable[[Ctx], Path]) -> Callable[[Ctx], str | None]:
        def fn(ctx: Ctx) -> str | None:
            model = ctx.track(seq_model())
            report = lt.analyze(
                calibrated(model), mse_score(model, calib()), calib(), sensitivity=False, progress=False
            )
            report.to_html(target(ctx))
            return "wrote the report"

        return fn

    def existing_dir(ctx: Ctx) -> Path:
        return ctx.tmp

    def under_file(ctx: Ctx) -> Path:
        (ctx.tmp / "file").write_text("x")
        return ctx.tmp / "file" / "report.html"

    add("analyze", "report.to_html(<an existing directory>)", "OutputPathError", report_to(existing_dir))
    add("analyze", "report.to_html(<a path under a file>)", "OutputPathError", report_to(under_file))

    def export(
        path: Callable[[Ctx], Path], prefix: Any = "model", calibrate: bool = True
    ) -> Callable[[Ctx], str | None]:
        def fn(ctx: Ctx) -> str | None:
            model = ctx.track(seq_model())
            sim = calibrated(model) if calibrate else lt.QuantSim(model, xin(), scheme="minmax")
            target = path(ctx)
            before = set(_files(ctx.tmp))
            ctx.after(lambda: _left_files(ctx.tmp, before))
            files = sim.export(target, prefix)
            missing_files = [str(p) for p in files.values() if not Path(p).is_file()]
            if missing_files:
                return f"export returned missing files {missing_files}"
            return None if prefix not in ("", None) else f"exported as {[Path(p).name for p in files.values()]}"

        return fn

    def existing_file(ctx: Ctx) -> Path:
        p = ctx.tmp / "taken"
        p.write_text("x")
        return p

    def out_dir(ctx: Ctx) -> Path:
        return ctx.tmp / "out"

    out_err = "OutputPathError"
    add("export", "export(<an existing file as the directory>)", out_err, export(existing_file))
    add("export", "export(filename_prefix='')", out_err, export(out_dir, ""))
    add("export", "export(filename_prefix=None)", (out_err, "InvalidOptionError"), export(out_dir, None))
    add("export", "export(filename_prefix='a/b') (a path)", (out_err, OK), export(out_dir, "a/b"))
    add("export", "export(before compute_encodings)", "EncodingsMissingError", export(out_dir, calibrate=False))
    add("export", "export(valid)", OK, export(out_dir))


def _string_layers(ctx: Ctx) -> str | None:
    torch.manual_seed(0)
    model = ctx.track(ltm.ResNetSmall(width=8).eval())
    sim = lt.QuantSim(model, xin((3, 32, 32)), scheme="minmax")
    sim.compute_encodings(calib((3, 32, 32)), progress=False)
    sim.set_param_quantization(False, layers="stem.0")
    q = sim.param_quantizers().get("stem.0.weight")
    return None if q is not None and not q.enabled else "layers='stem.0' did not switch layer 'stem.0'"


def _files(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]


def _left_files(root: Path, before: set[str]) -> str | None:
    # only reported when the call failed (see classify)
    new = sorted(set(_files(root)) - before)
    return f"PARTIAL:{new}" if new else None


def register_compress() -> None:
    def comp(
        scheme: Any = "weight_svd",
        target: Any = 0.8,
        model_fn: Callable[[], nn.Module] = compress_model,
        eval_fn: Callable[[nn.Module], Any] | None = None,
        **kw: Any,
    ) -> Callable[[Ctx], str | None]:
        def fn(ctx: Ctx) -> str | None:
            model = ctx.track(model_fn())
            data = calib(COMPRESS_SHAPE)
            kw2 = {k: (v(ctx) if callable(v) else v) for k, v in kw.items()}
            small, info = lt.compress(
                model,
                xin(COMPRESS_SHAPE),
                eval_fn or mse_score(model, data),
                scheme,
                target,
                progress=False,
                **{"candidates": 3, **kw2},
            )
            problem = model_problem(small, xin(COMPRESS_SHAPE, 2))
            if problem:
                return problem
            if not (0 < info.mac_ratio <= 1.0):
                return f"mac_ratio {info.mac_ratio}"
            return None

        return fn

    def raises(model: nn.Module) -> float:
        raise RuntimeError("my eval_fn broke")

    def existing_file(ctx: Ctx) -> Path:
        p = ctx.tmp / "taken"
        p.write_text("x")
        return p

    opt = ("InvalidOptionError", "CompressionError")
    add("compress", "target_mac_ratio=0", opt, comp(target=0.0))
    add("compress", "target_mac_ratio=1.5", opt, comp(target=1.5))
    add("compress", "target_mac_ratio=nan", opt, comp(target=float("nan")))
    add("compress", "target_mac_ratio=-0.5", opt, comp(target=-0.5))
    add("compress", "target_mac_ratio='0.5' (a string)", opt, comp(target="0.5"))
    add("compress", "scheme='nope'", opt, comp(scheme="nope"))
    add("compress", "scheme=[]", opt, comp(scheme=[]))
    add("compress", "scheme=['spatial_svd', 'nope']", opt, comp(scheme=["spatial_svd", "nope"]))
    add("compress", "ratios={'nope': 0.5}", ("UnknownLayerError", "CompressionError"), comp(ratios={"nope": 0.5}))
    add("compress", "ratios={'0': 1.5}", opt, comp(ratios={"0": 1.5}))
    add("compress", "ratios={'0': 0}", opt, comp(ratios={"0": 0.0}))
    add("compress", "ratios={'0': nan}", opt, comp(ratios={"0": float("nan")}))
    add("compress", "skip_layers=['nope']", ("UnknownLayerError", "CompressionError"), comp(skip_layers=["nope"]))
    add("compress", "candidates=0", opt, comp(candidates=0))
    add("compress", "candidates=[1.5, 2.0]", opt, comp(candidates=[1.5, 2.0]))
    add("compress", "rank_multiple=0", opt, comp(rank_multiple=0))
    add("compress", "rank_multiple=-8", opt, comp(rank_multiple=-8))
    add("compress", "eval_fn returns NaN", "EvalFunctionError", comp(eval_fn=lambda m: float("nan")))
    add("compress", "eval_fn raises", "EvalFunctionError", comp(eval_fn=raises))
    add("compress", "eval_fn returns a string", "EvalFunctionError", comp(eval_fn=lambda m: "good"))
    add("compress", "cache_dir=<an existing file>", "OutputPathError", comp(cache_dir=existing_file))
    add(
        "compress",
        "channel_pruning without calibration",
        ("CalibrationDataError", "CompressionError"),
        comp(scheme="channel_pruning"),
    )
    add(
        "compress",
        "stage_targets=[0.5] for two schemes",
        opt,
        comp(scheme=["weight_svd", "spatial_svd"], target=0.5, stage_targets=[0.5]),
    )
    add("compress", "valid weight_svd 0.8", OK, comp())
    add("compress", "valid spatial_svd 0.7", OK, comp(scheme="spatial_svd", target=0.7))
    add(
        "compress",
        "valid channel_pruning 0.7",
        OK,
        comp(scheme="channel_pruning", target=0.7, calibration=lambda ctx: calib(COMPRESS_SHAPE)),
    )


# --------------------------------------------------------------------------------------------- CLI cases

CLI_BASE = [
    "--model",
    "leantorch.models:ResNetSmall",
    "--data",
    "builtin:images",
    "--image-size",
    "32",
    "--num-samples",
    "8",
    "--batch-size",
    "4",
    "--no-progress",
]


def _q(*extra: str) -> list[str]:
    return ["quantize", *CLI_BASE, "--scheme", "minmax", "--out", "out", *extra]


def _a(*extra: str) -> list[str]:
    return ["analyze", *CLI_BASE, "--scheme", "minmax", "--out", "report.html", *extra]


def _c(*extra: str) -> list[str]:
    return [
        "compress",
        "--model",
        "leantorch.models:ResNetSmall",
        "--data",
        "builtin:images",
        "--image-size",
        "32",
        "--num-samples",
        "8",
        "--eval-samples",
        "8",
        "--batch-size",
        "8",
        "--candidates",
        "3",
        "--scheme",
        "weight_svd",
        "--target",
        "0.8",
        "--no-progress",
        "--out",
        "out",
        *extra,
    ]


def _with(argv: list[str], flag: str, value: str) -> list[str]:
    """argv with ``flag``'s value replaced (or appended)."""
    argv = list(argv)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
        return argv
    return argv + [flag, value]


def register_cli() -> None:
    def npy(name: str, array: np.ndarray) -> Callable[[Path], None]:
        def setup(cwd: Path) -> None:
            np.save(cwd / name, array)

        return setup

    rng = np.random.default_rng(0)
    nan_array = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
    nan_array[3, 0, 0, 0] = np.nan

    def corrupt_png(cwd: Path) -> None:
        d = cwd / "imgs"
        d.mkdir()
        from PIL import Image  # scikit-image depends on pillow

        for i in range(3):
            Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(d / f"ok{i}.png")
        (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")

    def empty_dir(cwd: Path) -> None:
        (cwd / "empty").mkdir()

    def out_file(cwd: Path) -> None:
        (cwd / "taken").write_text("x")

    def out_dir(cwd: Path) -> None:
        (cwd / "somedir").mkdir()

    model_files = ["out/model.onnx", "out/model.encodings", "out/model.pth"]
    add_cli("CLI quantize", "valid quantize", _q(), None, expect_files=model_files)
    add_cli(
        "CLI quantize",
        "valid quantize, --batch-size 100 > samples",
        _with(_q(), "--batch-size", "100"),
        None,
        expect_files=model_files,
    )
    add_cli("CLI quantize", "--num-samples 0", _with(_q(), "--num-samples", "0"), ["--num-samples"])
    add_cli("CLI quantize", "--num-samples -1", _with(_q(), "--num-samples", "-1"), ["--num-samples"])
    add_cli("CLI quantize", "--batch-size 0", _with(_q(), "--batch-size", "0"), ["--batch-size"])
    add_cli("CLI quantize", "--image-size 0", _with(_q(), "--image-size", "0"), ["--image-size"])
    add_cli("CLI quantize", "--param-bw 0", _q("--param-bw", "0"), ["--param-bw", "param_bw"])
    add_cli("CLI quantize", "--act-bw 17", _q("--act-bw", "17"), ["--act-bw", "act_bw"])
    add_cli("CLI quantize", "--name ''", _q("--name", ""), ["--name"])
    add_cli("CLI quantize", "--out <an existing file>", _with(_q(), "--out", "taken"), ["--out"], setup=out_file)
    add_cli("CLI quantize", "--data <missing path>", _with(_q(), "--data", "nowhere/x.npy"), ["--data"])
    add_cli(
        "CLI quantize",
        "--data <.npy of shape [8, 5]>",
        _with(_q(), "--data", "x.npy"),
        ["--data"],
        setup=npy("x.npy", rng.standard_normal((8, 5)).astype(np.float32)),
    )
    add_cli(
        "CLI quantize",
        "--data <.npy with NaN>",
        _with(_q(), "--data", "x.npy"),
        ["--data"],
        setup=npy("x.npy", nan_array),
    )
    add_cli(
        "CLI quantize",
        "--data <.npy of 0 samples>",
        _with(_q(), "--data", "x.npy"),
        ["--data"],
        setup=npy("x.npy", np.zeros((0, 3, 32, 32), np.float32)),
    )
    add_cli(
        "CLI quantize", "--data <dir with a corrupt .png>", _with(_q(), "--data", "imgs"), ["--data"], setup=corrupt_png
    )
    add_cli("CLI quantize", "--data <empty dir>", _with(_q(), "--data", "empty"), ["--data"], setup=empty_dir)
    add_cli("CLI quantize", "--model nope (bad spec)", _with(_q(), "--model", "nope"), ["--model"])
    add_cli("CLI quantize", "--model nope_pkg:f (missing module)", _with(_q(), "--model", "nope_pkg:f"), ["--model"])
    add_cli(
        "CLI quantize", "--model leantorch.models:Nope", _with(_q(), "--model", "leantorch.models:Nope"), ["--model"]
    )
    add_cli(
        "CLI quantize",
        "--model builtins:dict (returns a non-module)",
        _with(_q(), "--model", "builtins:dict"),
        ["--model"],
    )
    add_cli("CLI quantize", "--model math:pi (not callable)", _with(_q(), "--model", "math:pi"), ["--model"])
    add_cli(
        "CLI quantize",
        "--model leantorch.data:sample_images (needs arguments)",
        _with(_q(), "--model", "leantorch.data:sample_images"),
        ["--model"],
    )
    add_cli("CLI quantize", "--config nope", _q("--config", "nope"), ["--config"])
    add_cli(
        "CLI quantize",
        "--adaround --adaround-iterations 0",
        _q("--adaround", "--adaround-iterations", "0"),
        ["--adaround-iterations"],
    )
    add_cli(
        "CLI quantize",
        "--adaround --adaround-lr nan",
        _q("--adaround", "--adaround-iterations", "5", "--adaround-lr", "nan"),
        ["--adaround-lr"],
    )
    add_cli("CLI quantize", "--auto --allowed-drop -1", _q("--auto", "--allowed-drop", "-1"), ["--allowed-drop"])
    add_cli("CLI quantize", "--scheme nope", _with(_q(), "--scheme", "nope"), ["--scheme"])
    add_cli("CLI quantize", "--num-samples abc", _with(_q(), "--num-samples", "abc"), ["--num-samples"])

    add_cli("CLI analyze", "valid analyze", _a("--no-sensitivity"), None, expect_files=["report.html"])
    add_cli("CLI analyze", "analyze --layers nope", _a("--layers", "nope"), ["--layers"])
    add_cli(
        "CLI analyze",
        "analyze --out <an existing directory>",
        _with(_a("--no-sensitivity"), "--out", "somedir"),
        ["--out"],
        setup=out_dir,
    )
    add_cli("CLI analyze", "analyze --num-samples 0", _with(_a(), "--num-samples", "0"), ["--num-samples"])
    add_cli(
        "CLI analyze",
        "analyze --plots <an existing file>",
        _a("--no-sensitivity", "--plots", "taken"),
        ["--plots"],
        setup=out_file,
    )

    add_cli("CLI compress", "compress --target 2", _with(_c(), "--target", "2"), ["--target"])
    add_cli("CLI compress", "compress --target 0", _with(_c(), "--target", "0"), ["--target"])
    add_cli("CLI compress", "compress --target nan", _with(_c(), "--target", "nan"), ["--target"])
    add_cli("CLI compress", "compress --eval-samples 0", _with(_c(), "--eval-samples", "0"), ["--eval-samples"])
    add_cli("CLI compress", "compress --num-samples 0", _with(_c(), "--num-samples", "0"), ["--num-samples"])
    add_cli("CLI compress", "compress --candidates 0", _with(_c(), "--candidates", "0"), ["--candidates"])
    add_cli("CLI compress", "compress --rank-multiple 0", _c("--rank-multiple", "0"), ["--rank-multiple"])
    add_cli("CLI compress", "compress --skip nope", _c("--skip", "nope"), ["--skip"])
    add_cli(
        "CLI compress", "compress --out <an existing file>", _with(_c(), "--out", "taken"), ["--out"], setup=out_file
    )
    add_cli("CLI compress", "compress --data <missing path>", _with(_c(), "--data", "nowhere"), ["--data"])


# --------------------------------------------------------------------------------------------- running


def first_line(text: str, limit: int = 220) -> str:
    line = next((s.strip() for s in str(text).splitlines() if s.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def classify_api(case: Case, exc: BaseException | None, problem: str | None, post: list[str]) -> tuple[str, str]:
    partial = [p for p in post if p.startswith("PARTIAL:")]
    post = [p for p in post if not p.startswith("PARTIAL:") and p != problem]
    if exc is None:
        if OK in case.expect and problem is None:
            outcome, note = OK, ""
        elif OK in case.expect:
            outcome, note = "silent", problem or ""
        else:
            outcome, note = "silent", f"no error ({problem or 'returned normally'})"
    elif isinstance(exc, lt.LeanTorchError):
        wanted = [c for c in (error_class(n) for n in case.expect if n != OK) if c is not None]
        outcome = "typed clear" if any(isinstance(exc, c) for c in wanted) else "typed misleading"
        note = ""
    else:
        outcome, note = "generic", ""
    if post:
        outcome, note = "silent", "; ".join([note] + post if note else post)
    if partial and exc is not None:
        outcome = "silent"
        note = (note + "; " if note else "") + f"left partial files {partial[0][8:]}"
    return outcome, note


def api_child(case: Case, tmp: Path, conn: Any) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    torch.set_num_threads(1)
    os.chdir(tmp)
    ctx = Ctx(tmp)
    exc: BaseException | None = None
    problem = None
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            problem = case.fn(ctx)
        except BaseException as e:  # noqa: BLE001 - classifying is the point
            exc = e
    seconds = time.perf_counter() - start
    post = []
    for check in ctx.checks:
        try:
            p = check()
        except BaseException as e:  # noqa: BLE001
            p = f"post-check failed: {type(e).__name__}: {first_line(str(e))}"
        if p:
            post.append(p)
    try:
        mutated = ctx.mutations()
    except BaseException as e:  # noqa: BLE001
        mutated = [f"could not compare: {e}"]
    outcome, note = classify_api(case, exc, problem, post)
    if exc is not None and outcome in ("generic", "typed misleading"):
        tb = traceback.extract_tb(exc.__traceback__)
        where = next((f"{Path(f.filename).name}:{f.lineno}" for f in reversed(tb) if "leantorch" in f.filename), "")
        note = (note + "; " if note else "") + (f"raised at {where}" if where else "")
    conn.send(
        {
            "outcome": outcome,
            "exc_type": type(exc).__name__ if exc is not None else "",
            "message": first_line(str(exc)) if exc is not None else "",
            "note": note,
            "mutated": "; ".join(mutated),
            "seconds": seconds,
            "warnings": [first_line(str(w.message), 120) for w in caught][:3],
        }
    )
    conn.close()
    os._exit(0)


def cli_child(argv: list[str], err_path: Path, cwd: Path) -> None:
    """``python -m leantorch.cli argv`` without the interpreter start: same exit code, same stderr."""
    os.chdir(cwd)
    err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(err, 2)
    sys.argv = ["leantorch", *argv]
    torch.set_num_threads(1)
    from leantorch.cli import main

    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(code if isinstance(code, int) else 0)


def run_cli(case: Case, tmp: Path, timeout: float, mode: str) -> dict[str, Any]:
    spec = case.cli
    assert spec is not None
    cwd = tmp / "cwd"
    cwd.mkdir()
    if spec["setup"]:
        spec["setup"](cwd)
    before = set(_files(cwd))
    err_path = tmp / "stderr.txt"
    start = time.perf_counter()
    code: int | None
    if mode == "subprocess":
        cmd = [
            sys.executable,
            "-c",
            "import sys; from leantorch.cli import main; sys.exit(main(sys.argv[1:]))",
            *spec["argv"],
        ]
        with open(err_path, "w") as err:
            try:
                code = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                code = None
    else:
        proc = mp.get_context("fork").Process(target=cli_child, args=(spec["argv"], err_path, cwd))
        proc.start()
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join()
            code = None
        else:
            code = proc.exitcode
    seconds = time.perf_counter() - start
    stderr = err_path.read_text(errors="replace") if err_path.exists() else ""
    new_files = sorted(set(_files(cwd)) - before)
    result = {"exc_type": "", "message": "", "note": "", "mutated": "", "seconds": seconds, "warnings": []}
    lines = [s for s in stderr.splitlines() if s.strip()]
    error_lines = [i for i, s in enumerate(lines) if "error:" in s]
    message = lines[error_lines[-1]].strip() if error_lines else (lines[-1].strip() if lines else "")
    traceback_seen = "Traceback (most recent call last)" in stderr
    if traceback_seen:
        result["exc_type"] = lines[-1].split(":")[0] if lines else ""
    result["message"] = first_line(message)
    if code is None:
        result["outcome"], result["note"] = "hang", f"killed after {timeout:.0f} s"
        return result
    result["note"] = f"exit {code}"
    if spec["names"] == []:  # valid input
        missing = [f for f in spec["expect_files"] if not (cwd / f).is_file()]
        if code == 0 and not missing:
            result["outcome"] = OK
        elif code == 0:
            result["outcome"], result["note"] = "silent", f"exit 0 but missing {missing}"
        elif code == 2 and not traceback_seen:
            result["outcome"] = "typed misleading"
        else:
            result["outcome"] = "generic"
        return result
    if code == 0:
        result["outcome"], result["note"] = "silent", f"exit 0, wrote {new_files[:4]}"
        return result
    if code != 2 or traceback_seen:
        result["outcome"] = "generic"
    else:
        norm = lambda s: s.lower().replace("_", "-").lstrip("-")  # noqa: E731
        named = any(norm(n) in norm(message) for n in spec["names"])
        single = bool(error_lines) and error_lines[-1] == len(lines) - 1
        if named and single:
            result["outcome"] = "typed clear"
        else:
            result["outcome"] = "typed misleading"
            why = [] if named else [f"does not name {spec['names'][0]}"]
            why += [] if single else ["message is not a single last 'error:' line"]
            result["note"] += "; " + ", ".join(why)
    if new_files:
        result["outcome"] = "silent"
        result["note"] += f"; failed but left files {new_files[:4]}"
    return result


def run_api(case: Case, tmp: Path, timeout: float) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=api_child, args=(case, tmp, send))
    start = time.perf_counter()
    proc.start()
    send.close()
    result = None
    if recv.poll(timeout):
        try:
            result = recv.recv()
        except EOFError:
            result = None
    proc.join(5 if result is not None else 0)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if result is None:
        elapsed = time.perf_counter() - start
        if elapsed >= timeout:
            return {
                "outcome": "hang",
                "exc_type": "",
                "message": "",
                "note": f"killed after {timeout:.0f} s",
                "mutated": "",
                "seconds": elapsed,
                "warnings": [],
            }
        return {
            "outcome": "generic",
            "exc_type": "crash",
            "message": f"worker died (exit code {proc.exitcode})",
            "note": "the process crashed (segfault/abort)",
            "mutated": "",
            "seconds": elapsed,
            "warnings": [],
        }
    return result


def warm_up() -> None:
    """Pay torch's first-call costs once in the parent, so that each forked case starts warm."""
    torch.set_num_threads(1)
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        for model, shape in ((seq_model(), SEQ_SHAPE), (ltm.ResNetSmall(width=8).eval(), (3, 32, 32))):
            sim = lt.QuantSim(model, xin(shape), per_channel=True)
            sim.compute_encodings(calib(shape), progress=False)
        tmp = Path(tempfile.mkdtemp(prefix="lt_warm_"))
        model, data = seq_model(), calib()
        steps: list[Callable[[], Any]] = [
            lambda: lt.adaround(model, xin(), data, path=tmp, **ADA),
            lambda: lt.bias_correction(lt.equalize(model, xin()), xin(), data, method="hybrid", progress=False),
            lambda: lt.qat.fit(
                calibrated(lt.fold_batch_norms(model, xin())[0], range_learning=True),
                [(x, torch.zeros(len(x), dtype=torch.long)) for x in data],
                F.cross_entropy,
                progress=False,
            ),
            lambda: lt.analyze(calibrated(model), mse_score(model, data), data, progress=False).to_html(tmp / "r.html"),
            lambda: calibrated(model).export(tmp, "model"),
        ]
        cmodel, cdata = compress_model(), calib(COMPRESS_SHAPE)
        for scheme in ("weight_svd", "spatial_svd", "channel_pruning"):
            steps.append(
                lambda scheme=scheme: lt.compress(
                    cmodel,
                    xin(COMPRESS_SHAPE),
                    mse_score(cmodel, cdata),
                    scheme,
                    0.7,
                    calibration=cdata,
                    candidates=3,
                    progress=False,
                )
            )
        for step in steps:
            try:
                step()
            except Exception:  # noqa: BLE001 - warming up only; the cases report errors
                pass
        shutil.rmtree(tmp, ignore_errors=True)


def markdown_summary(results: list[tuple[Case, dict[str, Any]]]) -> str:
    groups: dict[str, dict[str, int]] = {}
    for case, r in results:
        row = groups.setdefault(case.group, {k: 0 for k in OUTCOMES + ["mutated", "total"]})
        row[r["outcome"]] += 1
        row["mutated"] += bool(r["mutated"])
        row["total"] += 1
    cols = OUTCOMES + ["mutated", "total"]
    lines = ["| input class | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    totals = {k: 0 for k in cols}
    for group, row in groups.items():
        lines.append(f"| {group} | " + " | ".join(str(row[k]) for k in cols) + " |")
        for k in cols:
            totals[k] += row[k]
    lines.append("| **total** | " + " | ".join(f"**{totals[k]}**" for k in cols) + " |")
    return "\n".join(lines)


def markdown_details(results: list[tuple[Case, dict[str, Any]]]) -> str:
    def cell(s: Any) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    out = [
        "| # | input class | case | expected | outcome | exception | message (first line) | note | mutated | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, (case, r) in enumerate(results, 1):
        note = r["note"]
        if r.get("warnings") and r["outcome"] == "silent":
            note = (note + "; " if note else "") + "warned: " + " / ".join(r["warnings"])
        out.append(
            f"| {i} | {cell(case.group)} | {cell(case.name)} | {cell(' or '.join(case.expect))} | "
            f"{r['outcome']} | {cell(r['exc_type'])} | {cell(r['message'])} | {cell(note)} | "
            f"{cell(r['mutated'])} | {r['seconds']:.1f} |"
        )
    return "\n".join(out)


def register_all() -> None:
    register_bitwidths()
    register_options()
    register_calibration()
    register_example_input()
    register_models()
    register_encodings()
    register_qat()
    register_layers_analyze_export()
    register_compress()
    register_cli()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--details", default="benchmarks/bad_inputs_details.md", help="per-case markdown list")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per case before it counts as a hang")
    parser.add_argument("--only", help="run only cases whose group or name contains this text")
    parser.add_argument(
        "--cli-mode",
        choices=["fork", "subprocess"],
        default="fork",
        help="CLI cases: call leantorch.cli.main in a forked child (fast) or in a fresh `python -c` process",
    )
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)
    register_all()
    cases = [c for c in CASES if not args.only or args.only in c.group or args.only in c.name]
    if args.list:
        for c in cases:
            print(f"{c.group}\t{c.name}\t{' or '.join(c.expect)}")
        print(f"{len(cases)} cases", file=sys.stderr)
        return 0
    warm_up()
    root = Path(tempfile.mkdtemp(prefix="lt_bad_inputs_"))
    results: list[tuple[Case, dict[str, Any]]] = []
    start = time.perf_counter()
    try:
        for i, case in enumerate(cases):
            tmp = root / f"case{i:03d}"
            tmp.mkdir()
            if case.cli is not None:
                r = run_cli(case, tmp, args.timeout, args.cli_mode)
            else:
                r = run_api(case, tmp, args.timeout)
            results.append((case, r))
            print(
                f"[{i + 1}/{len(cases)}] {r['outcome']:16s} {case.group}: {case.name} ({r['seconds']:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    elapsed = time.perf_counter() - start
    header = (
        f"leantorch from `{Path(lt.__file__).parent}`; {len(results)} cases in {elapsed:.0f} s "
        f"(CLI via {args.cli_mode}, {args.timeout:.0f} s per case)"
    )
    summary = markdown_summary(results)
    print(header + "\n\n" + summary)
    details = Path(args.details)
    details.parent.mkdir(parents=True, exist_ok=True)
    details.write_text(f"# Bad-input survey: details\n\n{header}\n\n{summary}\n\n{markdown_details(results)}\n")
    print(f"\ndetails: {details}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
