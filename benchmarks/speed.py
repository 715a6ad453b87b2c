"""Wall time of every CLI flow on EfficientNet-Lite0 (the README's commands), against a previous tree.

Each flow runs as its own ``leantorch`` process (``python -m leantorch.cli ...``) with ``PYTHONPATH`` pointing
at a source tree, so the same script times this tree and an older one (a git worktree):

    git worktree add /tmp/base <old commit>
    .venv/bin/python benchmarks/speed.py --previous /tmp/base/src --previous-limit 900

A previous run that passes ``--previous-limit`` seconds is stopped and reported as "> limit" (the ratio is
then a lower bound). Flows run one after another, never in parallel, so that they do not slow each other
down; on a busy machine all times inflate, ratios less so. ``--flows`` picks a subset by name. Each tree runs
with its own CLI defaults (e.g. AdaRound's iterations, the compression candidates): the ratios are what a user
of the README's commands sees, algorithm and default changes together.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EFFNET = ["--model", "leantorch.models:efficientnet_lite0", "--data", "builtin:images"]

#: name -> (arguments after ``leantorch``, what the flow does). {out} is a fresh directory per run.
FLOWS: dict[str, tuple[list[str], str]] = {
    "quantize": (
        ["quantize", *EFFNET, "--param-bw", "8", "--act-bw", "8", "--per-channel", "--fold-bn", "--out", "{out}"],
        "README: W8A8 per-channel, BN folded, calibrate, export",
    ),
    "analyze": (["analyze", *EFFNET, "--out", "{out}/report.html"], "README: analysis + per-layer sensitivity"),
    "compress": (
        ["compress", *EFFNET, "--scheme", "channel_pruning", "--target", "0.75", "--out", "{out}"],
        "README: channel pruning to 0.75 MACs",
    ),
    "adaround-w4a8": (
        [
            "quantize",
            *EFFNET,
            "--param-bw",
            "4",
            "--act-bw",
            "8",
            "--per-channel",
            "--fold-bn",
            "--adaround",
            "--out",
            "{out}",
        ],
        "AdaRound W4A8 per-channel (CLI defaults)",
    ),
    "auto": (["quantize", *EFFNET, "--auto", "--out", "{out}"], "AutoQuant (BN fold, CLE, AdaRound ...)"),
    "demo": (["demo", "--out", "{out}"], "make demo's job"),
}


def run_flow(src: str, args: list[str], limit: float | None) -> tuple[float, bool, str]:
    """Seconds, whether it finished (exit 0 within the limit), and the last line it printed."""
    env = {**os.environ, "PYTHONPATH": src, "TQDM_DISABLE": "1"}
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "leantorch.cli", *[a.replace("{out}", out) for a in args]]
        start = time.perf_counter()
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=limit, cwd=out)
        except subprocess.TimeoutExpired:
            return time.perf_counter() - start, False, "stopped at the limit"
        seconds = time.perf_counter() - start
    lines = (done.stdout + done.stderr).strip().splitlines()
    return seconds, done.returncode == 0, lines[-1] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--current", default=str(HERE.parent / "src"), help="source tree to time (default: this one)")
    parser.add_argument("--previous", help="an older source tree to compare with (e.g. a git worktree's src)")
    parser.add_argument(
        "--previous-limit",
        type=float,
        default=1200.0,
        help="stop a previous run after this many seconds (default 1200)",
    )
    parser.add_argument("--flows", nargs="+", default=list(FLOWS), choices=list(FLOWS))
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; flows: {', '.join(args.flows)}\n", flush=True)
    rows = []
    for name in args.flows:
        flow, what = FLOWS[name]
        seconds, ok, last = run_flow(args.current, flow, None)
        row = {"flow": name, "what": what, "seconds": f"{seconds:.0f}" + ("" if ok else f" (failed: {last})")}
        if args.previous:
            before, finished, last_before = run_flow(args.previous, flow, args.previous_limit)
            stopped = last_before == "stopped at the limit"
            row["previous s"] = (
                f"{before:.0f}"
                if finished
                else f"> {before:.0f}"
                if stopped
                else f"{before:.0f} (failed: {last_before})"
            )
            row["speed-up"] = (
                "n/a"
                if not ok or not (finished or stopped)
                else f"{before / seconds:.1f}×"
                if finished
                else f"> {before / seconds:.1f}×"
            )
        rows.append(row)
        print(" | ".join(str(v) for v in row.values()), flush=True)
    keys = list(rows[0])
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row.get(k, "")) for k in keys) + " |")


if __name__ == "__main__":
    main()
