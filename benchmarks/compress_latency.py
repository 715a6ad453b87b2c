"""Does a MAC ratio buy latency? ONNX Runtime on compressed EfficientNet-Lite0, FP32 and INT8 QDQ.

For each scheme, target MAC ratio and ``rank_multiple`` (1: exact ranks / channel counts; 8: rounded up to a
multiple of 8, the default), EfficientNet-Lite0 (ImageNet weights) is compressed with the CLI's settings
(scores: top-1 agreement with FP32 on held-out sample-image crops), then timed in ONNX Runtime against the
original at batch 1 and 32 (``lt.compress.compare_latency``: runs alternated, medians), as a float model and as
a W8A8 per-channel QDQ export (against the original's QDQ export). Ratios < 1 are faster.

Run: ``.venv/bin/python benchmarks/compress_latency.py [--threads 2] [--repeats 10]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import leantorch as lt
from leantorch.compress import CompressionError
from leantorch.data import batches, channels_last, sample_images
from leantorch.evaluation import agreement_score, markdown_table
from leantorch.models import efficientnet_lite0

CONFIGS = [("channel_pruning", 0.9), ("channel_pruning", 0.75), ("channel_pruning", 0.5), ("spatial_svd", 0.75)]


def qdq_file(model: torch.nn.Module, example: torch.Tensor, calib: list[torch.Tensor], out: Path, name: str) -> Path:
    sim = lt.QuantSim(model, example, param_bw=8, act_bw=8, per_channel=True)
    sim.compute_encodings(calib, progress=False)
    return sim.export(out, name)["onnx"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="ONNX Runtime threads")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds per batch size")
    parser.add_argument("--multiples", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    model, images = channels_last(efficientnet_lite0(), sample_images(96, seed=0))
    calib, evals = batches(images[:64], 8), batches(images[64:], 8)
    example = calib[0][:1]
    score = agreement_score(model, evals)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        original_qdq = qdq_file(model, example, calib[:4], out, "original")
        for scheme, target in CONFIGS:
            for multiple in args.multiples:
                start = time.perf_counter()
                try:
                    compressed, info = lt.compress(
                        model,
                        example,
                        score,
                        scheme,
                        target,
                        calibration=calib,
                        candidates=5,
                        rank_multiple=multiple,
                        progress=False,
                    )
                except CompressionError as err:  # e.g. channel counts rounded up to 8 cannot go low enough
                    rows.append(
                        {
                            "scheme": scheme,
                            "target": target,
                            "rank_multiple": multiple,
                            "MAC ratio": f"unreachable ({str(err)[:60]}...)",
                        }
                    )
                    print(markdown_table(rows[-1:]), flush=True)
                    continue
                seconds = time.perf_counter() - start
                compressed_qdq = qdq_file(compressed, example, calib[:4], out, f"{scheme}_{target}_{multiple}")
                fp32 = lt.compress.compare_latency(
                    {"original": model, "compressed": compressed}, example, repeats=args.repeats, threads=args.threads
                )
                int8 = lt.compress.compare_latency(
                    {"original": original_qdq, "compressed": compressed_qdq},
                    example,
                    repeats=args.repeats,
                    threads=args.threads,
                )
                ratio = {
                    (kind, r["batch"]): r["latency ratio"]
                    for kind, table in (("fp32", fp32), ("int8", int8))
                    for r in table
                    if r["model"] == "compressed"
                }
                rows.append(
                    {
                        "scheme": scheme,
                        "target": target,
                        "rank_multiple": multiple,
                        "MAC ratio": info.mac_ratio,
                        "top-1 agreement": info.score,
                        "FP32 latency b1": ratio[("fp32", 1)],
                        "FP32 latency b32": ratio[("fp32", 32)],
                        "INT8 latency b1": ratio[("int8", 1)],
                        "INT8 latency b32": ratio[("int8", 32)],
                        "compress (s)": seconds,
                    }
                )
                print(markdown_table(rows[-1:]), flush=True)
    print(
        f"\nEfficientNet-Lite0, ONNX Runtime {args.threads} thread(s), latency ratios to the original "
        f"(FP32 vs FP32, INT8 QDQ vs INT8 QDQ), medians of {args.repeats} alternated runs:\n"
    )
    columns = list(max(rows, key=len))  # rows of unreachable targets have fewer columns
    print(markdown_table([{c: row.get(c, "") for c in columns} for row in rows]))


if __name__ == "__main__":
    main()
