"""``dept-pipeline tune`` end to end on generated demo data: featurize -> tune (Ray Tune on the session cluster) ->
MLflow (SQLite, and a real ``mlflow server``) -> report; ASHA stopping weak trials; a failing trial retried; a
driver killed with SIGKILL and resumed, every trial exactly once in MLflow."""
from __future__ import annotations

import contextlib
import csv
import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pipelines.cli import main
from pipelines.tracking.client import store_lock
from pipelines.trial.context import EPOCH_PAUSE_ENV, FAIL_ONCE_ENV
from pipelines.trial.restore import CHECKPOINT_DIR
from pipelines.vocabulary import EPOCH_METRICS, FINAL_METRICS, SWEEP_METRIC_CURVES, SWEEP_METRIC_WEIGHTS, sweep_key
from tests.conftest import REPO
from tests.mlflow_server import mlflow_server as serve_mlflow

TINY_MODEL = "dept-tiny-vit"
LOGGED_METRICS = (set(EPOCH_METRICS) | set(FINAL_METRICS)
                  | {sweep_key(c, w) for c in SWEEP_METRIC_CURVES for w in SWEEP_METRIC_WEIGHTS})
TRIAL_TAGS = ("dataset", "method", "dept", "seed", "shots", "backbone", "pretrained", "feature_fingerprint",
              "tune.trial_id")
HYPERPARAMETERS = ("method", "dept", "loss_weight", "fusion_weight", "fusion", "epochs", "batch_size", "lr",
                   "head_lr_mult", "warmup_epochs", "warmup_lr", "momentum", "weight_decay", "n_ctx", "ctx_init",
                   "shots", "logit_scale", "seed")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def tune_args(store, tmp_path, uri, experiment, *extra):
    return ["tune", "--features", store, "--dataset", "all", "--storage", tmp_path / "tune", "--mlflow-uri", uri,
            "--experiment", experiment, *extra]


def runs_of(uri: str, experiment: str, filter_string: str = ""):
    from mlflow import MlflowClient

    with store_lock(uri):  # a tune process may be creating the store's tables right now
        client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, (client.search_runs([exp.experiment_id], filter_string) if exp else [])


def saved_trial_checkpoints(experiment_dir: Path) -> dict[str, tuple[str, str | None]]:
    """Trial id -> (status, the checkpoint folder its last result names) in the experiment state Tune last saved."""
    states = sorted(experiment_dir.glob("experiment_state-*.json"))
    try:
        data = json.loads(states[-1].read_text())
        trials = [(json.loads(state), json.loads(meta)) for state, meta in data["trial_data"]]
    except (IndexError, OSError, ValueError, KeyError):
        return {}
    return {t["trial_id"]: (t["status"], (m.get("last_result") or {}).get("checkpoint_dir_name")) for t, m in trials}


def saved_trial_statuses(experiment_dir: Path) -> dict[str, str]:
    """Trial id -> status in the experiment state Tune last saved under ``experiment_dir`` (what a ``--resume``
    starts from); empty while none is saved or one is being written."""
    return {trial_id: status for trial_id, (status, _) in saved_trial_checkpoints(experiment_dir).items()}


def trial_dir_of(experiment_dir: Path, trial_id: str) -> Path:
    (trial_dir,) = [p for p in experiment_dir.iterdir() if p.is_dir() and trial_id in p.name]
    return trial_dir


def wait_for_completed_trials(proc, log_path, uri: str, experiment: str, experiment_dir: Path,
                              timeout_s: float = 400) -> dict:
    """Poll while ``proc`` (a tune driver) runs until a trial has completed in MLflow and Tune has saved it as
    terminated under ``experiment_dir`` (so a driver killed now resumes without it); returns those trials' runs
    by Tune trial id: (run id, end time)."""
    deadline = time.time() + timeout_s
    while True:
        assert proc.poll() is None, Path(log_path).read_text()[-3000:]
        assert time.time() < deadline, "no trial completed in time"
        time.sleep(0.5)
        try:
            _, runs = runs_of(uri, experiment, "tags.trial_status = 'completed'")
        except Exception:  # the store is being created by the driver
            continue
        saved = saved_trial_statuses(experiment_dir)
        done = {r.data.tags["tune.trial_id"]: (r.info.run_id, r.info.end_time) for r in runs
                if saved.get(r.data.tags["tune.trial_id"]) == "TERMINATED"}
        if done:
            return done


def failure_story(client, run) -> str:
    """What a child run that did not finish says about itself: name, status tags, and its error.txt (the trial's
    traceback) when logged; for the assertion message, so a rare failure in CI explains itself."""
    tags = run.data.tags
    story = (f"{run.info.run_name}: {run.info.status}, trial_status {tags.get('trial_status')}, "
             f"failures {tags.get('failures')}, error {tags.get('error')!r}")
    if any(a.path == "error.txt" for a in client.list_artifacts(run.info.run_id)):
        story += "\n" + Path(client.download_artifacts(run.info.run_id, "error.txt")).read_text()[-2000:]
    return story


def check_tracked(uri: str, experiment: str, n_trials: int, seeds: set[int]):
    """The MLflow structure the issue asks for; returns (client, parent run, child runs)."""
    client, runs = runs_of(uri, experiment)
    parents = [r for r in runs if r.data.tags.get("role") == "parent"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.tags["dataset"] == "demo" and parent.info.status == "FINISHED"
    below = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    # Beside the trials, the dataset's CLIP zero-shot run, logged once (also across --resume).
    (zero_shot,) = [r for r in below if r.data.tags.get("role") == "zero-shot"]
    assert zero_shot.info.status == "FINISHED" and {"test_hm", "val_hm"} <= set(zero_shot.data.metrics)
    assert zero_shot.data.tags["feature_fingerprint"] == parent.data.tags["feature_fingerprint"]
    # Runs of trials Tune no longer has (a killed driver's) are kept, KILLED; the rest is one run per trial.
    abandoned = [r for r in below if r.data.tags.get("trial_status") == "abandoned"]
    assert all(r.info.status == "KILLED" for r in abandoned)
    children = [r for r in below if r.data.tags.get("role") == "trial" and r not in abandoned]
    assert len(children) == n_trials == len(runs) - 2 - len(abandoned)
    trial_ids = [c.data.tags["tune.trial_id"] for c in children]
    assert len(set(trial_ids)) == n_trials
    assert {int(c.data.tags["seed"]) for c in children} == seeds
    statuses = []
    for c in children:
        assert re.fullmatch(r"coop\+DePT lw0\.\d\d fw0\.70 lr\d\.\de-0\d s[12]", c.info.run_name), c.info.run_name
        for name in HYPERPARAMETERS:
            assert name in c.data.params, name
        assert c.data.params["logit_scale"] == "learned"
        for tag in TRIAL_TAGS:
            assert c.data.tags.get(tag), tag
        assert c.data.tags["backbone"] == TINY_MODEL
        assert c.data.tags.get("ray_node_ids")  # every trial reported at least one epoch from some node
        # Only the project's names are logged: none of Ray Tune's bookkeeping keys.
        assert set(c.data.metrics) <= LOGGED_METRICS, set(c.data.metrics) - LOGGED_METRICS
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "train_loss")]
        assert steps == sorted(set(steps)) and steps[0] == 1  # every epoch once, in order
        status = c.data.tags["trial_status"]
        statuses.append(status)
        assert c.info.status == "FINISHED", failure_story(client, c)
        if status == "completed":
            assert steps == [1, 2, 3]
            assert [m.step for m in client.get_metric_history(c.info.run_id, "val_hm")] == [1, 2, 3]
            for key in ("test_base_acc", "test_new_acc", "test_hm", "val_base_acc", "val_new_acc", "val_hm"):
                assert key in c.data.metrics, key
            sweep = {k for k in c.data.metrics if k.startswith("test_hm_sweep/")}
            assert sweep == {sweep_key("sweep_test_hm", w) for w in SWEEP_METRIC_WEIGHTS}  # one metric per weight
        else:
            assert status == "stopped_early", status
            assert len(steps) < 3 and "test_hm" not in c.data.metrics
    assert "completed" in statuses

    # Parent: the best configuration (when one has every seed completed: ASHA may have stopped a seed of each), a
    # results table, plots and the best learned state.
    seeds_done: dict[tuple, dict[str, str]] = {}
    for c in children:
        config = tuple(sorted((k, v) for k, v in c.data.params.items() if k != "seed"))
        seeds_done.setdefault(config, {})[c.data.tags["seed"]] = c.data.tags["trial_status"]
    complete = {config for config, done in seeds_done.items()
                if set(done) == {str(s) for s in seeds} and set(done.values()) == {"completed"}}
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.csv", "space.yaml", "plots"} <= artifacts
    if complete:
        assert parent.data.params["loss_weight"] and parent.data.params["fusion_weight"] == "0.7"
        assert "best_val_hm" in parent.data.metrics and "best_test_hm" in parent.data.metrics
        best = next(c for c in children if c.info.run_id == parent.data.tags["best_run_id"])
        assert tuple(sorted((k, v) for k, v in best.data.params.items() if k != "seed")) in complete
        assert "best_learned_state" in artifacts
    else:
        assert parent.data.tags["best"].startswith("none: no configuration has all")
        assert "loss_weight" not in parent.data.params and "best_val_hm" not in parent.data.metrics
        assert "best_learned_state" not in artifacts
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    # The fusion-weight sweep is drawn for the winning configuration only.
    assert plots == {"plots/base_new_hm_vs_loss_weight.png", "plots/base_vs_new.png"} | (
        {"plots/fusion_weight_sweep.png"} if complete else set())
    if complete:
        state = {a.path for a in client.list_artifacts(parent.info.run_id, "best_learned_state")}
        assert "best_learned_state/learned_state.safetensors" in state
    local = client.download_artifacts(parent.info.run_id, "results.csv")
    rows = list(csv.DictReader(open(local)))
    assert sorted(r["trial_id"] for r in rows) == sorted(trial_ids)
    return client, parent, children


@pytest.mark.slow
def test_tune_smoke_end_to_end_sqlite(demo_store, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = invoke(*tune_args(demo_store, tmp_path, uri, "e2e", "--space", "smoke", "--method", "coop"))
    assert result.exit_code == 0, result.output
    assert "[1/1] demo: starting 4 trials" in result.output
    assert re.search(r"\[1/1\] demo: done in \d+s.*; CLIP zero-shot test base \d+\.\d\d", result.output)
    assert "best configuration per dataset" in result.output
    assert re.search(r"^demo\s+CoOp\+DePT\s", result.output, re.M)
    check_tracked(uri, "e2e", n_trials=4, seeds={1, 2})
    assert (tmp_path / "tune" / "e2e" / "demo").is_dir()

    report = invoke("report", "--mlflow-uri", uri, "--experiment", "e2e")
    assert report.exit_code == 0, report.output
    # Both seeds of the shown configuration completed (a spread), or it is marked incomplete (no spread).
    assert re.search(r"^\| demo \| (\*\*)?CoOp\+DePT(\*\* \(winner\))? \| \d\.\d\d \| \d\.\de-\d\d \| "
                     r"(2 \| \d+\.\d\d ± \d+\.\d\d|1/2 incomplete \| \d+\.\d\d) \|",
                     report.output, re.M), report.output
    assert "**Average**" in report.output
    assert re.search(r"^\| demo \| CLIP \(zero-shot\) \| — \| — \| — \| \d+\.\d\d \|", report.output, re.M)

    # The same command again is refused (no silent second experiment, nothing overwritten) in one line.
    again = CliRunner().invoke(main, [str(a) for a in tune_args(demo_store, tmp_path, uri, "e2e", "--space", "smoke",
                                                                "--method", "coop")])
    assert again.exit_code == 2 and "already exists" in again.output and "--resume" in again.output
    assert len(again.output.strip().splitlines()) == 1
    # Resuming with another objective, or with Tune storage that holds no such experiment, is refused too.
    base_args = [str(a) for a in tune_args(demo_store, tmp_path, uri, "e2e", "--space", "smoke", "--method", "coop")]
    other = CliRunner().invoke(main, [*base_args, "--resume", "--objective", "pseudo-new"])
    assert other.exit_code == 2 and "resume with the same --space and --objective" in other.output
    moved = CliRunner().invoke(main, [*base_args, "--resume", "--storage", str(tmp_path / "elsewhere")])
    assert moved.exit_code == 2 and "no Tune experiment to resume" in moved.output


@pytest.mark.slow
def test_tune_errors_before_ray_work(demo_store, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cases = [
        (["--space", "nope"], "unknown search space 'nope'"),
        (["--space", "paper"], "shots 16 but the feature store"),
        (["--space", "smoke", "--mlflow-uri", "http://127.0.0.1:9"], "unreachable"),
    ]
    for extra, expected in cases:
        args = [str(a) for a in tune_args(demo_store, tmp_path, uri, "err", *extra)]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert expected in result.output and len(result.output.strip().splitlines()) == 1
    bad = CliRunner().invoke(main, ["tune", "--features", str(tmp_path / "empty"), "--dataset", "all",
                                    "--mlflow-uri", uri])
    assert bad.exit_code == 2 and "no featurized datasets" in bad.output
    assert not (tmp_path / "tune").exists()


@pytest.mark.slow
def test_asha_stops_weak_trials(demo_store, tmp_path):
    """Arranged: trials run one at a time, the grid's first learning rate (1e-5) barely moves the training loss
    while 0.05 overshoots it, so at the one-epoch rung a 0.05 trial is below the median of those before it."""
    space = tmp_path / "asha.yaml"
    space.write_text(textwrap.dedent("""
        params:
          method: coop
          lr: {grid: [1.0e-5, 0.05]}
          epochs: 3
          warmup_epochs: 0
          n_ctx: 2
          ctx_init: ""
        seeds: [1, 2]
        metric: train_loss
        mode: min
        scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
    """))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = invoke(*tune_args(demo_store, tmp_path, uri, "asha", "--space", space, "--max-concurrent", 1))
    assert result.exit_code == 0, result.output
    client, runs = runs_of(uri, "asha", "tags.role = 'trial'")
    assert len(runs) == 4
    stopped = [r for r in runs if r.data.tags["trial_status"] == "stopped_early"]
    assert stopped, [(r.info.run_name, r.data.params["lr"], r.data.metrics) for r in runs]
    for r in stopped:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")]
        assert steps in ([1], [1, 2])  # stopped at a rung (1 or 2 epochs), before the last epoch
        assert "test_hm" not in r.data.metrics  # test images are scored only at the end of a finished trial
    assert any(r.data.tags["trial_status"] == "completed" for r in runs)
    assert re.search(r"\d+ completed, [1-9]\d* stopped early", result.output)


@pytest.fixture()
def mlflow_server(tmp_path):
    """A real ``mlflow server`` on 127.0.0.1 (free port), stopped by its process group at the end."""
    folder = tmp_path / "server"
    folder.mkdir()
    with serve_mlflow(folder) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.mark.slow
def test_tune_against_mlflow_server_with_a_trial_failing_once(demo_store, tmp_path, mlflow_server, monkeypatch,
                                                              ray_cluster):
    """Cluster-shaped: the two-node loopback cluster (featurized there by ``demo_store``, features in a shared
    folder), an HTTP tracking server, trials of 2 CPUs so that each node holds one at a time and both nodes work.
    Every trial raises once after its first epoch (test hook) and FailureConfig's retry makes it succeed: still one
    child run per trial, every epoch logged once."""
    import ray

    marker_dir = tmp_path / "fail-once"
    marker_dir.mkdir()
    monkeypatch.setenv(FAIL_ONCE_ENV, str(marker_dir))
    # Trials that last seconds, not ~0.2 s: else the first node's reused worker can run every trial before the
    # second node's worker has started, and the test would not see both nodes work.
    monkeypatch.setenv(EPOCH_PAUSE_ENV, "1.5")
    result = invoke(*tune_args(demo_store, tmp_path, mlflow_server, "server", "--space", "smoke", "--method", "coop",
                               "--max-failures", 1, "--cpus-per-trial", 2, "--ray-address", ray_cluster.address))
    assert result.exit_code == 0, result.output
    client, parent, children = check_tracked(mlflow_server, "server", n_trials=4, seeds={1, 2})
    cluster_nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(cluster_nodes) == 2
    # Every attempt counts: two trials start at once, one per node, but since every trial fails once the retries
    # may all land on the node whose reused worker frees first (seen in CI), so final results alone can name one.
    ran_on = {n for c in children for n in c.data.tags.get("ray_node_ids", "").split(",") if n}
    assert ran_on == cluster_nodes, (ran_on, cluster_nodes)
    final_nodes = {c.data.tags.get("ray_node_id") for c in children if c.data.tags.get("trial_status") == "completed"}
    results = list(csv.DictReader(open(client.download_artifacts(parent.info.run_id, "results.csv"))))
    assert final_nodes <= {row["node_id"] for row in results} <= cluster_nodes
    failed_once = {p.name.split(".")[0] for p in marker_dir.iterdir()}
    assert failed_once, "the hook made no trial fail"
    for c in children:
        trial_id = c.data.tags["tune.trial_id"]
        if trial_id in failed_once:
            # It failed after epoch 1 and was retried in the same run from its epoch-1 checkpoint (epochs not
            # repeated, checked above); the retry ran to the end or until ASHA stopped it — not an error.
            assert c.data.tags["failures"] == "1"
            assert c.data.tags["trial_status"] in ("completed", "stopped_early")
            trial_dir = trial_dir_of(tmp_path / "tune" / "server" / "demo", trial_id)
            resumed = [json.loads(line)["resumed_after_epoch"] for line in open(trial_dir / "result.json")]
            assert resumed[0] == 0 and resumed[1:] and set(resumed[1:]) == {1}, resumed
        else:
            assert c.data.tags["failures"] == "0"
    report = invoke("report", "--mlflow-uri", mlflow_server, "--experiment", "server")
    # The CoOp+DePT row, marked the winner when its configuration has every seed completed (ASHA may stop one).
    assert report.exit_code == 0, report.output
    assert re.search(r"^\| demo \| (\*\*CoOp\+DePT\*\* \(winner\)|CoOp\+DePT) \|", report.output, re.M), report.output


def _driver(args, log_path, cwd):
    return subprocess.Popen(
        [sys.executable, "-c", "from pipelines.cli import main; main()", *[str(a) for a in args]],
        cwd=cwd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )


@contextlib.contextmanager
def driver_running(args, log_path, cwd):
    """:func:`_driver`, killed on the way out if the test left it running."""
    proc = _driver(args, log_path, cwd)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)


@pytest.mark.slow
def test_driver_killed_and_resumed_logs_every_trial_exactly_once(demo_store, tmp_path, ray_cluster, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # The smoke space with 8 samples: 16 trials, one at a time, each pausing 0.5 s per epoch (test hook; a reused
    # worker runs a tiny trial in ~0.2 s) so that most are still to run when the driver is killed ~3 s after the
    # first one completes.
    monkeypatch.setenv(EPOCH_PAUSE_ENV, "0.5")
    space = yaml.safe_load((REPO / "tune_spaces" / "smoke.yaml").read_text())
    space["num_samples"] = 8
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    args = tune_args(demo_store, tmp_path, uri, "killed", "--space", tmp_path / "space.yaml", "--method", "coop",
                     "--max-concurrent", 1, "--ray-address", ray_cluster.address)
    experiment_dir = tmp_path / "tune" / "killed" / "demo"
    first = _driver(args, tmp_path / "first.log", tmp_path)
    try:
        completed_before = wait_for_completed_trials(first, tmp_path / "first.log", uri, "killed", experiment_dir)
        # Kill while the saved state names a running trial's checkpoint, so the race below can be staged.
        deadline = time.time() + 120
        while not (running := [(t, c) for t, (status, c) in saved_trial_checkpoints(experiment_dir).items()
                               if status == "RUNNING" and c]):
            assert first.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.2)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    # Tune deletes a trial's previous checkpoint as the next one registers and saves its state afterwards; a driver
    # killed in between leaves a state naming a deleted checkpoint. Stage it: the named folder becomes the next
    # one (unless the kill already landed in that window). The resumed trial must still finish, every epoch once.
    raced_trial, named = running[0]
    named_dir = trial_dir_of(experiment_dir, raced_trial) / named
    if named_dir.is_dir():
        index = int(CHECKPOINT_DIR.match(named).group(1))
        named_dir.rename(named_dir.with_name(f"checkpoint_{index + 1:06d}"))
    _, parents = runs_of(uri, "killed", "tags.role = 'parent'")
    assert parents[0].info.status == "RUNNING"  # killed mid-experiment: no summary yet
    _, trials_at_kill = runs_of(uri, "killed", "tags.role = 'trial'")
    finished_at_kill = [r for r in trials_at_kill if r.data.tags["trial_status"] in ("completed", "stopped_early")]
    assert len(finished_at_kill) < 16  # trials were left to run

    second = _driver([*args, "--resume"], tmp_path / "second.log", tmp_path)
    assert second.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-3000:]
    assert "resuming 16 trials" in (tmp_path / "second.log").read_text()

    client, parent, children = check_tracked(uri, "killed", n_trials=16, seeds={1, 2})
    by_trial = {c.data.tags["tune.trial_id"]: c for c in children}
    for trial_id, (run_id, end_time) in completed_before.items():
        # Finished before the kill: the same run, untouched, and the trial was not trained again.
        assert by_trial[trial_id].info.run_id == run_id
        assert by_trial[trial_id].info.end_time == end_time
        trial_dir = trial_dir_of(experiment_dir, trial_id)
        assert len((trial_dir / "result.json").read_text().splitlines()) == 3  # epochs 1, 2, 3 reported once
    # The trial whose named checkpoint was gone resumed from the one that replaced it (check_tracked: FINISHED,
    # every epoch logged once).
    assert by_trial[raced_trial].data.tags["trial_status"] in ("completed", "stopped_early")
    # Runs of trials that were under way at the kill were continued, not duplicated.
    assert {r.data.tags["tune.trial_id"] for r in trials_at_kill} <= set(by_trial)


# -- the driver-side MLflow logger, without Ray (fast) -------------------------------------------------------------
class FakeTrial:
    """What the logger reads from a Tune ``Trial`` (trial id, config, status, last result, failures)."""

    def __init__(self, trial_id, config, status="TERMINATED", last_result=None, failures=0):
        self.trial_id, self.config, self.status = trial_id, config, status
        self.last_result = last_result or {}
        self.checkpoint = None
        self.run_metadata = type("Meta", (), {"num_failures": failures})()

    def get_error(self):
        return "boom" if self.status == "ERROR" else None


def _logger(tmp_path, key="exp/demo"):
    from pipelines.tracking.client import Tracker
    from pipelines.tracking.trial_logger import MlflowTrialLogger
    from pipelines.trial.context import TrialContext

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "unit")
    parent = tracker.find_parent("demo") or tracker.create_parent("demo", {}, name="demo")
    ctx = TrialContext(features_url="/x", dataset="demo", model=TINY_MODEL, pretrained="none", weights_id="w",
                       fingerprint="f", store_shots=4, seeds=(1, 2))
    return MlflowTrialLogger(tracker, parent, key=key, context=ctx, space_name="s", metric="val_hm", mode="max",
                             experiment_path="/tmp/x")


def epoch_result(epoch, final=False):
    r = {"epoch": epoch, "train_loss": 1.0 / epoch, "val_base_acc": 50.0, "val_new_acc": 40.0, "val_hm": 44.4,
         "training_iteration": epoch, "time_this_iter_s": 0.1, "done": False, "trial_id": "t1"}
    if final:
        r.update({"final": True, "test_base_acc": 60.0, "test_new_acc": 30.0, "test_hm": 40.0,
                  "sweep_fusion_weights": [0.0, 1.0], "sweep_test_hm": [20.0, 40.0]})
    return r


def test_logger_dedupes_retried_epochs_and_a_resumed_driver_continues_the_same_run(tmp_path):
    import pickle

    logger = _logger(tmp_path)
    config = {"method": "coop", "seed": 1, "lr": 0.01, "epochs": 2}
    logger.log_result("t1", config, epoch_result(1))
    logger.log_result("t1", config, epoch_result(1))  # a retried trial reports epoch 1 again
    # A driver that restarts: a new logger finds the trial's run by its tag and skips what is logged.
    logger.close()
    again = _logger(tmp_path)
    assert pickle.loads(pickle.dumps(again)) is again  # Tune pickles its callbacks; restore gets the live one
    again.log_result("t1", config, epoch_result(1))
    again.log_result("t1", config, epoch_result(2, final=True))
    again.log_result("t1", config, epoch_result(2, final=True))
    again.reconcile([FakeTrial("t1", config, last_result=epoch_result(2, final=True))])
    client = again.tracker.client
    (run,) = again.tracker.children(again.parent_run_id)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    assert len(client.get_metric_history(run.info.run_id, "test_hm")) == 1
    assert set(run.data.metrics) == {"train_loss", "val_base_acc", "val_new_acc", "val_hm", "test_base_acc",
                                     "test_new_acc", "test_hm", "test_hm_sweep/fw0.00", "test_hm_sweep/fw1.00"}
    assert run.data.tags["trial_status"] == "completed" and run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.01" and run.data.params["loss_weight"] == "0.7"
    assert again.records["t1"].status == "completed"
    again.close()
    from pipelines.tracking.client import TrackingError

    with pytest.raises(TrackingError, match="resume through"):
        pickle.loads(pickle.dumps(again))


def test_reconcile_keeps_runs_of_trials_tune_no_longer_has_with_their_history(tmp_path):
    logger = _logger(tmp_path)
    config = {"method": "coop", "seed": 2}
    logger.log_result("kept", config, epoch_result(1))
    # Trials made by a driver killed before Tune saved them (Tune ran them again under new ids): one unfinished,
    # one that finished all its epochs before the kill.
    logger.log_result("zombie", config, epoch_result(1))
    logger.log_result("zombie", config, epoch_result(2))
    logger.log_result("done", config, epoch_result(1))
    logger.log_result("done", config, epoch_result(2, final=True))
    logger.finish("done", config, "completed")
    client = logger.tracker.client
    done_before = next(r for r in logger.tracker.children(logger.parent_run_id)
                       if r.data.tags["tune.trial_id"] == "done")
    failed = FakeTrial("failed", config, status="ERROR", failures=2)
    logger.reconcile([FakeTrial("kept", config, last_result=epoch_result(1)), failed])
    names = {r.data.tags["tune.trial_id"]: r for r in logger.tracker.children(logger.parent_run_id)}
    assert set(names) == {"kept", "failed", "zombie", "done"}  # nothing deleted
    assert names["kept"].data.tags["trial_status"] == "stopped_early"
    assert names["failed"].data.tags["trial_status"] == "error" and names["failed"].info.status == "FAILED"
    assert names["failed"].data.tags["error"] == "boom"
    zombie = names["zombie"]
    assert zombie.data.tags["trial_status"] == "abandoned" and zombie.info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(zombie.info.run_id, "train_loss")] == [1, 2]
    done = names["done"]  # finished: as it was
    assert (done.info.status, done.info.end_time, done.data.tags) == (done_before.info.status,
                                                                       done_before.info.end_time, done_before.data.tags)
    assert [m.step for m in client.get_metric_history(done.info.run_id, "train_loss")] == [1, 2]
    logger.close()


def test_best_configuration_needs_every_seed_finished():
    from pipelines.tracking.summary import best_config
    from pipelines.tracking.trial_logger import TrialRecord
    from pipelines.trial.settings import Hyperparameters

    def rec(tid, lr, seed, status, val_hm):
        return TrialRecord(tid, None, Hyperparameters(lr=lr, seed=seed).resolved([4]), status,
                           {"val_hm": val_hm, "test_hm": 1.0})

    records = [rec("a1", 0.05, 1, "completed", 90.0), rec("a2", 0.05, 2, "stopped_early", 10.0),
               rec("b1", 0.01, 1, "completed", 60.0), rec("b2", 0.01, 2, "completed", 64.0)]
    best, trial = best_config(records, "val_hm", "max")
    assert best.params["lr"] == 0.01 and best.mean("val_hm") == 62.0 and trial.trial_id == "b2"
    # Nothing fully finished: no winner (pipelines.selection; the partial one is shown as incomplete, not picked).
    assert best_config(records[:2], "val_hm", "max") == (None, None)
    assert best_config([rec("c", 0.1, 1, "error", 0.0)], "val_hm", "max") == (None, None)
