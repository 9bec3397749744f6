"""Shared fixtures. One Ray instance per test session: a two-node ``ray.cluster_utils.Cluster`` on loopback,
so single-node and multi-node tests share it instead of starting Ray again and again."""
from __future__ import annotations

import os
from pathlib import Path

# Keep Ray on loopback and quiet before anything imports it.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parent.parent  # the checkout: tests read its files (README, bench, infra)
TINY_MODEL = "dept-tiny-vit"  # registered by dept.clip from dept/model_configs


@pytest.fixture(scope="session")
def ray_cluster():
    """A two-node Ray cluster on 127.0.0.1, shared by every Ray test in the session.

    Yields the ``Cluster``; the driver is connected (``ray.init(address=cluster.address)``).
    Node resources: head 2 CPUs, worker 2 CPUs; each node also carries a custom resource named after its role
    (``node_head`` / ``node_worker``) so tests can pin work to one node, and one ``one_per_node`` so that work
    asking for it is spread one per node (Ray's scheduler may otherwise pack light work on one node).
    """
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "resources": {"node_head": 1, "one_per_node": 1},
            "include_dashboard": False,
            "node_ip_address": "127.0.0.1",
        },
    )
    cluster.add_node(num_cpus=2, resources={"node_worker": 1, "one_per_node": 1}, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="session")
def tiny_clip_checkpoint(tmp_path_factory):
    """The package's tiny registered architecture with random weights, saved as a local .safetensors checkpoint."""
    from dept.clip import save_random_checkpoint

    return save_random_checkpoint(TINY_MODEL, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture(scope="session")
def vit_b32_checkpoint(tmp_path_factory):
    """Real ViT-B-32 architecture, random weights, as a local checkpoint (for exactness tests)."""
    from dept.clip import save_random_checkpoint

    return save_random_checkpoint("ViT-B-32", tmp_path_factory.mktemp("ckpt") / "vit-b-32.safetensors")


@pytest.fixture(scope="session")
def demo_store(ray_cluster, tiny_clip_checkpoint, tmp_path_factory):
    """A generated 6-class dataset featurized with the tiny model (4 shots, seeds 1 and 2, 2 views). Built once per
    session; used by the train and tune tests."""
    from click.testing import CliRunner

    from dept.datasets.demo import write_demo_dataset
    from pipelines.cli import main

    base = tmp_path_factory.getbasetemp() / "tune-demo"
    base.mkdir(exist_ok=True)
    data = write_demo_dataset(base / "demo", num_classes=6, train_per_class=6, val_per_class=4, test_per_class=4,
                              image_size=32)
    result = CliRunner().invoke(main, [
        "featurize", "--dataset-dir", str(data), "--out", str(base / "store"), "--model", TINY_MODEL,
        "--pretrained", str(tiny_clip_checkpoint), "--views", "2", "--shots", "4", "--seeds", "1,2",
        "--batch-size", "32", "--no-progress", "--ray-address", ray_cluster.address,
    ])
    assert result.exit_code == 0, result.output
    return [line.split(": ", 1)[1] for line in result.output.splitlines() if line.startswith("features: ")][-1]

