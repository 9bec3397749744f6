"""Tune + MLflow overhead: N identical trials through ``dept-pipeline tune`` against the same trials in a plain Python
loop, side by side in one run.

Both sides are whole commands in fresh processes, started in turn (loop, tune, tune, loop, ... so load from other
processes falls on both alike):
- tune: the real CLI (``dept-pipeline tune``) with a local Ray it starts itself, a SQLite MLflow store in the
  work folder, a space file of one fixed configuration run once per seed (N seeds = N trials, same cost each),
  scheduler none, ``--max-concurrent 1 --cpus-per-trial 1`` (one trial at a time, one thread, as the loop);
- loop: ``python -c`` calling the trial function the trainable wraps (``pipelines.trial.plan.run_trial``) once per
  seed with the same context (``pipelines.tune.runner.make_context``, one thread) and the same hyperparameters; no
  Ray, no MLflow. It keeps the learned state in a temporary folder as the trainable does.

Overhead = (tune - loop) / loop, on wall time (several processes: CPU time of one would miss most of the work).
Also printed: the trials' own ``train_seconds`` on each side (from MLflow for tune), which splits the overhead
into "around the trials" (Ray start, worker start, MLflow, summary) and "inside them" (slower trials).

The data: the demo dataset (generated drawings), featurized once up front (not timed) into a store in the work
folder with the given model (random weights).

    python bench/tune_overhead.py --model dept-tiny-vit --classes 10 --epochs 10 --trials 4 --rounds 2
    python bench/tune_overhead.py --model ViT-B-32 --classes 10 --epochs 10 --trials 4 --rounds 1
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLI = "from pipelines.cli import main; main(prog_name='dept-pipeline')"
# Comparison (--fresh-workers): the same CLI with Ray Tune's reuse_actors off, i.e. a fresh worker process per
# trial (imports and text-tower load per trial): what pipelines/tune/runner.py did before it turned reuse_actors on.
CLI_FRESH = ("import ray.tune as t; t.TuneConfig = (lambda C: lambda *a, **k: C(*a, **{**k, 'reuse_actors': False}))"
             "(t.TuneConfig); " + CLI)
FRESH = ("import time; t0 = time.perf_counter(); import torch, open_clip, dept, pipelines.trial.plan; "
         "t1 = time.perf_counter(); from dept import load_clip; load_clip({model!r}, {ckpt!r}, text_only=True); "
         "print(t1 - t0, time.perf_counter() - t1)")
LOOP = "import sys; sys.path.insert(0, {bench!r}); from tune_overhead import loop_main; loop_main({args!r})"
DATASET = "bench"


def child_env() -> dict[str, str]:
    """Fresh processes import this checkout (not whatever copy the environment has installed) and keep Ray local."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_RUN_ID", None)
    return env


def run(cmd: list[str], what: str) -> tuple[float, str]:
    """Run a command to completion; (wall seconds, stdout). A failure stops the bench with its output."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-4000:] + p.stderr[-4000:])
        raise SystemExit(f"{what} failed with exit code {p.returncode}")
    return wall, p.stdout


# -- the plain loop (runs in its own process) ---------------------------------------------------------------------
def loop_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--space", required=True)
    args = ap.parse_args(argv)

    from pipelines.trial.context import make_context
    from pipelines.trial.plan import run_trial
    from pipelines.tune.spaces import load_space

    space = load_space(args.space)
    searched = [p.name for p in space.params.values() if p.kind != "fixed"]
    if searched:
        raise SystemExit(f"the loop needs a space of fixed values; {searched} are searched")
    # What `tune --cpus-per-trial 1` builds for its trials (pipelines.tune.runner._context).
    ctx = make_context(args.features, args.dataset, shots=space.shots_values(), seeds=list(space.seeds),
                       objective=space.objective, pseudo_new_fraction=space.pseudo_new_fraction, num_threads=1,
                       device="cpu")
    fixed = {name: spec.values[0] for name, spec in space.params.items()}
    seconds = []
    for seed in space.seeds:
        hp = ctx.hyperparameters({**fixed, "seed": seed})  # as the trainable resolves a Tune config
        with tempfile.TemporaryDirectory(prefix="dept-trial-") as tmp:
            final = run_trial(hp, ctx, state_dir=tmp)
        seconds.append(final["train_seconds"])
    print(json.dumps({"train_seconds": seconds}))


# -- the bench ----------------------------------------------------------------------------------------------------
def write_space(path: Path, epochs: int, trials: int, method: str) -> None:
    seeds = ", ".join(str(s) for s in range(1, trials + 1))
    path.write_text(
        "description: bench/tune_overhead.py - one fixed configuration, once per seed\n"
        f"params:\n  method: {method}\n  dept: true\n  epochs: {epochs}\n"
        f"seeds: [{seeds}]\nnum_samples: 1\nscheduler: none\nsearcher: random\nmetric: val_hm\nmode: max\n"
    )


def mlflow_trial_seconds(uri: str, experiment: str) -> list[float]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r.data.metrics["train_seconds"] for r in runs
            if "mlflow.parentRunId" in r.data.tags and "train_seconds" in r.data.metrics]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="dept-tiny-vit")
    ap.add_argument("--method", default="coop", choices=("coop", "kgcoop"))
    ap.add_argument("--classes", type=int, default=10, help="classes of the generated dataset (half are base)")
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--views", type=int, default=4, help="augmented views per train image in the store")
    ap.add_argument("--val-per-class", type=int, default=4)
    ap.add_argument("--test-per-class", type=int, default=10)
    ap.add_argument("--image-side", type=int, default=64, help="side of the generated images")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--trials", type=int, default=4, help="N: trials per side (one per seed)")
    ap.add_argument("--ray-address", default=None,
                    help="run featurize and tune on this Ray cluster (default: each command starts a local Ray, "
                         "as a user on one machine; its start-up is then part of the tune side)")
    ap.add_argument("--fresh-workers", action="store_true",
                    help="add a third side: tune with Ray Tune's reuse_actors=False (a fresh worker per trial)")
    ap.add_argument("--rounds", type=int, default=1, help="loop/tune pairs, alternating which goes first")
    args = ap.parse_args(argv)
    if min(args.classes - 1, args.shots, args.epochs, args.trials, args.rounds) < 1:
        ap.error("--classes >= 2, --shots, --epochs, --trials, --rounds >= 1")

    sys.path.insert(0, str(REPO))
    from benchlib import machine_line

    from dept.clip import save_random_checkpoint
    from dept.datasets.demo import write_demo_dataset

    ray_args = ["--ray-address", args.ray_address] if args.ray_address else []
    print(f"# {' '.join(sys.argv)}")
    print(f"# {machine_line()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="dept-bench-tune-") as tmp:
        work = Path(tmp)
        data = write_demo_dataset(work / DATASET, num_classes=args.classes, train_per_class=args.shots,
                                  val_per_class=args.val_per_class, test_per_class=args.test_per_class,
                                  image_size=args.image_side, seed=0)
        ckpt = save_random_checkpoint(args.model, work / "model.safetensors")
        seeds = ",".join(str(s) for s in range(1, args.trials + 1))
        feat_s, out = run([sys.executable, "-c", CLI, "featurize", "--dataset-dir", str(data), "--out",
                           str(work / "store"), "--model", args.model, "--pretrained", str(ckpt), "--views",
                           str(args.views), "--shots", str(args.shots), "--seeds", seeds, "--no-progress",
                           *ray_args],
                          "featurize")
        features = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("features: ")][-1]
        space = work / "space.yaml"
        write_space(space, args.epochs, args.trials, args.method)
        base = (args.classes + 1) // 2
        print(f"trial: {args.method}+DePT on {args.model} (random weights), {base} base classes x {args.shots} shots "
              f"= {base * args.shots} train images, {args.views} views, {args.epochs} epochs, batch 4 "
              f"({base * args.shots // 4} steps/epoch), per-epoch val on {base + args.classes - base} classes x "
              f"{min(args.val_per_class, 4)} images, test {args.test_per_class}/class; {args.trials} trials per side; "
              f"featurize (untimed) took {feat_s:.0f} s", flush=True)

        rows = []
        for r in range(args.rounds):
            sides = ("loop", "tune") if r % 2 == 0 else ("tune", "loop")
            if args.fresh_workers:
                sides = sides + ("tune+fresh",)
            res: dict[str, tuple[float, list[float], float | None]] = {}
            for side in sides:
                load = os.getloadavg()[0]
                if side == "loop":
                    cmd = [sys.executable, "-c", LOOP.format(bench=str(Path(__file__).resolve().parent), args=[
                        "--features", features, "--dataset", DATASET, "--space", str(space)])]
                    wall, out = run(cmd, "loop")
                    inner = json.loads(out.strip().splitlines()[-1])["train_seconds"]
                    res[side] = (wall, inner, None)
                else:
                    uri = f"sqlite:///{work / f'mlflow-{r}-{side}.db'}"
                    exp = f"overhead-{r}-{side.replace('+', '-')}"
                    wall, out = run([sys.executable, "-c", CLI_FRESH if side == "tune+fresh" else CLI, "tune", "--features", features, "--dataset", DATASET,
                                     "--space", str(space), "--max-concurrent", "1", "--cpus-per-trial", "1",
                                     "--storage", str(work / "tune"), "--mlflow-uri", uri, "--experiment", exp,
                                     *ray_args],
                                    "tune")
                    done = re.search(r"\] \S+: done in (\d+)s", out)
                    inner = mlflow_trial_seconds(uri, exp)
                    if len(inner) != args.trials:
                        raise SystemExit(f"tune logged {len(inner)} finished trials, expected {args.trials}")
                    res[side] = (wall, inner, float(done.group(1)) if done else None)
                print(f"  round {r + 1} {side}: {res[side][0]:.1f} s wall, trials' own time "
                      f"{sum(res[side][1]):.1f} s ({', '.join(f'{s:.1f}' for s in res[side][1])}); "
                      f"load {load:.1f}", flush=True)
            rows.append(res)
        # What a trial pays for a fresh worker process besides its own work: imports, and loading the text tower.
        fresh = []
        for _ in range(2):
            _, out = run([sys.executable, "-c", FRESH.format(model=args.model, ckpt=str(ckpt))], "fresh process")
            fresh.append([float(x) for x in out.split()[-2:]])
        imports_s, load_s = min(f[0] for f in fresh), min(f[1] for f in fresh)

    print()
    print("| round | loop s | tune s | tune: dataset part s | loop trials' own s | tune trials' own s | "
          "overhead s | overhead % | per trial s |")
    print("|" + "---|" * 9)
    overheads, per_trial = [], []
    for i, res in enumerate(rows, 1):
        lw, li, _ = res["loop"]
        tw, ti, td = res["tune"]
        ov = tw - lw
        overheads.append(ov / lw)
        per_trial.append(ov / args.trials)
        print(f"| {i} | {lw:.1f} | {tw:.1f} | {td if td is not None else '-'} | {sum(li):.1f} | {sum(ti):.1f} | "
              f"{ov:.1f} | {100 * ov / lw:.0f} % | {ov / args.trials:.1f} |")
    if args.fresh_workers:
        for i, res in enumerate(rows, 1):
            fw, _, fd = res["tune+fresh"]
            tw = res["tune"][0]
            print(f"fresh worker per trial, round {i}: tune {fw:.1f} s (dataset part {fd} s) vs {tw:.1f} s with "
                  f"reused workers, overhead {100 * (fw - res['loop'][0]) / res['loop'][0]:.0f} %; reuse saves "
                  f"{(fw - tw) / args.trials:.1f} s per trial")
    print(f"a fresh Python process: imports of torch, open_clip, dept, pipelines.trial.plan {imports_s:.1f} s, then "
          f"load_clip({args.model}, text_only) {load_s:.1f} s (best of 2)")
    loop_trial = statistics.median(statistics.mean(res["loop"][1]) for res in rows)
    ov_abs = statistics.median(res["tune"][0] - res["loop"][0] for res in rows)
    print(f"median overhead {100 * statistics.median(overheads):.0f} % "
          f"({ov_abs:.1f} s over {args.trials} trials of {loop_trial:.1f} s each in the loop); "
          f"5 % would need trials of >= {ov_abs / args.trials / 0.05:.0f} s each at this overhead per trial "
          f"(or >= {ov_abs / 0.05:.0f} s of trials per command if the overhead were all fixed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
