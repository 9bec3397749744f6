"""One result of a GPU lease: merges what bench/gpu.sh's parts wrote into OUT/gpu_result.json and
OUT/gpu_result.md, which bench/RESULTS.md takes as it is. Per part: its estimate and budget (from the plan
bench/gpu_estimate.py wrote, the one gpu.sh ran), its measured wall seconds and its status; a part that timed out,
failed or was skipped is listed as such, and the others still report.

    python bench/gpu_report.py OUT --plan-json OUT/gpu_plan.json \\
        --ran "population-fp32:0:101.2,population-bf16:0:70.4,gpu-bench:124:140.0,ceiling:skipped:0" --total-wall 350
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Each part's own JSON and Markdown, in its output folder (the plan's out_folder, relative to OUT).
PARTS = {
    "population-fp32": ("population.json", None),
    "population-bf16": ("population.json", None),
    "gpu-bench": ("gpu_bench.json", "gpu_bench.md"),
    "ceiling": ("ceiling.json", "ceiling.md"),
}
SKIPPED = "skipped"  # gpu.sh's exit status for a part it did not start (the ceiling without Ray / MLflow)


def parse_ran(text: str) -> list[tuple[str, int | None, float | None]]:
    """'name:rc:wall_s,...' -> (name, rc or None when skipped, wall seconds or None when skipped)."""
    ran = []
    for item in filter(None, text.split(",")):
        try:
            name, rc, wall = item.split(":")
            ran.append((name, None, None) if rc == SKIPPED else (name, int(rc), float(wall)))
        except ValueError:
            raise SystemExit(f"gpu_report: --ran entry {item!r} is not name:rc:wall_s (rc an integer or "
                             f"{SKIPPED!r})") from None
    return ran


def status(rc: int | None, doc: Path) -> str:
    if rc is None:
        return "skipped (Ray / MLflow not importable)"
    if rc == 0 and doc.is_file():
        return "ok"
    if rc in (124, 137):
        return "timed out"
    return f"failed (rc {rc})" if rc else "failed (no result written)"


def merge(out: Path, plan: dict, ran: list[tuple[str, int | None, float | None]],
          total_wall: float | None = None) -> dict:
    result: dict = {"mode": plan["mode"], "lease_s": plan["lease_s"], "install_s": plan["install_s"],
                    "plan_estimate_s": plan["estimate_total_s"], "plan_budget_s": plan["budget_total_s"],
                    "measured_total_s": total_wall, "outside": plan.get("outside", {}), "parts": {}}
    for name, rc, wall in ran:
        planned = plan["parts"][name]
        doc = out / planned["out_folder"] / PARTS[name][0]
        result["parts"][name] = {"estimate_s": planned["estimate_s"], "budget_s": planned["budget_s"],
                                 "measured_s": wall, "rc": rc, "status": status(rc, doc),
                                 "command": planned["command"],
                                 "result": json.loads(doc.read_text()) if rc is not None and doc.is_file() else None}
    return result


def _s(seconds: float | None, digits: int = 0) -> str:
    return "-" if seconds is None else f"{seconds:.{digits}f}"


def markdown(result: dict, out: Path, plan: dict) -> str:
    lease = f"lease {result['lease_s']:.0f} s" if result["lease_s"] is not None else "no lease (CPU dry run)"
    lines = [f"# GPU lease result ({result['mode']} plan, {lease})", "",
             "| part | estimate s | budget s | measured s | status |", "| --- | ---: | ---: | ---: | --- |"]
    lines += [f"| {n} | {_s(p['estimate_s'])} | {p['budget_s']} | {_s(p['measured_s'], 1)} | {p['status']} |"
              for n, p in result["parts"].items()]
    lines += [f"| install + start-up | {_s(result['install_s'])} | {_s(result['install_s'])} | | |",
              f"| total (plan) | {_s(result['plan_estimate_s'])} | {_s(result['plan_budget_s'])} | "
              f"{_s(result['measured_total_s'], 1)} | |"]
    lines += [f"| {n} | - | - | - | {why} |" for n, why in result["outside"].items()]
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
            md = out / plan["parts"][name]["out_folder"] / PARTS[name][1]
            lines.append(md.read_text().rstrip() if md.is_file() else "(no Markdown written)")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--plan-json", type=Path, required=True, help="the plan gpu.sh ran (bench/gpu_estimate.py --json)")
    ap.add_argument("--ran", required=True, help="name:rc:wall_s,... in run order (rc 'skipped': not started)")
    ap.add_argument("--total-wall", type=float, default=None, help="gpu.sh's own wall seconds, install included")
    a = ap.parse_args(argv)
    if not a.plan_json.is_file():
        raise SystemExit(f"gpu_report: no plan at {a.plan_json} (bench/gpu_estimate.py --json writes it)")
    plan = json.loads(a.plan_json.read_text())
    ran = parse_ran(a.ran)
    unknown = [n for n, _, _ in ran if n not in PARTS or n not in plan["parts"]]
    if unknown:
        raise SystemExit(f"gpu_report: part(s) {unknown} not in the plan {a.plan_json} or not known to gpu_report")
    result = merge(a.out, plan, ran, a.total_wall)
    (a.out / "gpu_result.json").write_text(json.dumps(result, indent=1))
    text = markdown(result, a.out, plan)
    (a.out / "gpu_result.md").write_text(text)
    print(text)
    return 0 if all(p["status"] == "ok" or p["rc"] is None for p in result["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
