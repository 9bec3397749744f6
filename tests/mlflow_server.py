"""A real ``mlflow server`` process on 127.0.0.1 for the tests that are about the server (one copy of the start,
the wait for an answer and the stop by process group)."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(folder: Path, *, extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None,
                  answer_is_enough: bool = False, timeout_s: float = 180, port: int | None = None):
    """Serve a SQLite store in ``folder`` (``server.db``, log ``server.log``) on a free loopback port (or ``port``:
    a restarted server); yields the port once ``/health`` answers 200 (with ``answer_is_enough``, any HTTP answer:
    an auth app may refuse it)."""
    port = port or free_port()
    log = open(folder / "server.log", "a")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"} if env is None else env
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", *extra_args, "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder / 'server.db'}", "--workers", "1"],
        cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.time() + timeout_s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {(folder / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except urllib.error.HTTPError:
                if answer_is_enough:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"mlflow server did not answer /health within {timeout_s:.0f} s")
            time.sleep(1)
        yield port
    finally:
        # The server's workers share its session: end that process group (ours), then make sure.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass  # it exited (reported above)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()
