"""The orchestration ceiling of ``dept-pipeline tune --population P`` (issue 26, items 1 and 4): how many
member-epochs an hour the machinery alone (Ray Tune, the population host, per-epoch reports and checkpoints, MLflow
logging, final scoring and artifacts) lets through, against the same runs with the real step, side by side.

For each P in ``--members`` and each side, interleaved (stand-in, real, then real, stand-in for the next P, so load
from other processes falls on both alike), one whole ``dept-pipeline tune`` command in a fresh process with its own
local Ray, SQLite MLflow store and Tune storage: P configurations of one shape (CoOp+DePT, loss weight and lr
sampled, seed 1, scheduler none: every trial runs all ``--epochs``), ``--population P --cpus-per-trial CORES``
(P = 1: one single trial on every core, the population path's P = 1). Sides:

- stand-in: ``DEPT_BENCH_STANDIN_STEP=1`` (pipelines.trial.standin): the training and scoring compute replaced by a
  near-zero stand-in with the same outputs; what is left is the machinery;
- real: the real step.

Both run with ``DEPT_BENCH_TIMERS_DIR`` (pipelines.benchtimers): each process appends its timer events (trial
start, Tune report round trip with the checkpoint's upload, checkpoint write, population barrier wait, the
driver's MLflow logging per result and per finished trial) to a JSON-lines file the bench sums up.

Printed per run: wall seconds, trials/hour and member-epochs/hour on wall time; start-up (command start to the first
trial's body), the training window (first trial body to the last final report) and its member-epochs/hour; per
member-epoch: Tune report round trip and checkpoint write (summed over member processes, which run at once), the
driver's MLflow logging in Tune's event loop (serial, on the critical path) and the writes its writer thread
sends off the loop (pipelines.tracking.writer), the host's barrier wait per epoch; populations
formed (a population forms when P members joined or 10 s after its first one).

The data: the demo dataset (generated drawings) featurized once up front (not timed) with the given model (random
weights) into the work folder.

    python bench/orchestration_ceiling.py --members 1,8,32,64 --epochs 10
    python bench/orchestration_ceiling.py --members 1,4 --epochs 2 --sides standin    # dry run
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLI = "from pipelines.cli import main; main(prog_name='dept-pipeline')"
DATASET = "bench"
STANDIN_ENV, TIMERS_ENV = "DEPT_BENCH_STANDIN_STEP", "DEPT_BENCH_TIMERS_DIR"  # pipelines.trial.standin, benchtimers


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    for k in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", STANDIN_ENV, TIMERS_ENV):
        env.pop(k, None)
    env.update(extra)
    return env


def run(cmd: list[str], what: str, env: dict[str, str], log: Path | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if log is not None:
        log.write_text(p.stdout + "\n--- stderr ---\n" + p.stderr)
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-4000:] + p.stderr[-4000:])
        raise SystemExit(f"{what} failed with exit code {p.returncode}")
    return wall, p.stdout


def write_space(path: Path, members: int, epochs: int, method: str) -> None:
    path.write_text(
        "description: bench/orchestration_ceiling.py - P configurations of one shape\n"
        f"params:\n  method: {method}\n  dept: true\n  loss_weight: {{uniform: [0.3, 0.9]}}\n"
        f"  lr: {{loguniform: [1.0e-3, 3.0e-2]}}\n  epochs: {epochs}\n  warmup_epochs: 0\n"
        f"seeds: [1]\nnum_samples: {members}\nscheduler: none\nsearcher: {{type: random, seed: 0}}\n"
        "metric: val_hm\nmode: max\n")


def read_timers(folder: Path) -> list[dict]:
    events = []
    for f in folder.glob("*.jsonl"):
        pid = f.stem
        events += [{**json.loads(line), "pid": pid} for line in f.read_text().splitlines() if line.strip()]
    return events


def mlflow_summary(uri: str, experiment: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = [r for r in client.search_runs([exp.experiment_id], "tags.role = 'trial'", max_results=10000)]
    finished = [r for r in runs if "test_hm" in r.data.metrics]
    return {"trial_runs": len(runs), "finished": len(finished),
            "populations": len({r.data.tags.get("population") for r in runs if r.data.tags.get("population")}),
            "train_seconds": [r.data.metrics.get("train_seconds", float("nan")) for r in finished]}


def summarize(side: str, members: int, epochs: int, started: float, wall: float, events: list[dict],
              tracked: dict, load: float) -> dict:
    by = {}
    for e in events:
        by.setdefault(e["name"], []).append(e)
    total = lambda name: sum(e["s"] for e in by.get(name, []))  # noqa: E731
    me = members * epochs
    starts = [e["t"] for e in by.get("trial_start", [])]
    finals = [e["t"] for e in by.get("tune_report_final", [])]
    window = (max(finals) - min(starts)) if starts and finals else float("nan")
    barrier = by.get("barrier_wait", [])
    return {
        "side": side, "members": members, "epochs": epochs, "wall_s": wall, "load": load,
        "trials_per_hour": 3600 * members / wall, "member_epochs_per_hour": 3600 * me / wall,
        "startup_s": (min(starts) - started) if starts else float("nan"),
        "window_s": window, "window_member_epochs_per_hour": 3600 * me / window if window == window else float("nan"),
        "tail_s": (started + wall - max(finals)) if finals else float("nan"),
        "report_s_per_me": total("tune_report") / me, "reports": len(by.get("tune_report", [])),
        "final_report_s_per_trial": total("tune_report_final") / members,
        "ckpt_write_s_per_me": total("checkpoint_write") / me,
        "mlflow_result_s_per_me": total("mlflow_result") / me, "mlflow_results": len(by.get("mlflow_result", [])),
        # The result writes themselves, sent from the logger's own thread (pipelines.tracking.writer), off Tune's loop.
        "mlflow_write_s_per_me": total("mlflow_write") / me, "mlflow_write_batches": len(by.get("mlflow_write", [])),
        "mlflow_complete_s_per_trial": total("mlflow_complete") / members,
        "barrier_s_per_epoch": total("barrier_wait") / max(1, len(barrier)) if barrier else float("nan"),
        "barrier_s_total": total("barrier_wait"),
        "member_processes": len({e["pid"] for e in by.get("trial_start", [])}),
        **tracked,
    }


def table(rows: list[dict]) -> str:
    out = ["| P | side | wall s | trials/h | member-epochs/h | start-up s | window s | window m-e/h | tail s | "
           "report s/m-e | ckpt write s/m-e | MLflow s/m-e (driver loop) | MLflow writes s/m-e (writer thread) | "
           "MLflow per finished trial s | barrier s/epoch | populations | load |",
           "|" + "---:|" * 17]
    for r in rows:
        out.append(
            f"| {r['members']} | {r['side']} | {r['wall_s']:.1f} | {r['trials_per_hour']:.0f} | "
            f"{r['member_epochs_per_hour']:.0f} | {r['startup_s']:.1f} | {r['window_s']:.1f} | "
            f"{r['window_member_epochs_per_hour']:.0f} | {r['tail_s']:.1f} | {r['report_s_per_me']:.3f} | "
            f"{r['ckpt_write_s_per_me']:.4f} | {r['mlflow_result_s_per_me']:.3f} | {r['mlflow_write_s_per_me']:.3f} | "
            f"{r['mlflow_complete_s_per_trial']:.2f} | {r['barrier_s_per_epoch']:.2f} | {r['populations']} | "
            f"{r['load']:.1f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", default="1,8,32,64", help="comma-separated P values")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--sides", default="standin,real", help="standin, real or both (interleaved)")
    ap.add_argument("--model", default="dept-tiny-vit")
    ap.add_argument("--method", default="coop", choices=("coop", "kgcoop"))
    ap.add_argument("--classes", type=int, default=10, help="classes of the generated dataset (half are base)")
    ap.add_argument("--shots", type=int, default=8)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--cpus-per-trial", type=float, default=None, help="default: every core (os.cpu_count())")
    ap.add_argument("--extra", default="", help="more tune options, space-separated (e.g. --gpus-per-trial 1)")
    ap.add_argument("--out", type=Path, default=None, help="folder for ceiling.json, ceiling.md and the run logs")
    args = ap.parse_args(argv)
    members = [int(p) for p in args.members.split(",")]
    sides = [s for s in args.sides.split(",") if s]
    if not members or min(members) < 1 or args.epochs < 1 or not set(sides) <= {"standin", "real"} or not sides:
        ap.error("--members P,... >= 1, --epochs >= 1, --sides of standin / real")
    cores = args.cpus_per_trial or float(os.cpu_count() or 1)

    sys.path.insert(0, str(REPO / "bench"))
    from benchlib import machine_line

    from dept.clip import save_random_checkpoint
    from dept.datasets.demo import write_demo_dataset

    header = [f"# {' '.join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:]))}",
              f"# {machine_line()}; uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}"]
    print("\n".join(header), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="dept-bench-ceiling-") as tmp:
        work = Path(tmp)
        logs = args.out / "logs" if args.out is not None else work / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        data = write_demo_dataset(work / DATASET, num_classes=args.classes, train_per_class=args.shots,
                                  val_per_class=4, test_per_class=4, image_size=32, seed=0)
        ckpt = save_random_checkpoint(args.model, work / "model.safetensors")
        feat_s, out = run([sys.executable, "-c", CLI, "featurize", "--dataset-dir", str(data), "--out",
                           str(work / "store"), "--model", args.model, "--pretrained", str(ckpt), "--views",
                           str(args.views), "--shots", str(args.shots), "--seeds", "1", "--no-progress"],
                          "featurize", child_env())
        features = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("features: ")][-1]
        base = (args.classes + 1) // 2
        print(f"trials: {args.method}+DePT on {args.model} (random weights), {base} base classes x {args.shots} "
              f"shots, {args.views} views, {args.epochs} epochs, batch 4; --cpus-per-trial {cores:g}; featurize "
              f"(untimed) {feat_s:.0f} s", flush=True)
        for i, P in enumerate(members):
            space = work / f"space-{P}.yaml"
            write_space(space, P, args.epochs, args.method)
            for side in (sides if i % 2 == 0 else sides[::-1]):
                name = f"p{P}-{side}"
                timers = work / f"timers-{name}"
                timers.mkdir()
                env = child_env(**{TIMERS_ENV: str(timers), **({STANDIN_ENV: "1"} if side == "standin" else {})})
                uri = f"sqlite:///{work / f'mlflow-{name}.db'}"
                load = os.getloadavg()[0]
                started = time.time()
                wall, _ = run([sys.executable, "-c", CLI, "tune", "--features", str(features), "--dataset", DATASET,
                               "--space", str(space), "--population", str(P), "--cpus-per-trial", f"{cores:g}",
                               "--storage", str(work / "tune" / name), "--mlflow-uri", uri, "--experiment", name,
                               *args.extra.split()],
                              f"tune {name}", env, logs / f"{name}.log")
                tracked = mlflow_summary(uri, name)
                if tracked["finished"] != P:
                    raise SystemExit(f"tune {name}: {tracked['finished']} of {P} trials finished with test numbers")
                row = summarize(side, P, args.epochs, started, wall, read_timers(timers), tracked, load)
                rows.append(row)
                print(f"  P={P:3d} {side:8s} wall {wall:6.1f} s, {row['member_epochs_per_hour']:8.0f} member-epochs/h "
                      f"({row['trials_per_hour']:.0f} trials/h), start-up {row['startup_s']:.1f} s, window "
                      f"{row['window_s']:.1f} s ({row['window_member_epochs_per_hour']:.0f} m-e/h), report "
                      f"{row['report_s_per_me']:.3f} s/m-e, MLflow {row['mlflow_result_s_per_me']:.3f} s/m-e, "
                      f"barrier {row['barrier_s_per_epoch']:.2f} s/epoch, {row['populations']} population(s), "
                      f"train_seconds median {statistics.median(row['train_seconds']):.1f}; load {load:.1f}",
                      flush=True)
    md = table(rows)
    print()
    print(md)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "ceiling.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1))
        (args.out / "ceiling.md").write_text("\n".join(header) + "\n\n" + md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
