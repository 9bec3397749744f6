"""The bench scripts still run, each in a tiny configuration (no timing is asserted: timings live in bench/)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

BENCH = REPO / "bench"


def run_script(*args: str, timeout: float = 600) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    p = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout


@pytest.fixture
def bench_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))


@pytest.mark.slow
def test_text_encoder_bench_runs_and_paths_agree():
    out = run_script("bench/text_encoder.py", "--model", "dept-tiny-vit", "--classes", "2,5", "--repeats", "1",
                     "--threads", "1")
    rows = [line for line in out.splitlines() if re.match(r"\| [25] \|", line)]
    assert len(rows) == 2 and "PATHS DISAGREE" not in out


@pytest.mark.slow
def test_miniature_coop_probe_runs(demo_store, tiny_clip_checkpoint):
    out = run_script("bench/miniature_coop_probe.py", "--features", demo_store, "--dataset", "demo", "--model",
                     "dept-tiny-vit", "--pretrained", str(tiny_clip_checkpoint), "--epochs", "2", "--tau", "10")
    assert "tau 10.0, seed 1" in out and "epoch  2: loss" in out
    before, after = (float(re.search(rf"{w}: .* text-text cos (-?[\d.]+)", out).group(1)) for w in ("before", "after"))
    assert -1 <= before <= 1 and -1 <= after <= 1


def test_trial_cost_bench_runs():
    out = run_script("bench/trial_cost.py", "--model", "dept-tiny-vit", "--classes", "3", "--shots", "4",
                     "--steps", "1", "--image-side", "48")
    # 3 classes x 4 shots / batch 4 = 3 steps per epoch, all three parts of the online step timed.
    assert re.search(r"^\| dept-tiny-vit \| 3 \| 3 \| [\d.]+ \| [\d.]+ \| [\d.]+ \|", out, re.M), out
    assert "whole epoch of dept.train measured" in out


def test_trial_cost_online_and_cached_learners_differ_only_in_text_path(bench_on_path):
    """(a) must run the full 77-token path and (b) the project's default (shared prefix) on the same learner."""
    import torch
    import trial_cost

    from dept import load_clip

    clip = load_clip("dept-tiny-vit", None)
    threads = torch.get_num_threads()
    try:
        r = trial_cost.measure(trial_cost.Options(model="dept-tiny-vit", classes=2, shots=2, steps=1, image_pool=2,
                                                  image_side=40, cached_epoch=False), clip=clip, log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)  # the bench pins the thread count; the rest of the session keeps its own
    assert (r.extra["online_text_path"], r.extra["cached_text_path"]) == ("full", "prefix")
    assert r.steps_per_epoch == 1 and r.online_parts["decode"] > 0 and r.online_parts["image"] > 0


def test_scaling_table_runs():
    out = run_script("bench/scaling.py", "--trials-per-seed", "2")
    assert len(re.findall(r"^\| (ImageNet|Caltech101|OxfordPets|StanfordCars|Flowers102|Food101|FGVCAircraft|SUN397|"
                          r"DTD|EuroSAT|UCF101) \|", out, re.M)) == 11
    assert "tune --dataset all, 6 trials per dataset" in out


@pytest.mark.slow
def test_gpu_script_dry_run_on_cpu(tmp_path):
    """bench/gpu.sh's driver, on the CPU with the tiny model; its JSON feeds bench/scaling.py."""
    out = run_script("bench/gpu_bench.py", "--device", "cpu", "--tiny", "--out", str(tmp_path))
    doc = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert {r["precision"] for r in doc["text"]} == {"fp32", "bf16"}
    fp32 = [r for r in doc["text"] if r["precision"] == "fp32"]
    assert all(r["max_abs_dF"] <= 1e-4 and r["grad_rel_err"] <= 1e-4 for r in fp32), fp32
    assert len(doc["trial"]) == 2 and doc["trial_numerics"]["argmax_agreement"] > 0
    assert {(r["model"], r["precision"]) for r in doc["image"]} == {("dept-tiny-vit", "fp32"), ("dept-tiny-vit", "bf16")}
    assert "total" in out
    table = run_script("bench/scaling.py", "--gpu-json", str(tmp_path / "gpu_bench.json"))
    assert "rates: measured" in table


def test_population_bench_runs_and_checks_exactness_first(tmp_path):
    """bench/population.py's dry run: the exactness check (members vs dept.train alone) before any timing."""
    run_script("bench/population.py", "--tiny", "--out", str(tmp_path))
    doc = json.loads((tmp_path / "population.json").read_text())
    assert doc["exactness"]["accuracy_equal"] and doc["exactness"]["loss"] <= 1e-5 and doc["exactness"]["params"] <= 1e-5
    assert [r["members"] for r in doc["rows"]] == [1, 4]


@pytest.mark.slow
def test_gpu_script_prepares_its_wheels_and_runs_on_a_bare_python(tmp_path):
    """bench/gpu.sh as the lease's bare image runs it: --prepare downloads the wheels (package registry), then the
    dry run works with open_clip, Ray and MLflow importable only from the folder it installs the wheels into."""
    wheels, site = tmp_path / "whl", tmp_path / "site"
    env = {**os.environ, "PYTHON": sys.executable, "DEPT_WHEELS": str(wheels), "DEPT_WHEEL_SITE": str(site)}
    prep = subprocess.run(["bash", str(BENCH / "gpu.sh"), "--prepare"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert prep.returncode == 0, prep.stdout + prep.stderr
    assert {w.name.split("-")[0] for w in wheels.glob("*.whl")} == {"open_clip_torch", "ftfy", "wcwidth"}
    bare = {**env, "PYTHONPATH": str(BENCH / "bare")}
    blocked = subprocess.run([sys.executable, "-c", "import ray"], env=bare, capture_output=True, text=True)
    assert blocked.returncode != 0 and "bare GPU image" in blocked.stderr  # the check is real
    out = tmp_path / "out"
    p = subprocess.run(["bash", str(BENCH / "gpu.sh"), "--cpu-dry-run", str(out)], env=bare, capture_output=True,
                       text=True, timeout=1200)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert (site / "open_clip").is_dir()
    # One result for the lease: every part, in plan order, with its own figures; the ceiling (the tune CLI) is
    # skipped, because Ray and MLflow are as absent as on the device.
    doc = json.loads((out / "gpu_result.json").read_text())
    assert list(doc["parts"]) == ["population-fp32", "population-bf16", "gpu-bench", "ceiling"]
    ran = {n: part for n, part in doc["parts"].items() if n != "ceiling"}
    assert all(part["status"] == "ok" and part["result"] and part["measured_s"] > 0 for part in ran.values())
    assert doc["parts"]["ceiling"]["status"].startswith("skipped") and doc["parts"]["ceiling"]["result"] is None
    assert doc["parts"]["population-fp32"]["result"]["exactness"]["accuracy_equal"]
    assert "## gpu-bench" in (out / "gpu_result.md").read_text()


def test_gpu_shell_script_syntax():
    subprocess.run(["bash", "-n", str(BENCH / "gpu.sh")], check=True)


@pytest.mark.slow
def test_featurize_throughput_bench_runs(ray_cluster, bench_on_path, capsys):
    import featurize_throughput
    import ray

    assert featurize_throughput.main(["--model", "dept-tiny-vit", "--images", "16", "--classes", "4",
                                      "--batch-size", "8", "--image-side", "40", "--bare-batches", "1",
                                      "--ray-address", ray_cluster.address]) == 0
    out = capsys.readouterr().out
    assert re.search(r"featurize, whole call: 2\d images in", out), out  # 16 test + 4 train draws (view 0)
    assert "featurize / bare:" in out
    assert ray.is_initialized()  # the session's cluster was joined, not shut down


@pytest.mark.slow
def test_tune_overhead_bench_runs(ray_cluster):
    out = run_script("bench/tune_overhead.py", "--model", "dept-tiny-vit", "--classes", "2", "--shots", "4",
                     "--views", "1", "--val-per-class", "1", "--test-per-class", "1", "--image-side", "32",
                     "--epochs", "1", "--trials", "2", "--ray-address", ray_cluster.address)
    assert re.search(r"^\| 1 \| [\d.]+ \| [\d.]+ \|", out, re.M), out
    assert "median overhead" in out


def test_miniature_table_reports_hm_of_means_and_per_seed_spread(tmp_path):
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "recipe.txt").write_text("model: test recipe")
    (folder / "zero-shot-disjoint.txt").write_text("zero-shot x: base 55.20  new 67.00  HM 60.60  (all 50.0)\n")
    for seed, (base, new) in ((1, (80.0, 50.0)), (2, (70.0, 60.0))):
        run = {"hyperparameters": {"method": "coop", "dept": True},
               "test": {"test_base_acc": base, "test_new_acc": new, "test_hm": 2 * base * new / (base + new)}}
        (folder / f"disjoint-coop-dept-seed{seed}.json").write_text(json.dumps(run))
    out = run_script(str(BENCH / "miniature_table.py"), str(folder))
    assert "| disjoint | zero-shot | - | 55.2 | 67.0 | 60.6 | - |" in out
    # HM of the means 2*75*55/130 = 63.5; the per-seed HMs 61.5 and 64.6 average 63.1 (std 2.2).
    assert "| disjoint | CoOp+DePT | 2 | 75.0 +- 7.1 | 55.0 +- 7.1 | 63.5 | 63.1 +- 2.2 |" in out


@pytest.mark.slow
def test_cli_startup_bench_times_every_command(bench_on_path):
    from cli_startup import COMMANDS

    out = run_script("bench/cli_startup.py", "--runs", "1")
    rows = [line for line in out.splitlines() if line.startswith("| `")]
    assert len(rows) == len(COMMANDS), out
    assert all(float(r.split("|")[4]) > 0 for r in rows), out
