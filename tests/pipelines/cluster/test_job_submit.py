"""The cluster path end to end, as infra/README.md runs it: a real two-node Ray cluster from ``ray start`` on
127.0.0.1, ``ray job submit -- dept-pipeline featurize`` and ``... tune`` against it and a real ``mlflow server``.
The jobs name no ``--ray-address``: they must join the cluster through ``$RAY_ADDRESS`` (which ``ray job submit`` sets
for the entrypoint), run on both nodes, and reach MLflow; the credentials the nodes inherit never reach Ray's logs."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid

import pytest

from dept.datasets import write_demo_dataset
from pipelines.ray_runtime import ray_address
from pipelines.store import read_manifest
from pipelines.trial.context import EPOCH_PAUSE_ENV
from tests.conftest import TINY_MODEL
from tests.mlflow_server import mlflow_server
from tests.pipelines.cluster.real_cluster import files_containing, ray_start_cluster


def job_output(done: tuple[str, str]) -> str:
    status, log = done
    assert status == "succeeded", f"job {status}: {log[-3000:]}"
    return log


def test_ray_address_comes_from_the_option_then_the_environment(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_address(None) == (None, "")  # a new local Ray
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert ray_address(None) == ("10.0.0.5:6379", "$RAY_ADDRESS")
    assert ray_address("127.0.0.1:6380") == ("127.0.0.1:6380", "--ray-address")


def test_a_dashboard_url_in_ray_address_is_one_line_naming_it():
    """`export RAY_ADDRESS=http://...:8265` (for `ray job submit`) left in the shell of a command run outside a job."""
    env = {**os.environ, "RAY_ADDRESS": "http://127.0.0.1:8265"}
    done = subprocess.run([sys.executable, "-c", "from pipelines.ray_runtime import ensure_ray; ensure_ray(None)"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert ("ConnectionError: cannot connect to the Ray cluster at http://127.0.0.1:8265 (from $RAY_ADDRESS): "
            in done.stderr), done.stderr[-2000:]


@pytest.mark.slow
def test_featurize_and_tune_submitted_as_ray_jobs(tmp_path, tiny_clip_checkpoint):
    from mlflow import MlflowClient

    secret = f"planted-{uuid.uuid4().hex}"  # credentials as infra/README.md passes them: in the nodes' environment
    canary = f"canary-{uuid.uuid4().hex}"  # a harmless value in a job's runtime_env, where Ray does log it
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(AWS_SECRET_ACCESS_KEY=secret, MLFLOW_TRACKING_USERNAME="dept", MLFLOW_TRACKING_PASSWORD=secret)
    data = write_demo_dataset(tmp_path / "demo", num_classes=4, train_per_class=4, val_per_class=2,
                              test_per_class=3, image_size=32)
    (tmp_path / "mlflow").mkdir()
    with mlflow_server(tmp_path / "mlflow") as port, \
            ray_start_cluster(env, [{"node_head": 1, "one_per_node": 1},
                                    {"node_worker": 1, "one_per_node": 1}]) as cluster:
        uri = f"http://127.0.0.1:{port}"
        # The driver sees the credentials the head was started with (compared by hash: no secret in any log).
        probe = job_output(cluster.job("python", "-c", "import hashlib, os; print('secret sha256', hashlib.sha256("
                                       "os.environ['MLFLOW_TRACKING_PASSWORD'].encode()).hexdigest())"))
        assert f"secret sha256 {hashlib.sha256(secret.encode()).hexdigest()}" in probe

        out = job_output(cluster.job(
            "dept-pipeline", "featurize", "--dataset-dir", str(data), "--out", str(tmp_path / "features"),
            "--model", TINY_MODEL, "--pretrained", str(tiny_clip_checkpoint), "--views", "2", "--shots", "2",
            "--seeds", "1,2", "--images-per-shard", "3", "--batch-size", "16", "--workers", "2", "--no-progress",
            "--worker-resource", "one_per_node=1", timeout_s=480))
        assert f"joining the Ray cluster at {cluster.gcs_address} (from $RAY_ADDRESS)" in out  # not a new local Ray
        (features,) = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("features: ")]
        manifest = read_manifest(features, "demo")
        featurize_nodes = {n for shard in manifest.shards.values() for n in shard["node_ids"]}
        assert len(featurize_nodes) == 2, featurize_nodes  # one encoder per node of this cluster

        job_output(cluster.job(
            "dept-pipeline", "tune", "--features", features, "--dataset", "all", "--space", "smoke",
            "--method", "coop", "--num-samples", "1", "--cpus-per-trial", "2", "--storage", str(tmp_path / "tune"),
            "--mlflow-uri", uri, "--experiment", "on-cluster",
            # Trials of seconds, not ~0.2 s: both start, one per node, before either ends.
            runtime_env={"env_vars": {EPOCH_PAUSE_ENV: "1.0", "DEPT_TEST_CANARY": canary}}, timeout_s=480))

        listening = cluster.listening()
        assert listening and all(a.rsplit(":", 1)[0] in ("127.0.0.1", "[::ffff:127.0.0.1]") for a in listening), \
            listening
        cluster.stop()  # every log written and closed before it is read

        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("on-cluster")
        trials = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("role") == "trial"]
        assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
        tune_nodes = {n for r in trials for n in r.data.tags.get("ray_node_ids", "").split(",") if n}
        # The same two nodes did both jobs: the cluster's, not a local Ray each command started for itself.
        assert tune_nodes == featurize_nodes
        sessions = list(cluster.temp_dir.glob("session_2*"))
        assert len(sessions) == 1  # one cluster, one session: the jobs' drivers joined it
        assert all(files_containing(sessions[0], n) for n in tune_nodes)
        # The control: Ray does write a job's runtime_env into its session logs, and this search reads them ...
        assert files_containing(sessions[0], canary)
        # ... while the credentials the processes inherited appear in none of its files.
        assert files_containing(sessions[0], secret) == []
