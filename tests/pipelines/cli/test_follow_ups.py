"""Every follow-up command ``tune`` prints runs as printed, from a shell whose PATH does not hold the virtualenv
(the quickstart's situation: scripts/env.sh puts .venv/bin on PATH for the script only) and from another folder
(a relative ``sqlite:///mlflow.db`` is printed absolute)."""
from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

SCRIPT = Path(sys.executable).parent / "dept-pipeline"
LABELS = ("compare the trials in the MLflow UI: ", "the paper-style table: ", "winner learned (")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shell_env() -> dict[str, str]:
    """A user's shell: the system's PATH only (no virtualenv activated), the checkout importable."""
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = "/usr/bin:/bin"
    env["PYTHONPATH"] = str(REPO)
    return env


def _printed(text: str, label: str) -> str:
    (line,) = [line for line in text.splitlines() if label in line]
    return line.split(": ", 1)[1] if label.endswith(": ") else line.rsplit("tag): ", 1)[1]


@pytest.mark.slow
def test_tune_follow_ups_run_as_printed_without_the_venv_on_path(demo_store, ray_cluster, tmp_path):
    if not SCRIPT.is_file():
        pytest.skip(f"no dept-pipeline script beside {sys.executable}")
    env = _shell_env()
    assert subprocess.run(["bash", "-c", "command -v dept-pipeline"], env=env).returncode != 0
    work, elsewhere = tmp_path / "checkout", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    space = yaml.safe_load((REPO / "tune_spaces" / "smoke.yaml").read_text())
    space.update(num_samples=1, scheduler="none")  # both seeds complete: there is a winner to export
    (work / "space.yaml").write_text(yaml.safe_dump(space))
    tuned = subprocess.run(
        [str(SCRIPT), "tune", "--features", demo_store, "--dataset", "all", "--space", "space.yaml", "--method", "coop",
         "--storage", "tune", "--mlflow-uri", "sqlite:///mlflow.db", "--experiment", "fu",
         "--ray-address", ray_cluster.address],
        cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert tuned.returncode == 0, tuned.stdout[-3000:] + tuned.stderr[-3000:]
    ui, report, export = (_printed(tuned.stdout, label) for label in LABELS)
    for line in (ui, report, export):
        assert shlex.split(line)[0] == str(SCRIPT), line  # by its path: the name is not on this PATH
        assert f"sqlite:///{work / 'mlflow.db'}" in line, line

    for line in (report, export):
        done = subprocess.run(["bash", "-c", line], cwd=elsewhere, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    assert "coop" in subprocess.run(["bash", "-c", report], cwd=elsewhere, env=env, capture_output=True,
                                    text=True, timeout=300).stdout.lower()
    assert any(p.name.endswith(".safetensors") for p in (elsewhere / shlex.split(export)[-1]).iterdir())

    # The UI serves until stopped: it runs when it prints the experiment's link (another port than 5000, which
    # something else on this machine may hold, is the one change to the printed line).
    port = _free_port()
    server = subprocess.Popen(["bash", "-c", f"{ui} --port {port}"], cwd=elsewhere, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        first = server.stdout.readline()
        assert first.startswith(f"experiment 'fu': http://127.0.0.1:{port}/#/experiments/"), first
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                time.sleep(1)
        else:
            pytest.fail("the MLflow UI did not listen within 120 s")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
