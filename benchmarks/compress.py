"""Compression demonstrations: MAC ratio vs accuracy, with and without a short fine-tune.

(a) ResNet-style CNN trained on scikit-learn ``digits`` (upsampled to 32×32, fixed split): SSVD → channel
    pruning at 0.5 MAC ratio, test accuracy before and after ≤ 3 epochs of fine-tuning, against the
    uncompressed model.
(b) ImageNet-pretrained EfficientNet-Lite0: weight SVD and channel pruning at 0.75 and 0.5 MAC ratio; top-1
    agreement with FP32 on sample-image crops before and after a short distillation fine-tune against the
    FP32 outputs (KL on softened logits).
(c) Wall time to build each eval-score table and to select the ratios.
Every compressed model is then quantized (W8A8 QuantSim) and exported to ONNX.

Run: ``.venv/bin/python benchmarks/compress.py [--part a|b|all]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F

import leantorch as lt
from leantorch.data import batches, digits, sample_images
from leantorch.evaluation import Agreement, markdown_table, model_outputs, sqnr_score
from leantorch.models import ResNetSmall, accuracy, efficientnet_lite0, train_classifier


def quantizes_and_exports(model: torch.nn.Module, example: torch.Tensor, calibration: list[torch.Tensor]) -> str:
    sim = lt.QuantSim(model, example, param_bw=8, act_bw=8, per_channel=True)
    sim.compute_encodings(calibration[:2], progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        files = sim.export(tmp, "compressed")
        return "yes" if files["onnx"].stat().st_size > 0 else "no"


def digits_part(args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = digits(size=32)
    model = train_classifier(ResNetSmall(num_classes=10, in_channels=1, width=32), x_train, y_train, epochs=10)
    baseline = accuracy(model, x_test, y_test)
    # Ratios are chosen on a held-out part of the training set, never on the test set.
    x_val, y_val = x_train[-256:], y_train[-256:]
    calibration = list(torch.split(x_train[:256], 64))
    start = time.perf_counter()
    compressed, info = lt.compress(
        model,
        x_train[:1],
        lambda m: accuracy(m, x_val, y_val),
        ["spatial_svd", "channel_pruning"],
        target_mac_ratio=0.5,
        calibration=calibration,
        progress=False,
    )
    seconds = time.perf_counter() - start
    before = accuracy(compressed, x_test, y_test)
    train_classifier(compressed, x_train, y_train, epochs=args.digits_epochs, lr=1e-3)
    after = accuracy(compressed, x_test, y_test)
    return [
        {
            "model": "digits ResNet, SSVD→CP",
            "MAC ratio": info.mac_ratio,
            "FP32 test accuracy": baseline,
            "compressed": before,
            f"after {args.digits_epochs} epochs fine-tune": after,
            "table (s)": info.seconds["table"],
            "selection (s)": info.seconds["selection"],
            "total (s)": seconds,
            "quantizes+exports": quantizes_and_exports(compressed, x_train[:1], calibration),
        }
    ]


def distill(
    student: torch.nn.Module,
    teacher_logits: torch.Tensor,
    images: torch.Tensor,
    epochs: int,
    batch_size: int = 32,
    lr: float = 1e-4,
    temperature: float = 2.0,
) -> None:
    """Fine-tune ``student`` to match the FP32 logits (KL on temperature-softened outputs)."""
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    student.train()
    for module in student.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()  # few images: keep the pretrained statistics
    for _ in range(epochs):
        for x, t in zip(torch.split(images, batch_size), torch.split(teacher_logits, batch_size)):
            loss = (
                F.kl_div(
                    F.log_softmax(student(x) / temperature, -1), F.softmax(t / temperature, -1), reduction="batchmean"
                )
                * temperature**2
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    student.eval()


def efficientnet_part(args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(0)
    model = efficientnet_lite0()
    table_images = sample_images(args.table_images, seed=2)
    evals = batches(sample_images(args.eval_images, seed=1), 32)
    train = sample_images(args.train_images, seed=3)
    calibration = batches(sample_images(64, seed=0), 16)
    reference = model_outputs(model, evals, progress=False)
    teacher = model_outputs(model, batches(train, 32), progress=False)
    # A continuous score (output SQNR vs FP32) separates layers on few images; agreement is reported.
    table_score = sqnr_score(model, [table_images])

    rows = []
    for scheme in ("weight_svd", "channel_pruning"):
        for target in (0.75, 0.5):
            start = time.perf_counter()
            compressed, info = lt.compress(
                model,
                table_images[:1],
                table_score,
                scheme,
                target,
                calibration=calibration,
                candidates=args.candidates,
                cache_dir=args.cache_dir,
                progress=True,
            )
            seconds = time.perf_counter() - start
            before = Agreement.of(reference, model_outputs(compressed, evals, progress=False)).top1
            start_ft = time.perf_counter()
            distill(compressed, teacher, train, epochs=args.distill_epochs)
            ft_seconds = time.perf_counter() - start_ft
            after = Agreement.of(reference, model_outputs(compressed, evals, progress=False)).top1
            rows.append(
                {
                    "model": f"EfficientNet-Lite0 {scheme}",
                    "target": target,
                    "MAC ratio": info.mac_ratio,
                    "top-1 agreement": before,
                    f"after {args.distill_epochs}-epoch distillation": after,
                    "table (s)": info.seconds.get("table", 0.0),
                    "selection (s)": info.seconds["selection"],
                    "compress total (s)": seconds,
                    "fine-tune (s)": ft_seconds,
                    "quantizes+exports": quantizes_and_exports(compressed, table_images[:1], calibration),
                }
            )
            print(markdown_table(rows[-1:]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--part", choices=["a", "b", "all"], default="all")
    parser.add_argument("--digits-epochs", type=int, default=3)
    parser.add_argument("--candidates", type=int, default=10)
    parser.add_argument("--table-images", type=int, default=16, help="crops scoring each eval-score entry")
    parser.add_argument("--eval-images", type=int, default=512)
    parser.add_argument("--train-images", type=int, default=512, help="crops for the distillation fine-tune")
    parser.add_argument("--distill-epochs", type=int, default=2)
    parser.add_argument("--cache-dir", default="out/compress_tables", help="eval-score tables are reused from here")
    args = parser.parse_args()
    rows = []
    if args.part in ("a", "all"):
        rows += digits_part(args)
        print(markdown_table(rows), flush=True)
    if args.part in ("b", "all"):
        b_rows = efficientnet_part(args)
        print("\n" + markdown_table(b_rows))


if __name__ == "__main__":
    main()
