"""How fast the command line answers when nothing runs: ``--help`` and argument errors, each timed as a whole
process beside ``python -c "import torch"`` (what a command paid before ``dept`` became a lazy namespace), in
turn, so the ratio holds while the machine's speed drifts.

    python bench/cli_startup.py [--runs 5]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time

from benchlib import machine_line

COMMANDS = {
    "--help": ["--help"],
    "train --help": ["train", "--help"],
    "train: unknown method": ["train", "--features", "/nonexistent", "--dataset", "d", "--method", "nope"],
    "train: no such store": ["train", "--features", "/nonexistent", "--dataset", "d"],
    "tune: unknown space": ["tune", "--features", "/nonexistent", "--dataset", "d", "--space", "nope"],
    "tune: --dataset with a transfer protocol": ["tune", "--features", "/nonexistent", "--protocol",
                                                 "cross-dataset", "--dataset", "x"],
    "zero-shot: no such store": ["zero-shot", "--features", "/nonexistent", "--dataset", "x"],
    "featurize: unknown dataset": ["featurize", "--out", "/nonexistent/out", "--dataset", "nope"],
}
YARDSTICK = [sys.executable, "-c", "import torch"]


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    opt = ap.parse_args()
    exe = shutil.which("dept-pipeline")
    if exe is None:
        sys.exit("dept-pipeline is not on PATH (activate the venv)")
    print(f"# CLI start-up, {opt.runs} runs each, median wall s; {machine_line()}\n")
    print("| command | s | `import torch` s | ratio |")
    print("| --- | --- | --- | --- |")
    wall(YARDSTICK)  # warm the file cache
    for label, args in COMMANDS.items():
        ours, torch_s = [], []
        for _ in range(opt.runs):
            ours.append(wall([exe, *args]))
            torch_s.append(wall(YARDSTICK))
        a, b = statistics.median(ours), statistics.median(torch_s)
        print(f"| `{label}` | {a:.2f} | {b:.2f} | {a / b:.2f} |")


if __name__ == "__main__":
    main()
