"""Issue 15's tools on the real all-MiniLM-L6-v2: block reconstruction, downstream activation ranges, AdaRound and
GPTQ beside round-to-nearest, at W8A8 and W4A8; sentence-embedding cosine with FP32.

Data, metric and activation configs as ``benchmarks/weights_rounding.py`` (56 evaluation sentences, 64 calibration
sentences in batches of 16; mean/min cosine of the mean-pooled embeddings). Two activation configs: the
``transformer`` preset (16-bit Linear/LayerNorm/Softmax/Add/Concat outputs, the rest 8-bit) and ``per_channel``
(every activation 8-bit, per-channel weights), where activation ranges matter most. Embeddings and LayerNorm
parameters stay float in both; Linear weights per channel (W8, W4) or in blocks of 32 (W4).

Every row is evaluated in a QuantSim built like the one the method used: its file is loaded frozen
(``load_encodings(freeze=True)`` for reconstruct, whose file also holds learned activation step sizes;
``set_and_freeze_param_encodings`` otherwise) and the other activations calibrated on the calibration sentences.

Run: ``.venv/bin/python benchmarks/minilm_ptq.py [--methods nearest,downstream,reconstruct,adaround,gptq,
gptq_asymmetric]``.
Writes ``benchmarks/results/minilm_ptq.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

# The sibling benchmark's MiniLM set-up (run as `python benchmarks/...`, the script's folder is on sys.path).
from weights_rounding import minilm_config, minilm_env

import leantorch as lt
from leantorch.evaluation import markdown_table

RESULTS = Path(__file__).parent / "results" / "minilm_ptq.json"
#: (label, param_bw, param_block_size)
WEIGHTS = [("W8A8", 8, None), ("W4A8", 4, None), ("W4A8 block-32", 4, 32)]
ROUNDERS = {
    "reconstruct": lt.reconstruct,
    "adaround": lt.adaround,
    "gptq": lt.gptq,
    # each Linear fitted to the float model's outputs from the quantized inputs: it also undoes activation
    # quantization upstream, so it runs at W8A8 too
    "gptq_asymmetric": functools.partial(lt.gptq, asymmetric=True),
    # the same with 100× the damping (the least-squares fit pulled hard towards the float weights): on MiniLM the
    # default fit loses to plain GPTQ
    "gptq_asymmetric_damped": functools.partial(lt.gptq, asymmetric=True, damping=10.0),
}


def activation_config(name: str) -> lt.QuantSimConfig:
    """The preset (embeddings/LayerNorm parameters float), or per_channel with every activation 8-bit."""
    if name == "transformer":
        return minilm_config()
    cfg = lt.QuantSimConfig.preset("per_channel")
    for op in ("Embedding", "LayerNorm"):
        cfg.op_types[op] = dataclasses.replace(cfg.op_types.get(op, lt.OpRule()), params_quantized=False)
    return cfg


def run(env: dict[str, Any], method: str, bits: int, block: int | None, config: Any, iterations: int) -> dict:
    sim_options = dict(param_bw=bits, act_bw=8, per_channel=True, param_block_size=block, config=config)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, encodings = env["model"], None
        if method in ROUNDERS:
            extra = {"iterations": iterations} if method in ("reconstruct", "adaround") else {}
            model, encodings = ROUNDERS[method](
                model,
                env["example"],
                env["calibration"],
                num_batches=len(env["calibration"]),
                path=tmp,
                progress=False,
                **sim_options,
                **extra,
            )
        scheme = "downstream" if method == "downstream" else "tf_enhanced"
        sim = lt.QuantSim(model, env["example"], scheme=scheme, param_scheme="mse", **sim_options)
        if method == "reconstruct":
            sim.load_encodings(encodings, freeze=True)
        elif encodings is not None:
            sim.set_and_freeze_param_encodings(encodings)
        sim.compute_encodings(env["calibration"], progress=False)
        score = env["score"](sim.model)
    return {"seconds": round(time.perf_counter() - start, 1), **{k: round(v, 4) for k, v in score.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--methods", default="nearest,downstream,reconstruct,adaround,gptq,gptq_asymmetric")
    # (also: gptq_asymmetric_damped)
    parser.add_argument("--configs", default="transformer,per_channel")
    parser.add_argument("--weights", default=",".join(w[0] for w in WEIGHTS))
    parser.add_argument("--iterations", type=int, default=200, help="reconstruct/AdaRound steps per block/layer")
    args = parser.parse_args()
    torch.manual_seed(0)
    env = minilm_env(False, more_calibration=True)
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"rows": []}
    results["data"] = env["data"]
    for config_name in args.configs.split(","):
        for label, bits, block in [w for w in WEIGHTS if w[0] in args.weights.split(",")]:
            for method in args.methods.split(","):
                if bits == 8 and method in ("adaround", "gptq"):
                    continue  # 8-bit weights: rounding is not where the error is
                row = {"activations": config_name, "weights": label, "method": method}
                row |= run(env, method, bits, block, activation_config(config_name), args.iterations)
                keys = ("activations", "weights", "method")
                results["rows"] = [
                    r for r in results["rows"] if tuple(r[k] for k in keys) != tuple(row[k] for k in keys)
                ]
                results["rows"].append(row)
                RESULTS.write_text(json.dumps(results, indent=1))
                print(row, flush=True)
    print(f"\nall-MiniLM-L6-v2, {env['data']}\n")
    print(markdown_table(results["rows"]))


if __name__ == "__main__":
    main()
