"""One result of a GPU lease: merges what bench/gpu.sh's parts wrote into OUT/gpu_result.json and
OUT/gpu_result.md, which bench/RESULTS.md takes as it is. A part that timed out or failed is listed as such.

    python bench/gpu_report.py OUT --plan "population-fp32:150,population-bf16:120,gpu-bench:270" --rc "0,0,124"
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Where each part's own JSON and Markdown land, relative to OUT.
PARTS = {
    "population-fp32": ("population_fp32/population.json", None),
    "population-bf16": ("population_bf16/population.json", None),
    "gpu-bench": ("gpu_bench.json", "gpu_bench.md"),
}


def merge(out: Path, plan: list[tuple[str, int]], rcs: list[int]) -> dict:
    result: dict = {"plan_s": sum(s for _, s in plan), "parts": {}}
    for (name, budget), rc in zip(plan, rcs):
        doc_path, _ = PARTS[name]
        f = out / doc_path
        status = "ok" if rc == 0 and f.is_file() else ("timed out" if rc in (124, 137) else f"failed (rc {rc})")
        result["parts"][name] = {"budget_s": budget, "rc": rc, "status": status,
                                 "result": json.loads(f.read_text()) if f.is_file() else None}
    return result


def markdown(result: dict, out: Path) -> str:
    lines = [f"# GPU lease result (budget {result['plan_s']} s of parts)", "",
             "| part | budget (s) | status |", "| --- | ---: | --- |"]
    lines += [f"| {n} | {p['budget_s']} | {p['status']} |" for n, p in result["parts"].items()]
    for name, part in result["parts"].items():
        doc = part["result"]
        if doc is None:
            continue
        lines += ["", f"## {name}", ""]
        if name.startswith("population"):
            ex = doc["exactness"]
            lines.append(f"exactness (members vs dept.train alone, fp32): loss rel. {ex['loss']:.1e}, parameters rel. "
                         f"{ex['params']:.1e}, accuracies equal: {ex['accuracy_equal']}")
            lines += ["", doc["table"]]
        else:
            md = out / PARTS[name][1]
            lines.append(md.read_text().rstrip() if md.is_file() else "(no Markdown written)")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--plan", required=True, help="name:budget_s,... in run order")
    ap.add_argument("--rc", required=True, help="each part's exit status, in plan order")
    a = ap.parse_args(argv)
    plan = [(n, int(b)) for n, b in (p.split(":") for p in a.plan.split(","))]
    rcs = [int(r) for r in a.rc.split(",")]
    unknown = [n for n, _ in plan if n not in PARTS]
    if unknown or len(rcs) != len(plan):
        raise SystemExit(f"gpu_report: unknown part(s) {unknown} or {len(rcs)} exit statuses for {len(plan)} parts")
    result = merge(a.out, plan, rcs)
    (a.out / "gpu_result.json").write_text(json.dumps(result, indent=1))
    text = markdown(result, a.out)
    (a.out / "gpu_result.md").write_text(text)
    print(text)
    return 0 if all(p["status"] == "ok" for p in result["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
