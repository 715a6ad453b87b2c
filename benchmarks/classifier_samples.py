"""Is EfficientNet-Lite0's classifier sample-starved in GPTQ? (issue 13 investigation)

Rounds the 0.499× AMP mix once by asymmetric GPTQ on 1,024 calibration crops (as ``weights_budget.py --only hand_mix
--mix-file ... --calibration 1024``), caches the classifier ``_fc``'s pooled input features (quantized model and
float model) for 8,192 crops (seed 0: the first 1,024 are the calibration crops) and for the 2,000 held-out crops
(seed 1), then re-rounds ``_fc`` alone (asymmetric GPTQ) from the first N of them and scores top-1 agreement and
SQNR with FP32 from the held-out features (the backbone fixed; the 16-bit output quantizer left out).

Measured 2026-12-06 (2-core CPU; ~8 min GPTQ + ~6 min features; cache in /tmp/fcprobe): the whole model 0.927 /
20.68 dB; ``_fc`` from N = 1,024 / 2,048 / 4,096 / 8,192 crops (damping 0.1): 0.926 / 20.7, 0.924 / 21.1, 0.926 /
21.4, 0.933 / 21.6 dB (damping 0.01: 0.921 / 19.7, 0.931 / 20.5, 0.929 / 21.3, 0.934 / 21.7); with 5 clip ratios
within ±0.006; the float ``_fc`` on the quantized features 0.922 / 21.35 dB. One 1,280-vector per crop: the
classifier's Hessian is starved at 1,024 crops, but its share of the error is ~1 dB.

Run: ``.venv/bin/python benchmarks/classifier_samples.py`` (results: ``benchmarks/results/classifier_samples.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from weights_budget import ASYMMETRIC, _environment, mix_layers  # noqa: E402

import leantorch as lt  # noqa: E402
from leantorch.data import batches, channels_last, sample_images  # noqa: E402
from leantorch.evaluation import Agreement, model_outputs  # noqa: E402
from leantorch.ptq import gptq as G  # noqa: E402

MIX = str(Path(__file__).parent / "results/weights_budget_mix_0.499_256crops_W8A16-W6A16-W5A16-W4A16-W3A16_float.json")
OUT = Path("/tmp/fcprobe")
OUT.mkdir(exist_ok=True)
torch.set_grad_enabled(False)
args = argparse.Namespace(
    calibration=1024, search=256, probe=32, evaluation=2000, batch_size=32, front_evals=8, no_progress=True
)
env = _environment(args)
layers, _ = mix_layers(env["folded"], 3, MIX)
config = {**ASYMMETRIC, "layers": layers}
calib, example = env["calib"], env["calib"][0][:1]
t = time.time()
if not (OUT / "rounded.pt").exists():
    with tempfile.TemporaryDirectory() as tmp:
        rounded, enc = lt.gptq(
            env["folded"],
            example,
            calib,
            param_bw=4,
            act_bw=16,
            per_channel=True,
            param_scheme="mse",
            config=config,
            num_batches=len(calib),
            asymmetric=True,
            progress=False,
            path=tmp,
        )
        (OUT / "gptq.encodings").write_text(Path(enc).read_text())
    torch.save(rounded, OUT / "rounded.pt")
    print("gptq", time.time() - t, flush=True)
rounded = torch.load(OUT / "rounded.pt", weights_only=False)
sim = lt.QuantSim(rounded, example, param_bw=4, act_bw=16, per_channel=True, config=config)
sim.set_and_freeze_param_encodings(OUT / "gptq.encodings")
sim.compute_encodings(calib, progress=False)
held = Agreement.of(env["reference"], model_outputs(sim.model, env["held_out"], progress=False))
print("full model", held.top1, held.sqnr_db, flush=True)


def features(model, wrapper_or_module, data, quantize=False):
    seen = []
    h = wrapper_or_module.register_forward_pre_hook(lambda _, a: seen.append(a[0].detach()))
    for b in data:
        model(b)
    h.remove()
    x = torch.cat(seen)
    if quantize and len(wrapper_or_module.input_quantizers):
        x = wrapper_or_module.input_quantizers[0](x)
    return x


wrapper = sim.layers()["_fc"]
fp_fc = env["folded"].get_submodule("_fc")
if not (OUT / "feats.pt").exists():
    t = time.time()
    N = 8192
    imgs = channels_last(env["model"], sample_images(N, seed=0))[1]
    cal = batches(imgs, 64)
    fq = features(sim.model, wrapper, cal, quantize=True)
    ff = features(env["folded"], fp_fc, cal)
    hq = features(sim.model, wrapper, env["held_out"], quantize=True)
    torch.save({"fq": fq, "ff": ff, "hq": hq}, OUT / "feats.pt")
    print("features", time.time() - t, flush=True)
F = torch.load(OUT / "feats.pt")
fq, ff, hq = F["fq"], F["ff"], F["hq"]
enc = wrapper.param_quantizers["weight"].encoding
W = fp_fc.weight.detach()
bias = fp_fc.bias.detach()


def score(Wq):
    logits = hq @ Wq.T + bias
    a = Agreement.of(env["reference"], logits)
    return round(a.top1, 4), round(a.sqnr_db, 2)


print("current _fc (from sim)", score(wrapper.module.weight.detach()), flush=True)
results = {}
for n in (1024, 2048, 4096, 8192):
    for damping in (0.1, 0.01):
        for ratios in ((), (1.0, 0.9, 0.8, 0.7, 0.6)):
            cfg = G.GptqConfig(asymmetric=True, damping=damping, clip_ratios=ratios)
            r = G._round_towards_float(fp_fc, W, enc, [ff[:n]], [fq[:n]], cfg)
            Wq = r.weight if isinstance(r, G.RoundedLayer) else r
            results[f"n={n} damping={damping} clip={len(ratios)}"] = score(Wq)
            print(n, damping, len(ratios), results[f"n={n} damping={damping} clip={len(ratios)}"], flush=True)
# float _fc (no quantization) and W4
print("float _fc", score(W), flush=True)
(Path(__file__).parent / "results/classifier_samples.json").write_text(json.dumps(results, indent=1) + "\n")
