"""A real multi-node Ray cluster started with the ``ray`` CLI (``ray start --head`` + ``ray start --address``), on
127.0.0.1 only, in a private temp dir; stopped by its own process tree (never ``ray stop``, which would stop every
Ray on the machine, other people's included)."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from tests.mlflow_server import free_port

RAY = str(Path(sys.executable).parent / "ray")
RAY_START = [RAY, "start"]
# `ray start --address` with that variable at 0 refuses to add a node (a check meant for macOS / Windows; set to 1,
# Ray swaps 127.0.0.1 for the host's address): the same CLI, its own check seeing 1, the rest of Ray 0.
RAY_START_WORKER = [sys.executable, "-c", """
import sys, types
import ray._private.ray_constants as constants
import ray.scripts.scripts as cli
cli.ray_constants = types.SimpleNamespace(**{**vars(constants), "ENABLE_RAY_CLUSTER": True})
sys.argv[0] = "ray"
cli.main()
""", "start"]


@dataclasses.dataclass
class RayStartCluster:
    temp_dir: Path  # every node's --temp-dir: session folders, logs, sockets
    gcs_address: str
    dashboard_url: str  # where `ray job submit` talks to
    env: dict[str, str]  # what the nodes were started with (and clients must use: the auth token)

    def daemon_pids(self) -> set[int]:
        """The cluster's processes: those naming its temp dir (GCS, raylets, dashboard, monitors) and everything they
        started (workers and agents rename themselves, ``ray::...``, so they are found as descendants)."""
        table = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                with contextlib.suppress(OSError):
                    cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
                    table[int(d)] = (ppid, cmd)
        ours = {os.getpid(), os.getppid()}
        mine = {p for p, (_, cmd) in table.items() if str(self.temp_dir) in cmd and "/ray/" in cmd} - ours
        while True:
            more = {p for p, (ppid, _) in table.items() if ppid in mine} - mine - ours
            if not more:
                return mine
            mine |= more

    def listening(self) -> list[str]:
        """``local address:port`` of every TCP socket the cluster's processes listen on (from ``ss -ltnp``)."""
        pids = self.daemon_pids()
        out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
        return [line.split()[3] for line in out.splitlines()
                if {int(p) for p in re.findall(r"pid=(\d+)", line)} & pids]

    def job(self, *entrypoint: str, runtime_env: dict | None = None, timeout_s: float = 240) -> tuple[str, str]:
        """``ray job submit`` the entrypoint, wait for it to end; (final status, the job's log). Submitted with
        ``--no-wait`` and polled: following the log over the dashboard's websocket breaks on a loaded machine."""
        job_id = f"dept-{uuid.uuid4().hex[:12]}"
        extra = ["--runtime-env-json", json.dumps(runtime_env)] if runtime_env else []
        self._ray("job", "submit", "--no-wait", "--submission-id", job_id, *extra, "--", *entrypoint)
        deadline = time.time() + timeout_s
        while True:
            status = self._ray("job", "status", job_id)
            final = re.search(r"Job '[^']+' (succeeded|failed|was stopped)", status.stdout + status.stderr)
            if final or time.time() > deadline:
                return final.group(1) if final else "timeout", self._ray("job", "logs", job_id).stdout
            time.sleep(3)

    def _ray(self, *args: str) -> subprocess.CompletedProcess:
        """``ray job <verb>`` against this cluster (the address before ``--`` and the entrypoint)."""
        done = subprocess.run([RAY, *args[:2], "--address", self.dashboard_url, *args[2:]], env=self.env, capture_output=True,
                              text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"ray {' '.join(args[:2])} failed: {done.stdout[-1500:]}{done.stderr[-1500:]}")
        return done

    def stop(self) -> None:
        pids = self.daemon_pids()
        for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            for p in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, sig)
            deadline = time.time() + wait_s
            while pids and time.time() < deadline:
                pids = {p for p in pids if Path(f"/proc/{p}").exists() and _state(p) != "Z"}
                time.sleep(0.2)


def _state(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return "Z"


def files_containing(root: Path, needle: str) -> list[str]:
    """Every regular file under ``root`` whose bytes contain ``needle`` (logs, events, dumps: no file type skipped)."""
    hits = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath, name)
            if path.is_file() and not path.is_symlink() and needle.encode() in path.read_bytes():
                hits.append(str(path.relative_to(root)))
    return hits


@contextlib.contextmanager
def ray_start_cluster(env: dict[str, str], node_resources: list[dict], num_cpus: int = 2):
    """Head plus one worker node per extra entry of ``node_resources`` (custom resources of each node), all on
    127.0.0.1 with free ports. ``env`` is what every node inherits (and so every job driver, task and actor)."""
    # Short: Ray's unix socket paths under <temp>/session_*/sockets must stay under 107 characters.
    temp_dir = Path(tempfile.mkdtemp(prefix="rayjs-", dir="/tmp"))
    token = temp_dir / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    # Token auth with a private token (not ~/.ray/auth_token, which other people's Ray may have made).
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps every process on loopback (unset, the GCS binds 0.0.0.0 and jobs get
    # the host's address in RAY_ADDRESS).
    env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
    port, dashboard_port = free_port(), free_port()
    common = ["--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--temp-dir", str(temp_dir),
              "--num-cpus", str(num_cpus)]
    cluster = RayStartCluster(temp_dir, f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}", env)
    try:
        for i, resources in enumerate(node_resources):
            where = (["--head", "--port", str(port), "--dashboard-host", "127.0.0.1", "--dashboard-port",
                      str(dashboard_port), "--ray-client-server-port", str(free_port())] if i == 0
                     else ["--address", cluster.gcs_address])
            # Free ports for the two whose defaults are fixed (52365, 10001): other Rays may hold them.
            started = subprocess.run([*(RAY_START if i == 0 else RAY_START_WORKER), *where, *common,
                                      "--dashboard-agent-listen-port",
                                      str(free_port()), "--resources", json.dumps(resources)],
                                     env=env, capture_output=True, text=True, timeout=180)
            if started.returncode:
                raise RuntimeError(f"ray start (node {i}) failed: {started.stderr[-2000:]}")
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
