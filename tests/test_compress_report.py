"""The compression report's HTML: summary, and the measured latency next to the MAC ratio."""

from __future__ import annotations

import html
import re
from pathlib import Path

import torch
from torch import nn

import leantorch as lt
from leantorch.compress.latency import compare_latency
from leantorch.compress.report import write_report


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()).eval()


def test_report_shows_latency_rows_with_the_mac_ratio(tmp_path: Path) -> None:
    net, x = _net(), torch.randn(8, 3, 12, 12)
    compressed, info = lt.compress(
        net,
        x[:1],
        lambda m: -float((m(x) - net(x)).pow(2).mean().detach()),
        "spatial_svd",
        target_mac_ratio=0.6,
        progress=False,
    )
    rows = compare_latency({"original": net, "compressed": compressed}, x[:1], batch_sizes=(1, 4), repeats=2)
    page = write_report(info, tmp_path / "report.html", latency=rows).read_text(encoding="utf-8")
    assert "Measured latency (ONNX Runtime)" in page
    assert f"the MAC ratio is {info.mac_ratio:.3f}" in page
    cells = [html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", page)]
    for row in rows:  # every timed row is in the page: model, batch and its ratio
        assert row["model"] in cells and str(row["batch"]) in cells
    baseline = [r for r in rows if r["model"] == "original"]
    assert all(r["latency ratio"] == 1.0 for r in baseline)


def test_report_without_latency_has_no_latency_section(tmp_path: Path) -> None:
    net, x = _net(), torch.randn(8, 3, 12, 12)
    _, info = lt.compress(net, x[:1], lambda m: 0.0, "spatial_svd", target_mac_ratio=0.8, progress=False)
    page = write_report(info, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Summary" in page and "Measured latency" not in page
