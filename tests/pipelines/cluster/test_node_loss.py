"""A worker node lost mid-run (``Cluster.remove_node``, its processes SIGKILLed) on a three-node loopback cluster of
its own (head + 2 workers): featurize still finishes with exactly one row per (image, split, view); tune still
finishes with every trial once in MLflow, the trials that were on the node retried from their last epoch
checkpoint. The commands run as real drivers (subprocesses) against the cluster's address."""
from __future__ import annotations

import glob
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from dept.clip import file_sha256
from dept.datasets import write_demo_dataset
from pipelines.featurize.encode import ENCODE_PAUSE_ENV
from pipelines.store import MANIFEST, SHARD_META_KEY, model_store_url, read_manifest
from pipelines.trial.context import EPOCH_PAUSE_ENV
from pipelines.vocabulary import NODE_ID_KEY, RESUMED_KEY
from tests.conftest import REPO, TINY_MODEL
from tests.pipelines.tune.test_tune import runs_of, tune_args


@pytest.fixture
def three_nodes(monkeypatch):
    """Head and two workers, 2 CPUs each; one ``encoder_slot`` per node, so that 2 encoder actors leave a free slot
    for the one that restarts after its node is lost. This process does not connect to it (the session's Ray may
    be connected elsewhere); the drivers under test do."""
    from ray.cluster_utils import Cluster

    # The GCS marks a killed node dead after 5 failed health checks; 1 s apart instead of 3 s (a live node that is
    # merely slow still has 10 s per check to answer).
    monkeypatch.setenv("RAY_health_check_period_ms", "1000")

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "resources": {"encoder_slot": 1}, "include_dashboard": False, "node_ip_address": "127.0.0.1"})
    try:
        workers = [cluster.add_node(num_cpus=2, resources={"encoder_slot": 1}, node_ip_address="127.0.0.1")
                   for _ in range(2)]
        cluster.wait_for_nodes()
        yield cluster, {w.node_id: w for w in workers}
    finally:
        cluster.shutdown()


def _driver(args: list, log_path: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "from pipelines.cli import main; main()", *map(str, args)],
                            cwd=cwd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def _wait(proc: subprocess.Popen, log_path: Path, timeout: float) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"driver still running after {timeout:.0f} s: {log_path.read_text()[-3000:]}")
    assert proc.returncode == 0, log_path.read_text()[-3000:]


def _remove_when(cluster, workers: dict, pick, proc, log_path: Path, what: str, timeout: float = 240) -> str:
    """Poll ``pick()`` (a node id of a worker doing work, or None) and remove that node; returns its id."""
    deadline = time.time() + timeout
    while True:
        assert proc.poll() is None, f"driver ended before {what}: {log_path.read_text()[-3000:]}"
        assert time.time() < deadline, f"no {what} within {timeout:.0f} s"
        node_id = pick()
        if node_id in workers:
            cluster.remove_node(workers.pop(node_id), allow_graceful=False)
            return node_id
        time.sleep(0.2)


@pytest.mark.slow
def test_featurize_finishes_after_a_node_is_lost_while_encoding(three_nodes, tmp_path, tiny_clip_checkpoint,
                                                                monkeypatch):
    cluster, workers = three_nodes
    data = write_demo_dataset(tmp_path / "demo", num_classes=4, train_per_class=4, val_per_class=2,
                              test_per_class=6, image_size=32)
    out = tmp_path / "store"
    folder = Path(model_store_url(str(out), TINY_MODEL, "sha256:" + file_sha256(tiny_clip_checkpoint))) / "demo"
    # 2-image shards, 2-image encoder calls each held 1 s (test hook): ~30 calls over 2 actors, ~15 s of encoding.
    monkeypatch.setenv(ENCODE_PAUSE_ENV, "1")
    log_path = tmp_path / "featurize.log"
    proc = _driver(["featurize", "--dataset-dir", data, "--out", out, "--model", TINY_MODEL, "--pretrained",
                    tiny_clip_checkpoint, "--views", 2, "--shots", 2, "--seeds", 1, "--images-per-shard", 2,
                    "--batch-size", 2, "--workers", 2, "--worker-resource", "encoder_slot=1", "--no-progress",
                    "--ray-address", cluster.address], log_path, tmp_path)

    def encoded_by() -> dict[str, set[str]]:
        nodes = {}
        for f in glob.glob(str(folder / "part-*.parquet")):
            try:
                nodes[f] = set(json.loads(pq.read_schema(f).metadata[SHARD_META_KEY])["node_ids"])
            except (OSError, pa.ArrowInvalid):  # gone (renamed) between glob and read
                continue
        return nodes

    def worker_encoding():
        return next((n for nodes in encoded_by().values() for n in nodes if n in workers), None)

    try:
        lost = _remove_when(cluster, workers, worker_encoding, proc, log_path, "shard encoded on a worker node")
        before = encoded_by()
        _wait(proc, log_path, timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    after = encoded_by()
    assert len(before) < len(after), "every shard was written before the node was lost: nothing was under way"
    # The surviving nodes finished the work: some shard written after the loss holds rows they encoded. (Not every
    # one: rows the lost node delivered to the driver before it went are kept, and a late shard may hold only those.)
    assert any(nodes - {lost} for f, nodes in after.items() if f not in before), (lost, before, after)
    table = pa.concat_tables([pq.read_table(f) for f in sorted(after)])
    keys = Counter(zip(table.column("image_id").to_pylist(), table.column("split").to_pylist(),
                       table.column("view").to_pylist()))
    assert set(keys.values()) == {1}
    # test 4 x 6 and val 4 x 2 images, one view; train: the 2-shot draw of 4 classes, test view + 2 augmented.
    manifest = read_manifest(str(folder.parent), "demo")
    assert manifest.complete and manifest.rows == {"train": 24, "val": 8, "test": 24} and len(keys) == 56
    assert json.loads((folder / MANIFEST).read_text())["complete"] is True


def _results(trial_dir: Path) -> list[dict]:
    try:
        lines = (trial_dir / "result.json").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            break
    return out


@pytest.mark.slow
def test_tune_finishes_after_a_node_is_lost_with_trials_on_it(three_nodes, demo_store, tmp_path, monkeypatch):
    cluster, workers = three_nodes
    # No ASHA (every trial runs its 3 epochs); 4 trials of 1 CPU on 6 CPUs: all at once, at least 2 on workers.
    # Each epoch held 2 s (test hook) so that trials are mid-run when their node goes.
    space = yaml.safe_load((REPO / "tune_spaces" / "smoke.yaml").read_text())
    space["scheduler"] = {"type": "none"}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    monkeypatch.setenv(EPOCH_PAUSE_ENV, "2")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_path = tmp_path / "tune.log"
    proc = _driver(tune_args(demo_store, tmp_path, uri, "lost", "--space", tmp_path / "space.yaml", "--method", "coop",
                             "--max-failures", 2, "--ray-address", cluster.address), log_path, tmp_path)
    experiment = tmp_path / "tune" / "lost" / "demo"
    on_node_at_loss: dict[str, int] = {}  # trial folder -> its last epoch reported before the loss

    def worker_training():
        for trial_dir in experiment.glob("*/"):
            results = _results(trial_dir)
            if results and results[-1][NODE_ID_KEY] in workers and results[-1]["epoch"] < 3:
                return results[-1][NODE_ID_KEY]
        return None

    try:
        lost = _remove_when(cluster, workers, worker_training, proc, log_path, "trial reporting from a worker node")
        for trial_dir in experiment.glob("*/"):
            results = _results(trial_dir)
            if results and results[-1][NODE_ID_KEY] == lost and not results[-1].get("final"):
                on_node_at_loss[trial_dir.name] = results[-1]["epoch"]
        _wait(proc, log_path, timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert on_node_at_loss, "no unfinished trial was on the lost node"

    client, runs = runs_of(uri, "lost", "tags.role = 'trial'")
    assert len(runs) == 4 and len({r.data.tags["tune.trial_id"] for r in runs}) == 4
    by_trial = {r.data.tags["tune.trial_id"]: r for r in runs}
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.tags["trial_status"] == "completed", r.data.tags
        assert [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")] == [1, 2, 3]
    for name, epoch_at_loss in on_node_at_loss.items():
        (trial_id,) = [t for t in by_trial if t in name]
        run = by_trial[trial_id]
        assert int(run.data.tags["failures"]) >= 1 and lost in run.data.tags["ray_node_ids"].split(",")
        assert run.data.tags["ray_node_id"] != lost  # the final result came from a surviving node
        results = _results(experiment / name)
        retry = [r for r in results if r[NODE_ID_KEY] != lost]
        # The retry resumed after the last epoch Tune had a checkpoint of (the one reported last, or, when the node
        # went between the report and Tune's bookkeeping, the one before); it never started from scratch.
        assert retry and 1 <= retry[0][RESUMED_KEY] <= epoch_at_loss, (epoch_at_loss, retry[0])
        assert retry[0]["epoch"] == retry[0][RESUMED_KEY] + 1
