"""A second ``dept-pipeline tune`` of an experiment that one is already running (same --storage, same --experiment)
stops at once, in one line naming the holder of the experiment's lock (pipelines.tune.runner.ExperimentLock)."""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import time

import pytest

from pipelines.trial.context import EPOCH_PAUSE_ENV
from pipelines.tune.runner import LOCK_FILE
from tests.pipelines.tune.test_tune import _driver, invoke, tune_args


def lock_is_held(path) -> bool:
    if not path.exists():
        return False
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)  # ours for an instant: the first run has not taken it yet
        return False


@pytest.mark.slow
def test_second_tune_of_a_running_experiment_stops_naming_the_holder(demo_store, tmp_path, ray_cluster, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = tune_args(demo_store, tmp_path, uri, "busy", "--space", "smoke", "--method", "coop", "--num-samples", 1,
                     "--ray-address", ray_cluster.address)
    monkeypatch.setenv(EPOCH_PAUSE_ENV, "5")  # the first run's trials outlast the test
    log = tmp_path / "first.log"
    first = _driver(args, log, tmp_path)
    try:
        lock = tmp_path / "tune" / "busy" / LOCK_FILE
        deadline = time.time() + 180
        while not lock_is_held(lock):
            assert first.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "the first tune never took the experiment's lock"
            time.sleep(0.5)
        second = invoke(*args)
        assert first.poll() is None, "the first run must still hold the lock"
    finally:
        os.killpg(first.pid, signal.SIGTERM)
        try:
            first.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=30)
    assert second.exit_code == 2, second.output
    (line,) = second.output.strip().splitlines()  # one line, before any progress line or Ray work
    assert "another `dept-pipeline tune` is running experiment 'busy'" in line
    assert f"pid {first.pid} on " in line, line  # the holder, as its lock file names it
