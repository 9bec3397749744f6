"""Credentials in a driver's environment never reach Ray's session logs: a real ``dept-pipeline featurize`` starts its
own local Ray (no cluster named) with a planted AWS secret in its environment, and no file of that Ray's session
holds it. (The cluster path, ``ray job submit`` against ``ray start`` nodes: tests/pipelines/cluster/.)"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from dept.datasets import write_demo_dataset
from tests.conftest import TINY_MODEL
from tests.pipelines.cluster.real_cluster import files_containing


@pytest.mark.slow
def test_planted_secret_is_in_no_file_of_the_ray_session(tmp_path, tiny_clip_checkpoint):
    secret = f"planted-{uuid.uuid4().hex}"
    data = write_demo_dataset(tmp_path / "demo", num_classes=2, train_per_class=2, val_per_class=1,
                              test_per_class=1, image_size=32)
    ray_tmp = Path(tempfile.mkdtemp(prefix="raysec-", dir="/tmp"))  # short: Ray's socket paths < 107 characters
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(AWS_SECRET_ACCESS_KEY=secret, MLFLOW_TRACKING_PASSWORD=secret, RAY_TMPDIR=str(ray_tmp))
    try:
        done = subprocess.run(
            [sys.executable, "-c", "from pipelines.cli import main; main()", "featurize", "--dataset-dir", str(data),
             "--out", str(tmp_path / "features"), "--model", TINY_MODEL, "--pretrained", str(tiny_clip_checkpoint),
             "--views", "1", "--shots", "1", "--seeds", "1", "--no-progress"],
            env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        (session,) = (ray_tmp / "ray").glob("session_2*")  # the Ray this run started, and only it
        assert list((session / "logs").iterdir())  # there are logs to search
        assert files_containing(session, secret) == []
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
