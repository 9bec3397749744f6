"""A Ray address that nothing answers (loopback, a free port): the project's own bounded wait before ``ray.init``
ends a real ``dept-pipeline featurize`` in one line naming the address and DEPT_RAY_CONNECT_TIMEOUT_S, with nothing
written; a Ctrl-C during that wait stops a real ``tune`` without claiming saved Tune state."""
from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time

import pytest

from dept.datasets import write_demo_dataset
from pipelines.ray_runtime import CONNECT_TIMEOUT_ENV, wait_for_address
from tests.conftest import TINY_MODEL
from tests.mlflow_server import free_port


def _cli(*args):
    return [sys.executable, "-c", "from pipelines.cli import main; main()", *[str(a) for a in args]]


def test_wait_returns_once_the_port_answers_and_names_the_address_when_it_does_not():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        wait_for_address(f"127.0.0.1:{server.getsockname()[1]}", "--ray-address", timeout_s=5)
        wait_for_address(f"ray://127.0.0.1:{server.getsockname()[1]}", "--ray-address", timeout_s=5)
    dead = f"127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionError) as e:
        wait_for_address(dead, "$RAY_ADDRESS", timeout_s=1)
    assert dead in str(e.value) and CONNECT_TIMEOUT_ENV in str(e.value) and "\n" not in str(e.value)
    wait_for_address("auto", "$RAY_ADDRESS", timeout_s=0)  # an address Ray resolves itself is not checked here


@pytest.mark.slow
def test_featurize_against_a_dead_ray_address_fails_in_one_line_and_writes_nothing(tmp_path, tiny_clip_checkpoint):
    data = write_demo_dataset(tmp_path / "demo", num_classes=2, train_per_class=2, val_per_class=1,
                              test_per_class=1, image_size=32)
    dead = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "RAY_ADDRESS": dead}
    env.pop(CONNECT_TIMEOUT_ENV, None)  # the default wait
    out = tmp_path / "features"
    # A generous limit for the command to return at all; Ray's own retries would take ~14 minutes.
    done = subprocess.run(_cli("featurize", "--dataset-dir", data, "--out", out, "--model", TINY_MODEL,
                               "--pretrained", tiny_clip_checkpoint, "--views", "1", "--shots", "1", "--seeds", "1",
                               "--no-progress"), env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower() or "warn" in line.lower()]
    assert len(errors) == 1, done.stderr[-3000:]
    assert errors[0].startswith(f"error: cannot connect to the Ray cluster at {dead} (from $RAY_ADDRESS)")
    assert CONNECT_TIMEOUT_ENV in errors[0]
    assert not out.exists() or not any(out.rglob("*.json"))  # no manifest, no draws


@pytest.mark.slow
def test_ctrl_c_before_tune_starts_says_nothing_was_saved(demo_store, tmp_path):
    dead = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "RAY_ADDRESS": dead, CONNECT_TIMEOUT_ENV: "300"}  # waiting for a cluster still starting
    args = ["tune", "--features", demo_store, "--dataset", "demo", "--space", "smoke", "--method", "coop",
            "--storage", tmp_path / "tune", "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--experiment", "early"]
    log = tmp_path / "tune.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(_cli(*args), cwd=tmp_path, env=env, stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while f"joining the Ray cluster at {dead}" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "tune never reached its connect wait"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    text = log.read_text()
    (line,) = [ln for ln in text.splitlines() if ln.startswith("interrupted (")]
    said = "interrupted (SIGINT) before Tune started; nothing to resume, run again with: "
    assert line.startswith(said), text[-3000:]
    # The program as the shell reaches it (the bare name, or its path when the venv is not activated), then tune.
    words = shlex.split(line[len(said):])
    assert words[0].endswith("dept-pipeline") and words[1] == "tune", line
    assert "--resume" not in line and "state is saved" not in text and "Aborted!" not in text
