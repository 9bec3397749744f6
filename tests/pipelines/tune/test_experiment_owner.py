"""One MLflow experiment, one running ``tune``, whatever its --storage; and ``--resume`` never loses a finished run
or its per-epoch history. Real ``dept-pipeline tune`` processes on one SQLite MLflow store (issue 25, item 2)."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml

from pipelines.trial.context import EPOCH_PAUSE_ENV
from pipelines.vocabulary import TUNE_OWNER_TAG
from tests.conftest import REPO
from tests.pipelines.tune.test_tune import (
    _driver,
    check_tracked,
    driver_running,
    runs_of,
    tune_args,
    wait_for_completed_trials,
)


def _owner_tag(uri: str, experiment: str) -> str | None:
    from mlflow import MlflowClient

    try:
        exp = MlflowClient(uri).get_experiment_by_name(experiment)
    except Exception:  # the store is being created by the driver
        return None
    return exp.tags.get(TUNE_OWNER_TAG) if exp is not None else None


def _new_store(uri: str) -> str:
    """The SQLite store made before the drivers start: this test's polling must not race a driver's schema creation
    (issue 25, item 7, is about that race)."""
    from mlflow import MlflowClient

    MlflowClient(uri).search_experiments(max_results=1)
    return uri


def _cli(args, cwd):
    return subprocess.run([sys.executable, "-c", "from pipelines.cli import main; main()", *[str(a) for a in args]],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_second_tune_of_the_experiment_from_another_storage_is_refused_and_the_first_completes(
        demo_store, tmp_path, ray_cluster, monkeypatch):
    uri = _new_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    args = tune_args(demo_store, tmp_path, uri, "shared", "--space", "smoke", "--method", "coop", "--num-samples", 1,
                     "--ray-address", ray_cluster.address)  # 2 trials
    monkeypatch.setenv(EPOCH_PAUSE_ENV, "5")  # the first run outlasts the second's start
    log = tmp_path / "first.log"
    with driver_running(args, log, tmp_path) as first:
        deadline = time.time() + 240
        while _owner_tag(uri, "shared") is None:
            assert first.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "the first tune never took the experiment's lease"
            time.sleep(0.5)
        other = [*args]
        other[other.index("--storage") + 1] = tmp_path / "other"
        second = _cli(other, tmp_path)
        assert first.poll() is None, "the first run must still be running when the second is refused"
        assert second.returncode == 2, second.stdout + second.stderr
        (line,) = second.stderr.strip().splitlines()  # one line, before any progress line or Ray work
        assert line.startswith(f"error: another `dept-pipeline tune` is running experiment 'shared' of MLflow {uri} "
                               f"(pid {first.pid} on "), line
        assert f"Tune storage {tmp_path / 'tune'}," in line
        assert second.stdout == ""
        assert first.wait(timeout=600) == 0, log.read_text()[-3000:]
    check_tracked(uri, "shared", n_trials=2, seeds={1, 2})  # one parent, its runs only
    assert not (tmp_path / "other" / "shared" / "demo").exists()  # the refused run made no Tune experiment
    assert _owner_tag(uri, "shared") is None  # released at the end


@pytest.mark.slow
def test_resume_after_a_kill_keeps_every_finished_run_and_its_history_beside_another_storages_parent(
        demo_store, tmp_path, ray_cluster, monkeypatch):
    """The state a race under an older version left (a newer parent of the same dataset, tuned in another
    storage, with finished runs) does not take the resumed sweep's runs: the resume continues its own parent and
    deletes or recreates nothing; the killed driver's lease does not block the resume."""
    from mlflow import MlflowClient

    from pipelines.tracking.client import Tracker

    uri = _new_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv(EPOCH_PAUSE_ENV, "0.5")
    space = yaml.safe_load((REPO / "tune_spaces" / "smoke.yaml").read_text())
    space["num_samples"] = 3  # 6 trials, one at a time
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    args = tune_args(demo_store, tmp_path, uri, "kept", "--space", tmp_path / "space.yaml", "--method", "coop",
                     "--max-concurrent", 1, "--ray-address", ray_cluster.address)
    log = tmp_path / "first.log"
    with driver_running(args, log, tmp_path) as first:
        completed_before = wait_for_completed_trials(first, log, uri, "kept", tmp_path / "tune" / "kept" / "demo")
        first.kill()  # SIGKILL: no cleanup, its lease stays on the experiment
        first.wait(timeout=60)
    assert _owner_tag(uri, "kept") is not None
    client = MlflowClient(uri)
    _, (mine,) = runs_of(uri, "kept", "tags.role = 'parent'")

    # Another storage's newer parent of the same dataset, with a finished 3-epoch run.
    tracker = Tracker(uri, "kept")
    foreign_path = str(tmp_path / "other" / "kept" / "demo")
    foreign = tracker.create_parent("demo", {**{k: v for k, v in mine.data.tags.items() if not k.startswith("mlflow.")},
                                             "tune.experiment_path": foreign_path}, name="demo (smoke)")
    foreign_child = tracker.create_run("coop+DePT lw0.50 fw0.70 lr1.0e-03 s1", {
        "role": "trial", "mlflow.parentRunId": foreign, "tune.trial_id": "foreign_1", "trial_status": "completed",
        "final_logged": "true", "dataset": "demo"})
    for epoch in (1, 2, 3):
        tracker.log_values(foreign_child, {"train_loss": 1.0 / epoch, "val_hm": 40.0 + epoch}, step=epoch)
    client.set_terminated(foreign_child, "FINISHED")
    client.set_terminated(foreign, "FINISHED")

    started = time.time()
    resumed = _driver([*args, "--resume"], tmp_path / "second.log", tmp_path)
    assert resumed.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-3000:]
    assert time.time() - started < 290  # the dead driver's lease (300 s) was taken over, not waited out

    parents = {p.info.run_id: p for p in runs_of(uri, "kept", "tags.role = 'parent'")[1]}
    assert set(parents) == {mine.info.run_id, foreign}  # nothing deleted
    assert parents[mine.info.run_id].info.status == "FINISHED"
    _, runs = runs_of(uri, "kept", "tags.role = 'trial'")
    ours = [r for r in runs if r.data.tags["mlflow.parentRunId"] == mine.info.run_id
            and r.data.tags["trial_status"] != "abandoned"]
    assert len(ours) == 6 and len({r.data.tags["tune.trial_id"] for r in ours}) == 6
    by_trial = {r.data.tags["tune.trial_id"]: r for r in ours}
    for trial_id, (run_id, end_time) in completed_before.items():  # finished before the kill: the same run, as it was
        assert (by_trial[trial_id].info.run_id, by_trial[trial_id].info.end_time) == (run_id, end_time)
    for r in ours:  # every epoch a trial ran, once, in order
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")]
        if r.data.tags["trial_status"] == "completed":
            assert steps == [1, 2, 3], (r.data.tags["tune.trial_id"], steps)
        else:
            assert r.data.tags["trial_status"] == "stopped_early" and steps == list(range(1, len(steps) + 1))
    (theirs,) = [r for r in runs if r.data.tags["mlflow.parentRunId"] == foreign]
    assert theirs.info.run_id == foreign_child and theirs.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(foreign_child, "train_loss")] == [1, 2, 3]
    assert _owner_tag(uri, "kept") is None
