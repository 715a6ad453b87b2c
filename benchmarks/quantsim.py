"""QuantSim speed on EfficientNet-Lite0: simulated vs float forward, calibration per scheme, ONNX Runtime.

Run: ``make bench`` or ``.venv/bin/python benchmarks/quantsim.py [--device cuda] [--repeats 5]``.
Prints markdown tables; times are medians over ``--repeats`` runs after one warm-up run;
compared variants are timed in alternation so that machine drift affects them alike.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
import warnings

import onnxruntime as ort
import torch

import leantorch as lt
from leantorch.data import batches, sample_images
from leantorch.evaluation import markdown_table
from leantorch.models import efficientnet_lite0


def _timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def paired_medians(fns: dict, repeats: int) -> dict[str, float]:
    """Median times of several functions measured in alternation, so machine drift hits all alike."""
    for fn in fns.values():
        fn()  # warm-up (allocator, kernels, weight caches)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_timed(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def forward_table(device: str, batch: torch.Tensor, calib: list[torch.Tensor], repeats: int) -> list[dict]:
    rows = []
    raw = efficientnet_lite0().to(device)
    folded, _ = lt.fold_batch_norms(raw, batch[:1].to(device))
    for label, model, per_channel in (
        ("as trained (BN not folded)", raw, False),
        ("BN folded, per-tensor", folded, False),
        ("BN folded, per-channel", folded, True),
    ):
        sim = lt.QuantSim(model, batch[:1].to(device), per_channel=per_channel)
        sim.compute_encodings(calib[:2], progress=False)
        x = batch.to(device)
        with torch.no_grad():
            t = paired_medians(
                {"fp": lambda model=model, x=x: model(x), "q": lambda sim=sim, x=x: sim.model(x)}, repeats
            )
        t_fp, t_q = t["fp"], t["q"]
        rows.append({"model": label, "FP32 forward (s)": t_fp, "sim.model forward (s)": t_q, "sim / FP32": t_q / t_fp})
    return rows


def calibration_table(device: str, calib: list[torch.Tensor]) -> list[dict]:
    folded, _ = lt.fold_batch_norms(efficientnet_lite0().to(device), calib[0][:1].to(device))
    rows = []
    images = sum(len(b) for b in calib)
    for scheme in ("minmax", "tf_enhanced", "percentile", "mse"):
        sim = lt.QuantSim(folded, calib[0][:1].to(device), scheme=scheme)
        start = time.perf_counter()
        sim.compute_encodings(calib, progress=False)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        rows.append({"scheme": scheme, "images": images, "compute_encodings (s)": time.perf_counter() - start})
    return rows


def onnx_table(batch: torch.Tensor, calib: list[torch.Tensor], repeats: int) -> list[dict]:
    folded, _ = lt.fold_batch_norms(efficientnet_lite0(), batch[:1])
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            folded,
            (batch[:1],),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )
    sim = lt.QuantSim(folded, batch[:1], per_channel=True)
    sim.compute_encodings(calib[:2], progress=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        qdq_path = sim.export(tmp, "qdq")["onnx"]
        sessions = {
            "FP32": ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"]),
            "W8A8 QDQ (leantorch export)": ort.InferenceSession(str(qdq_path), providers=["CPUExecutionProvider"]),
        }
        for size in (1, len(batch)):
            x = batch[:size].numpy()
            times = paired_medians(
                {name: (lambda s=s, x=x: s.run(None, {"input": x})) for name, s in sessions.items()}, repeats
            )
            fp = times["FP32"]
            for name, t in times.items():
                rows.append({"ONNX Runtime model": name, "batch": size, "latency (ms)": t * 1e3, "vs FP32": t / fp})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--calibration", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--skip-onnx", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    images = sample_images(args.calibration, seed=0)
    calib = batches(images, args.batch_size)
    batch = sample_images(args.batch_size, seed=1)
    print(
        f"EfficientNet-Lite0, device {args.device}, torch {torch.__version__}, {os.cpu_count()} CPU cores, "
        f"{torch.get_num_threads()} torch threads\n"
    )
    print(f"### Forward, batch {args.batch_size}\n")
    print(markdown_table(forward_table(args.device, batch, calib, args.repeats)))
    print(f"\n### compute_encodings on {args.calibration} images (BN folded, per-tensor W8A8)\n")
    print(markdown_table(calibration_table(args.device, calib)))
    if not args.skip_onnx:
        print(f"\n### ONNX Runtime {ort.__version__} (CPU), BN folded, per-channel W8A8\n")
        print(markdown_table(onnx_table(batch, calib, args.repeats)))


if __name__ == "__main__":
    main()
