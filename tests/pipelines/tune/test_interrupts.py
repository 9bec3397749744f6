"""Real SIGTERM and SIGINT sent to a real ``dept-pipeline tune`` process (and a second ``tune`` started beside
it): a clean stop with exit 143 / 130, one line naming the command that resumes, the parent run KILLED with no
summary; a second ``tune`` of the same experiment refused at once naming the holder; ``--resume`` ends with the
parent's best configuration equal to its best run's."""
from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipelines.trial.context import EPOCH_PAUSE_ENV
from tests.conftest import REPO
from tests.pipelines.tune.test_tune import _driver, check_tracked, driver_running, runs_of, tune_args

CONFIG_PARAMS = ("method", "dept", "loss_weight", "fusion_weight", "lr", "epochs", "shots")


def _completed(uri: str, experiment: str) -> set[str]:
    try:
        _, runs = runs_of(uri, experiment, "tags.trial_status = 'completed'")
    except Exception:  # the store is being created by the driver
        return set()
    return {r.data.tags["tune.trial_id"] for r in runs}


def _wait_for_new_completed(proc, log, uri, experiment, before: set[str], timeout=400) -> None:
    deadline = time.time() + timeout
    while not (_completed(uri, experiment) - before):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, "no trial completed in time"
        time.sleep(1)
    time.sleep(1)  # trials still in flight when the signal lands


def _stopped(proc, log, signum, code) -> str:
    proc.send_signal(signum)
    assert proc.wait(timeout=120) == code, log.read_text()[-3000:]
    text = log.read_text()
    assert "best configuration per dataset" not in text  # no table over part of the trials
    assert "Stack trace" not in text and "SIGABRT" not in text and "*** " not in text  # no C++ dump
    resume_lines = [line for line in text.splitlines() if "--resume" in line]
    assert len(resume_lines) == 1, text[-3000:]
    assert resume_lines[0].startswith(f"interrupted ({signal.Signals(signum).name}); Tune's state is saved, "
                                      "resume with: ")
    command = resume_lines[0].split("resume with: ", 1)[1]
    program, verb = shlex.split(command)[:2]  # the program by name, or by its path when PATH does not reach it
    assert Path(program).name == "dept-pipeline" and verb == "tune", command
    return command


@pytest.mark.slow
def test_sigterm_then_sigint_stop_cleanly_and_resume_ends_with_the_best_config(demo_store, tmp_path, ray_cluster,
                                                                                 monkeypatch):
    monkeypatch.setenv(EPOCH_PAUSE_ENV, "1.5")  # trials of seconds, so that some are in flight at each signal
    space = yaml.safe_load((REPO / "tune_spaces" / "smoke.yaml").read_text())
    space["num_samples"] = 6  # 12 trials
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = tune_args(demo_store, tmp_path, uri, "sig", "--space", tmp_path / "space.yaml", "--method", "coop",
                     "--max-concurrent", 1, "--ray-address", ray_cluster.address)

    first_log = tmp_path / "first.log"
    with driver_running(args, first_log, tmp_path) as first:
        _wait_for_new_completed(first, first_log, uri, "sig", set())
        # A second tune of the same experiment while the first runs: refused at once, naming the holder, nothing made.
        second = subprocess.run([sys.executable, "-c", "from pipelines.cli import main; main()",
                                 *[str(a) for a in args]], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stdout + second.stderr
        (line,) = second.stderr.strip().splitlines()
        assert line.startswith("error: another `dept-pipeline tune` is running experiment 'sig'")
        assert f"pid {first.pid} on " in line
        _, parents = runs_of(uri, "sig", "tags.role = 'parent'")
        assert len(parents) == 1
        command = _stopped(first, first_log, signal.SIGTERM, 143)
    _, parents = runs_of(uri, "sig", "tags.role = 'parent'")
    (parent,) = parents
    assert parent.info.status == "KILLED"
    assert "best_val_hm" not in parent.data.metrics and "loss_weight" not in parent.data.params
    assert len(_completed(uri, "sig")) < 12

    # The printed command, as given, continues the experiment; Ctrl-C (SIGINT) stops that one just as cleanly.
    resume_args = shlex.split(command)[1:]
    assert resume_args == [*[str(a) for a in args], "--resume"]
    second_log = tmp_path / "second.log"
    before = _completed(uri, "sig")
    with driver_running(resume_args, second_log, tmp_path) as resumed:
        _wait_for_new_completed(resumed, second_log, uri, "sig", before)
        assert _stopped(resumed, second_log, signal.SIGINT, 130) == command
    _, (parent,) = runs_of(uri, "sig", "tags.role = 'parent'")
    assert parent.info.status == "KILLED"

    third_log = tmp_path / "third.log"
    final = _driver(resume_args, third_log, tmp_path)
    assert final.wait(timeout=600) == 0, third_log.read_text()[-3000:]
    assert "best configuration per dataset" in third_log.read_text()
    client, parent, children = check_tracked(uri, "sig", n_trials=12, seeds={1, 2})
    best = client.get_run(parent.data.tags["best_run_id"])
    for name in CONFIG_PARAMS:
        assert parent.data.params[name] == best.data.params[name], name
        assert parent.data.tags[f"best.{name}"] == best.data.params[name], name
