"""Peak memory of asymmetric GPTQ on EfficientNet-Lite0 against the number of calibration crops (issue 13's
"bounded memory").

Each size runs in a fresh process: photograph crops (seed 0), BN folded, ``lt.gptq(..., asymmetric=True)`` at
W4 per channel (mse ranges, 16-bit activations), which advances a float and a quantized frontier side by side
(``leantorch.ptq.frontier``; values past each frontier's budget — a quarter of the memory available when it is
built — go to temporary files). A sampler thread reads ``/proc/self/status`` every 0.2 s and records the peak
anonymous memory (the process's own) and the peak file-backed resident memory (mapped files); the row also
gives the images' own size, the frontiers' peak in-memory bytes, the bytes spilled and the wall time.

Measured 2026-12-06 (2-core CPU, 23 GB): see ``benchmarks/results/gptq_memory.json`` and the closing note.
Before this session's changes a 4,096-crop run of ``weights_budget.py --only hand_mix`` was killed by the OOM
killer twice (24.4 GB, 27 min; 24.3 GB, 32 min) with 7.8 GB of mapped spill files resident and 2.3 GB of crops
holding 7.6 GB before any work.

Run: ``.venv/bin/python benchmarks/gptq_memory.py [--crops 512,1024,2048]`` (Linux only: reads ``/proc``). Older code:
``git worktree add /tmp/old REV; PYTHONPATH=/tmp/old/src .venv/bin/python benchmarks/gptq_memory.py --label REV``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "gptq_memory.json"
GIB = 2**30


def _status() -> dict[str, float]:
    """RssAnon and RssFile of this process, in GiB."""
    found = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, *value = line.split()
            if key in ("RssAnon:", "RssFile:"):
                found[key[:-1]] = int(value[0]) * 1024 / GIB
    return found


def measure(crops: int) -> dict[str, Any]:
    """One GPTQ run on ``crops`` crops with the sampler; returns its row."""
    import leantorch as lt
    import leantorch.ptq.frontier as frontier
    from leantorch.data import batches, channels_last, sample_images
    from leantorch.models import efficientnet_lite0

    peak = {"RssAnon": 0.0, "RssFile": 0.0, "frontiers": 0.0}
    frontiers: list[Any] = []
    built = frontier.Frontier.__init__

    def register(self: Any, *args: Any, **kwargs: Any) -> None:  # count every frontier GPTQ builds
        built(self, *args, **kwargs)
        frontiers.append(self)

    frontier.Frontier.__init__ = register  # type: ignore[method-assign]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for key, value in _status().items():
                peak[key] = max(peak[key], value)
            peak["frontiers"] = max(peak["frontiers"], sum(f.held_bytes for f in frontiers) / GIB)
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()
    model, images = channels_last(efficientnet_lite0(), sample_images(crops, seed=0))
    folded, _ = lt.fold_batch_norms(model, images[:1])
    before = _status()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        lt.gptq(
            folded, images[:1], batches(images, 32), param_bw=4, act_bw=16, per_channel=True, param_scheme="mse",
            config={"param_symmetric": False}, num_batches=crops // 32 + 1, asymmetric=True, progress=False, path=tmp,
        )  # fmt: skip
    seconds = time.perf_counter() - start
    done.set()
    return {
        "crops": crops,
        "images GiB": round(images.numel() * images.element_size() / GIB, 2),
        "anonymous GiB before GPTQ": round(before["RssAnon"], 2),
        "peak anonymous GiB": round(peak["RssAnon"], 2),
        "peak file-backed resident GiB": round(peak["RssFile"], 2),
        "peak frontier in-memory GiB": round(peak["frontiers"], 2),
        "spilled GiB": round(sum(f.spilled_bytes for f in frontiers) / GIB, 1),
        "seconds": round(seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crops", default="512,1024,2048", help="comma-separated calibration sizes")
    parser.add_argument(
        "--label", default="", help="a name for the code measured (rows of the same crops and label replace each other)"
    )
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child process: one size, row on stdout
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    rows = json.loads(RESULTS.read_text())["rows"] if RESULTS.exists() else []
    for crops in (int(c) for c in args.crops.split(",")):
        child = subprocess.run(
            [sys.executable, "-W", "ignore", __file__, "--one", str(crops)], capture_output=True, text=True
        )
        if child.returncode:
            row = {"crops": crops, "failed": f"exit {child.returncode}", "stderr": child.stderr[-2000:]}
        else:
            row = json.loads(child.stdout.strip().splitlines()[-1])
        row = {"code": args.label, **row} if args.label else row
        print(row, flush=True)
        rows = [r for r in rows if (r["crops"], r.get("code", "")) != (crops, args.label)] + [row]
        rows.sort(key=lambda r: (r.get("code", ""), r["crops"]))
        RESULTS.write_text(json.dumps({"rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
