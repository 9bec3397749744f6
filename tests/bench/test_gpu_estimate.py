"""bench/gpu_estimate.py's plan is the one bench/gpu.sh runs and bench/gpu_report.py reports: it fits the lease by
its own numbers, a plan that does not fit is refused before anything runs, and the result carries each part's
estimate, budget and measured wall seconds. gpu.sh is driven with a stand-in interpreter that records each part's
command and writes a small result for it, so nothing here needs a GPU, torch, Ray or MLflow."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
import subprocess
import sys

import pytest

from tests.conftest import REPO

BENCH = REPO / "bench"
GPU_SH = BENCH / "gpu.sh"

# Stands in for the device's Python in gpu.sh: the estimate and the report run for real; `-c "import ..."` checks
# say importable (Ray / MLflow not when FAKE_NO_RAY is set); every part logs its argv and writes a small result.
FAKE_PYTHON = '''#!{python}
import json, os, sys, time
from pathlib import Path

args = sys.argv[1:]
if args[0] in ("bench/gpu_estimate.py", "bench/gpu_report.py"):
    os.execv({python!r}, [{python!r}, *args])
if args[0] == "-c":
    sys.exit(1 if os.environ.get("FAKE_NO_RAY") and "ray" in args[1] else 0)
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(" ".join(args) + "\\n")
time.sleep(0.3)
out = Path(args[args.index("--out") + 1])
out.mkdir(parents=True, exist_ok=True)
script = Path(args[0]).stem
if script == "population":
    doc = {{"exactness": {{"loss": 1e-7, "params": 2e-7, "accuracy_equal": True}}, "table": "| P | fake |"}}
    (out / "population.json").write_text(json.dumps(doc))
else:
    name = {{"gpu_bench": "gpu_bench", "orchestration_ceiling": "ceiling"}}[script]
    (out / (name + ".json")).write_text(json.dumps({{"fake": script}}))
    (out / (name + ".md")).write_text("fake markdown of " + script + "\\n")
'''


@pytest.fixture
def gpu_estimate(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import gpu_estimate

    return gpu_estimate


@pytest.fixture
def gpu_report(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import gpu_report

    return gpu_report


def run(cmd: list[str], env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def table_parts(text: str) -> list[str]:
    """The part names of a plan table (gpu_estimate's), in order: rows with a numeric budget, less the total."""
    names = re.findall(r"^\| ([a-z][a-z0-9-]*) \| (?:\d+|-) \| \d+ \|", text, re.M)
    return [n for n in names if n != "total"]


@pytest.mark.parametrize("quick, lease", [(False, 600), (True, 240)])
def test_plan_fits_the_lease_by_its_own_numbers(gpu_estimate, quick, lease):
    mode = "quick" if quick else "full"
    parts = gpu_estimate.plan(mode)
    assert gpu_estimate.check(parts, lease) == []
    estimate, budget = gpu_estimate.totals(parts)
    assert estimate < budget <= lease, (estimate, budget)
    assert all(p.budget_s >= gpu_estimate.HEADROOM * p.estimate_s > 0 for p in parts), [
        (p.name, p.estimate_s, p.budget_s) for p in parts]
    p = run([sys.executable, "bench/gpu_estimate.py"] + (["--quick"] if quick else []))
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.search(rf"^\| total \| {estimate:.0f} \| {budget:.0f} \| lease {lease} s \|$", p.stdout, re.M), p.stdout


def test_full_plan_has_the_ceiling_and_quick_says_it_is_outside(gpu_estimate):
    assert [p.name for p in gpu_estimate.plan("full")][-1] == "ceiling"
    quick = gpu_estimate.plan("quick")
    assert "ceiling" not in [p.name for p in quick]
    assert "ceiling" in gpu_estimate.outside(quick, 240)
    assert re.search(r"^\| ceiling \| - \| - \| outside this plan", gpu_estimate.table(quick, "quick", 240), re.M)


def test_a_plan_too_big_is_refused(gpu_estimate, monkeypatch, capsys):
    # Three epochs per P instead of one: the population part outgrows its budget's headroom.
    budget, what = gpu_estimate.FULL["population-fp32"]
    monkeypatch.setitem(gpu_estimate.FULL, "population-fp32",
                        (budget, dataclasses.replace(what, epochs=3)))
    assert gpu_estimate.main([]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^the full plan does not fit: population-fp32: budget 175 s is 0\.\d\dx its estimate \d+ s, "
                     r"under 1\.5x$", out, re.M), out
    # --budgets, what gpu.sh runs: no part lines at all, one line on stderr.
    assert gpu_estimate.main(["--budgets"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1 and "nothing runs" in captured.err, captured


def test_a_lease_too_short_is_refused_by_the_script_and_by_gpu_sh(tmp_path):
    p = run([sys.executable, "bench/gpu_estimate.py", "--lease", "500"])
    assert p.returncode == 1 and "budgets 555 s + install 30 s = 585 s, over the 500 s lease" in p.stdout, p.stdout
    env = {"PYTHON": sys.executable, "GPU_LEASE_S": "500"}
    p = run(["bash", str(GPU_SH), "--estimate"], env)
    assert p.returncode == 1 and "over the 500 s lease" in p.stdout, p.stdout + p.stderr
    out = tmp_path / "out"
    p = run(["bash", str(GPU_SH), str(out)], env)
    assert p.returncode == 1 and p.stdout == "", p.stdout
    assert p.stderr.splitlines() == ["gpu_estimate: the full plan does not fit, nothing runs: budgets 555 s + "
                                     "install 30 s = 585 s, over the 500 s lease"], p.stderr
    assert not out.exists()  # refused before anything ran or was written


def test_dry_run_exercises_the_full_plans_parts(gpu_estimate):
    assert [p.name for p in gpu_estimate.plan("cpu-dry-run")] == [p.name for p in gpu_estimate.plan("full")]
    assert gpu_estimate.check(gpu_estimate.plan("cpu-dry-run"), gpu_estimate.lease("cpu-dry-run")) == []


def fake_python(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return fake


@pytest.mark.parametrize("mode", ["full", "quick"])
def test_gpu_sh_runs_the_parts_its_estimate_lists_and_reports_them(tmp_path, mode):
    flags = ["--quick"] if mode == "quick" else []
    env = {"PYTHON": str(fake_python(tmp_path)), "FAKE_LOG": str(tmp_path / "ran.log")}
    estimate = run(["bash", str(GPU_SH), "--estimate", *flags], env)
    assert estimate.returncode == 0, estimate.stdout + estimate.stderr
    names = table_parts(estimate.stdout)
    budgets = run([sys.executable, "bench/gpu_estimate.py", *flags, "--budgets"]).stdout.splitlines()
    out = tmp_path / "out"
    p = run(["bash", str(GPU_SH), *flags, str(out)], env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    # The commands run are the plan's, in its order, each with its output folder.
    want = [f"{c} --out {out}/{folder}" for _, _, folder, c in (b.split(" ", 3) for b in budgets)]
    assert (tmp_path / "ran.log").read_text().splitlines() == want
    doc = json.loads((out / "gpu_result.json").read_text())
    assert list(doc["parts"]) == names == [b.split(" ", 1)[0] for b in budgets]
    assert names[:3] == ["population-fp32", "population-bf16", "gpu-bench"]
    assert ("ceiling" in names) == (mode == "full")
    assert all(part["status"] == "ok" and 0.3 <= part["measured_s"] < part["budget_s"] for part in doc["parts"].values())
    assert doc["measured_total_s"] >= sum(part["measured_s"] for part in doc["parts"].values())
    if mode == "quick":
        assert "== ceiling: outside the --quick plan" in p.stdout


def test_gpu_sh_skips_the_ceiling_without_ray_in_one_line(tmp_path):
    env = {"PYTHON": str(fake_python(tmp_path)), "FAKE_LOG": str(tmp_path / "ran.log"), "FAKE_NO_RAY": "1"}
    p = run(["bash", str(GPU_SH), str(tmp_path / "out")], env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert [line for line in p.stdout.splitlines() if line.startswith("== ceiling")] == [
        "== ceiling: skipped (Ray / MLflow not importable here; bench/orchestration_ceiling.py drives the tune CLI)"]
    assert "orchestration_ceiling" not in (tmp_path / "ran.log").read_text()
    part = json.loads((tmp_path / "out" / "gpu_result.json").read_text())["parts"]["ceiling"]
    assert part["status"].startswith("skipped") and part["measured_s"] is None and part["budget_s"] == 125


def write_fake_outputs(out, ceiling: bool) -> None:
    for folder in ("population_fp32", "population_bf16"):
        (out / folder).mkdir(parents=True)
        (out / folder / "population.json").write_text(json.dumps(
            {"exactness": {"loss": 3e-7, "params": 4e-7, "accuracy_equal": True}, "table": f"| P | {folder} |"}))
    (out / "gpu_bench.json").write_text(json.dumps({"text": []}))  # written, but the part timed out after it
    (out / "gpu_bench.md").write_text("gpu_bench's own table\n")
    if ceiling:
        (out / "ceiling").mkdir()
        (out / "ceiling" / "ceiling.json").write_text(json.dumps({"rows": [{"members": 8}]}))
        (out / "ceiling" / "ceiling.md").write_text("| P | stand-in |\n| 8 | 1234 |\n")


@pytest.mark.parametrize("ceiling", [False, True])
def test_gpu_report_merges_estimate_budget_and_measured(tmp_path, gpu_estimate, gpu_report, capsys, ceiling):
    out = tmp_path / "out"
    out.mkdir()
    assert gpu_estimate.main(["--json", str(out / "gpu_plan.json")]) == 0
    capsys.readouterr()  # the estimate's table: not the report's output
    plan = json.loads((out / "gpu_plan.json").read_text())
    write_fake_outputs(out, ceiling)
    last = "ceiling:0:80.5" if ceiling else "ceiling:skipped:0"
    rc = gpu_report.main([str(out), "--plan-json", str(out / "gpu_plan.json"), "--ran",
                          f"population-fp32:0:101.5,population-bf16:0:70.4,gpu-bench:124:140.0,{last}",
                          "--total-wall", "350.3"])
    assert rc == 1  # gpu-bench timed out
    doc = json.loads((out / "gpu_result.json").read_text())
    assert (doc["plan_estimate_s"], doc["plan_budget_s"], doc["measured_total_s"]) == (
        plan["estimate_total_s"], 585, 350.3)
    fp32 = doc["parts"]["population-fp32"]
    assert (fp32["estimate_s"], fp32["budget_s"], fp32["measured_s"], fp32["status"]) == (
        plan["parts"]["population-fp32"]["estimate_s"], 175, 101.5, "ok")
    assert fp32["result"]["exactness"]["loss"] == 3e-7
    assert (doc["parts"]["gpu-bench"]["status"], doc["parts"]["gpu-bench"]["measured_s"]) == ("timed out", 140.0)
    md = (out / "gpu_result.md").read_text()
    assert md == capsys.readouterr().out.rstrip("\n") + "\n"
    est = {n: f"{p['estimate_s']:.0f}" for n, p in plan["parts"].items()}
    assert "| part | estimate s | budget s | measured s | status |" in md
    assert f"| population-fp32 | {est['population-fp32']} | 175 | 101.5 | ok |" in md
    assert f"| population-bf16 | {est['population-bf16']} | 115 | 70.4 | ok |" in md
    assert f"| gpu-bench | {est['gpu-bench']} | 140 | 140.0 | timed out |" in md
    assert f"| total (plan) | {plan['estimate_total_s']:.0f} | 585 | 350.3 | |" in md
    assert "| P | population_bf16 |" in md and "loss rel. 3.0e-07" in md
    if ceiling:
        assert f"| ceiling | {est['ceiling']} | 125 | 80.5 | ok |" in md
        assert doc["parts"]["ceiling"]["result"] == {"rows": [{"members": 8}]}
        assert "## ceiling\n\n| P | stand-in |\n| 8 | 1234 |" in md
    else:
        assert f"| ceiling | {est['ceiling']} | 125 | - | skipped (Ray / MLflow not importable) |" in md
        assert "## ceiling" not in md and doc["parts"]["ceiling"]["result"] is None


def test_gpu_report_refuses_a_part_not_in_the_plan(tmp_path, gpu_estimate, gpu_report):
    assert gpu_estimate.main(["--quick", "--json", str(tmp_path / "plan.json")]) == 0
    with pytest.raises(SystemExit, match=r"part\(s\) \['ceiling'\] not in the plan"):
        gpu_report.main([str(tmp_path), "--plan-json", str(tmp_path / "plan.json"), "--ran", "ceiling:0:1"])


@pytest.mark.parametrize("mode, label", [("full", "full:   "), ("quick", "--quick:")])
def test_gpu_sh_header_states_the_plans_numbers(gpu_estimate, mode, label):
    """The header quotes the estimate and budgets: they must be the plan's, not last week's."""
    parts = gpu_estimate.plan(mode)
    line = next(s for s in GPU_SH.read_text().splitlines() if s.startswith(f"#   {label}"))
    assert f"estimates {' + '.join(f'{p.estimate_s:.0f}' for p in parts)} s" in line, line
    assert f"budgets {' + '.join(str(p.budget_s) for p in parts)} s" in line, line
    assert f"= {gpu_estimate.totals(parts)[1]:.0f} s" in line, line
