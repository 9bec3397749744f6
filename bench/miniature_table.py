"""The miniature tables of bench/RESULTS.md, from the per-run JSON files `bench/miniature.sh` leaves in
WORK/results/EXPERIMENT/ (one per split, method, DePT on/off and seed) and its zero-shot lines.

Per split and method: base and new as mean +- std over seeds, "HM" the HM of the seed means (what `report`
prints), and the mean +- std over seeds of each seed's HM (the spread the issue's goal compares against).

    python bench/miniature_table.py runs/miniature-bench/results/miniature-bench [more experiment folders]
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from pipelines.metrics import harmonic_mean
from pipelines.selection import method_label

ZERO_SHOT_RE = re.compile(r"base ([\d.]+)\s+new ([\d.]+)\s+HM ([\d.]+)")


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} +- {std:.1f}"


def table(folder: Path) -> str:
    recipe = (folder / "recipe.txt").read_text().strip() if (folder / "recipe.txt").is_file() else "recipe not recorded"
    lines = [f"**{folder.name}** ({recipe})", "",
             "| split | method | seeds | base | new | HM | HM per seed (mean +- std) |", "|---|---|---|---|---|---|---|"]
    splits = sorted({p.name.split("-")[0] for p in folder.glob("*-seed*.json")}
                    | {p.stem.removeprefix("zero-shot-") for p in folder.glob("zero-shot-*.txt")})
    for split in splits:
        zero_shot = folder / f"zero-shot-{split}.txt"
        if zero_shot.is_file() and (m := ZERO_SHOT_RE.search(zero_shot.read_text())):
            lines.append(f"| {split} | zero-shot | - | {float(m[1]):.1f} | {float(m[2]):.1f} | {float(m[3]):.1f} | - |")
        groups: dict[str, list[dict]] = {}
        for path in sorted(folder.glob(f"{split}-*-seed*.json")):
            run = json.loads(path.read_text())
            hp = run["hyperparameters"]
            groups.setdefault(method_label(hp["method"], hp["dept"]), []).append(run["test"])
        for name in sorted(groups):
            runs = groups[name]
            base = [r["test_base_acc"] for r in runs]
            new = [r["test_new_acc"] for r in runs]
            hm_of_means = harmonic_mean(statistics.mean(base), statistics.mean(new))
            lines.append(f"| {split} | {name} | {len(runs)} | {_mean_std(base)} | {_mean_std(new)} | "
                         f"{hm_of_means:.1f} | {_mean_std([r['test_hm'] for r in runs])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="WORK/results/EXPERIMENT folders of bench/miniature.sh")
    for folder in parser.parse_args().folders:
        print(table(folder), end="\n\n")


if __name__ == "__main__":
    main()
