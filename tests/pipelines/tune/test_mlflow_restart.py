"""The tracking server killed (SIGKILL) and restarted on the same port and SQLite store while trials run: the
driver's MLflow client retries with backoff (MLflow's own MLFLOW_HTTP_REQUEST_* defaults: 7 retries, factor 2, so
~4 min of outage), no trial record is lost, and the store ends equal to that of a run without the restart."""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml

from pipelines.trial.context import EPOCH_PAUSE_ENV
from tests.conftest import REPO
from tests.mlflow_server import mlflow_server as serve_mlflow
from tests.pipelines.tune.test_tune import invoke, runs_of, tune_args

#: Wall-clock metrics: they differ between any two runs.
TIMINGS = {"epoch_seconds", "train_seconds"}


def _server_group(port: int) -> int:
    """The process group of the ``mlflow server`` this test started on ``port`` (its session leader's pid)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"server" in argv and b"--port" in argv and str(port).encode() in argv and os.getpgid(int(pid)) == int(pid):
            return int(pid)
    raise AssertionError(f"no mlflow server process on port {port}")


def tracked(uri: str, experiment: str) -> dict:
    """Per trial config (its params): the params, every metric point (key, value, step) but timings, the status."""
    client, runs = runs_of(uri, experiment, "tags.role = 'trial'")
    out = {}
    for r in runs:
        points = sorted((k, m.value, m.step) for k in r.data.metrics if k not in TIMINGS
                        for m in client.get_metric_history(r.info.run_id, k))
        key = tuple(sorted(r.data.params.items()))
        assert key not in out, f"two runs of one trial config in {experiment}"
        out[key] = (points, r.data.tags["trial_status"], r.info.status)
    return out


@pytest.mark.slow
def test_tracking_server_restarted_mid_experiment_loses_nothing(demo_store, tmp_path, ray_cluster, monkeypatch):
    # No ASHA (which stops trials by arrival order, differing between runs); 2 trials (one sample, two seeds) of 3
    # epochs at once, each epoch held 1.5 s (test hook) so that trials are still reporting when the server goes.
    space = yaml.safe_load((REPO / "tune_spaces" / "smoke.yaml").read_text())
    space["scheduler"] = {"type": "none"}
    space["num_samples"] = 1
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    monkeypatch.setenv(EPOCH_PAUSE_ENV, "1.5")
    folder = tmp_path / "server"
    folder.mkdir()

    def tune(experiment: str):
        return invoke(*tune_args(demo_store, tmp_path, uri, experiment, "--space", tmp_path / "space.yaml",
                                 "--method", "coop", "--max-concurrent", 2, "--ray-address", ray_cluster.address))

    first = serve_mlflow(folder)
    port = first.__enter__()
    uri = f"http://127.0.0.1:{port}"
    servers = [first]  # the one running last is stopped at the end
    seen: dict = {}

    def restart() -> None:
        """Once a trial has logged its first epoch: SIGKILL the server, wait, start it again on the same port."""
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                client, runs = runs_of(uri, "restarted", "tags.role = 'trial'")
                seen["points"] = sum(len(client.get_metric_history(r.info.run_id, "train_loss")) for r in runs)
            except Exception:  # the experiment is not created yet
                seen["points"] = 0
            if seen["points"]:
                break
            time.sleep(0.5)
        else:
            return
        os.killpg(_server_group(port), signal.SIGKILL)
        servers.pop().__exit__(None, None, None)  # reaps it (the group is gone already)
        killed = time.time()
        time.sleep(5)
        again = serve_mlflow(folder, port=port)
        again.__enter__()
        servers.append(again)
        seen["outage_s"] = time.time() - killed
        logging.getLogger(__name__).warning("tracking server down for %.1f s", seen["outage_s"])

    try:
        calm = tune("calm")
        assert calm.exit_code == 0, calm.output
        restarter = threading.Thread(target=restart, daemon=True)
        restarter.start()
        restarted = tune("restarted")
        restarter.join(timeout=300)
        assert restarted.exit_code == 0, restarted.output
        assert "outage_s" in seen, "the server was not restarted while trials ran"
        want, got = tracked(uri, "calm"), tracked(uri, "restarted")
    finally:
        for cm in servers:
            cm.__exit__(None, None, None)
    assert len(want) == 2 and set(got) == set(want)
    for key, (points, status, run_status) in want.items():
        assert status == "completed" and run_status == "FINISHED"
        assert got[key] == (points, status, run_status), dict(key)
    # The kill came after the first epoch point and before the last: records were logged across the outage.
    total_epochs = sum(1 for points, _, _ in got.values() for k, _, _ in points if k == "train_loss")
    assert 0 < seen["points"] < total_epochs == 6, (seen, total_epochs)
