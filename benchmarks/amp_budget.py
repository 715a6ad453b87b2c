"""Budgeted AMP on EfficientNet-Lite0: under half of W8's weight bytes, then the chosen mix re-rounded sequentially.

``lt.mixed_precision`` with candidates W8A16, W4A16, W3A16 (asymmetric per-channel grids, asymmetric GPTQ
candidates), ``cost="memory"``, ``max_cost=BUDGET`` (relative to all-W8), ``allowed_drop=0``: the costliest point of
the greedy list within the budget (search set: 256 crops, seed 2). Then one sequential asymmetric ``lt.gptq`` over
the chosen per-layer bitwidths (each AMP candidate was rounded with every layer at that candidate). Prints the AMP row
(held-out agreement on 500 crops, seed 1) and the re-rounded mix's held-out agreement.

Run: ``.venv/bin/python benchmarks/amp_budget.py CALIBRATION BUDGET`` (e.g. ``64 0.49``).
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import weights as W

import leantorch as lt
from leantorch.evaluation import Agreement, model_outputs
from leantorch.ptq.gptq import GptqConfig

args = argparse.Namespace(
    calibration=int(sys.argv[1]), search=256, probe=32, evaluation=500, batch_size=32, front_evals=8, no_progress=True
)
budget = float(sys.argv[2])
env = W._setup(args)
scores = W._scores(env)
asym = {"param_symmetric": False}
amp, s = W._search(
    env,
    args,
    scores,
    candidates="W8A16,W4A16,W3A16",
    allowed_drop=0.0,
    cost="memory",
    max_cost=budget,
    baseline="fp32",
    rounding="gptq",
    config=asym,
    rounding_options=GptqConfig(asymmetric=True, param_scheme="mse", progress=False, config=asym),
)
row = W._amp_row("budget", "W8A16,W4A16,W3A16", amp, env, s)
print(row, flush=True)
cfgs = amp.chosen.config
(Path(__file__).parent / "results" / f"amp_budget_{budget}.json").write_text(json.dumps(cfgs, indent=1))
by = {c.name: c for c in amp.candidates}
layers = {g: {"param_bw": by[c].param_bw} for g, c in cfgs.items()}
print({c: sum(v == c for v in cfgs.values()) for c in set(cfgs.values())})
tmp = tempfile.mkdtemp()
t = time.time()
cb = env["calib"]
wts, enc = lt.gptq(
    env["folded"],
    cb[0][:1],
    cb,
    param_bw=4,
    act_bw=16,
    per_channel=True,
    param_scheme="mse",
    config={**asym, "layers": layers},
    num_batches=len(cb),
    asymmetric=True,
    progress=False,
    path=tmp,
)
sim = lt.QuantSim(wts, cb[0][:1], param_bw=4, act_bw=16, per_channel=True, config={**asym, "layers": layers})
sim.set_and_freeze_param_encodings(enc)
sim.compute_encodings(cb, progress=False)
a = Agreement.of(env["reference"], model_outputs(sim.model, env["held_out"], progress=False))
print("re-rounded sequentially", a.top1, a.sqnr_db, time.time() - t, flush=True)
