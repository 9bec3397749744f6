"""Connecting to Ray, the same way for every command."""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

ADDRESS_ENV = "RAY_ADDRESS"  # set by `ray job submit` for the entrypoint, and by users, as Ray's own tools read it
#: How long a command waits for a named cluster's address to accept a connection before ``ray.init`` (whose own wait
#: for a GCS that never answers is about 14 minutes of native retries).
CONNECT_TIMEOUT_ENV = "DEPT_RAY_CONNECT_TIMEOUT_S"
DEFAULT_CONNECT_TIMEOUT_S = 20.0


def ray_address(address: str | None) -> tuple[str | None, str]:
    """The cluster to join and where that came from: ``--ray-address``, else ``$RAY_ADDRESS``, else none (a new
    local Ray)."""
    if address:
        return address, "--ray-address"
    env = os.environ.get(ADDRESS_ENV, "").strip()
    return (env, f"${ADDRESS_ENV}") if env else (None, "")


# Ray Tune (2.x, ray.tune.execution.class_cache) copies these from the driver's environment into every trial actor's
# runtime_env, and the runtime-env agent writes runtime_envs into the session logs. The trials get them as they get
# every other variable: from the environment of their node's Ray (inherited from the driver, for a local Ray).
CREDENTIAL_ENV = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"})


#: Not secrets, and wanted in every trial actor of a cluster whose nodes do not have them (MLflow's "View run ... at:
#: URL" lines print the tracking URI, a password in it included).
PROPAGATED_ENV = frozenset({"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"})


def keep_credentials_out_of_runtime_envs() -> None:
    try:
        from ray.tune.execution import class_cache
    except ImportError:  # a Ray without Tune, or one that moved it: nothing copies them there
        return
    class_cache.ENV_VARS_TO_PROPAGATE = (set(class_cache.ENV_VARS_TO_PROPAGATE) - CREDENTIAL_ENV) | PROPAGATED_ENV


def connect_timeout_s() -> float:
    raw = os.environ.get(CONNECT_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_CONNECT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(f"{CONNECT_TIMEOUT_ENV}={raw!r}: expected seconds, a number >= 0")
    return value


def _host_port(address: str) -> tuple[str, int] | None:
    """The TCP endpoint an address names (``host:port``, ``ray://host:port``, ``[v6]:port``); None for the words
    Ray resolves itself (``auto``, ``local``) or an address without a port."""
    try:
        parts = urlsplit(address if "://" in address else f"//{address}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    return parts.hostname, port


def wait_for_address(address: str, source: str, timeout_s: float | None = None) -> None:
    """Return once ``address`` accepts a TCP connection; else, after ``timeout_s`` (``$DEPT_RAY_CONNECT_TIMEOUT_S``,
    default 20 s) of retries, one ``ConnectionError`` line naming the address and the way to wait longer."""
    endpoint = _host_port(address)
    if endpoint is None:
        return
    timeout_s = connect_timeout_s() if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection(endpoint, timeout=max(0.2, min(2.0, left))):
                return
        except OSError as e:
            reason = e.strerror or type(e).__name__
        if time.monotonic() + 0.5 > deadline:
            raise ConnectionError(
                f"cannot connect to the Ray cluster at {address} (from {source}): nothing answered at "
                f"{endpoint[0]}:{endpoint[1]} within {timeout_s:.0f} s ({reason}); for a cluster still starting, "
                f"set {CONNECT_TIMEOUT_ENV} to wait longer")
        time.sleep(0.5)


def check_cluster(address: str | None) -> None:
    """When a cluster is named (``address`` or ``$RAY_ADDRESS``), wait for it as :func:`ensure_ray` will: a command
    calls this before it writes anything, so that a dead address leaves nothing behind."""
    address, source = ray_address(address)
    if address:
        wait_for_address(address, source)


def _keep_sigterm_handler():
    """The SIGTERM handler to put back after ``ray.init`` (which installs one calling ``sys.exit`` mid-loop, a native
    abort): ours (:mod:`pipelines.interrupts`) when one is installed, else None (Ray's stays)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    handler = signal.getsignal(signal.SIGTERM)
    return handler if getattr(handler, "_dept_stop", False) else None


def ensure_ray(address: str | None, **init_kwargs) -> bool:
    """Connect to the cluster at ``address`` (or ``$RAY_ADDRESS``), reuse an already connected Ray, or start a new
    single-machine Ray on loopback. True when this call started or joined it (and the caller should shut it down)."""
    import ray

    keep_credentials_out_of_runtime_envs()
    if ray.is_initialized():
        return False
    address, source = ray_address(address)
    ours = _keep_sigterm_handler()
    if address:
        log.info("joining the Ray cluster at %s (from %s)", address, source)
        wait_for_address(address, source)
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, **init_kwargs)
        except (ConnectionError, ValueError) as e:
            raise ConnectionError(f"cannot connect to the Ray cluster at {address} (from {source}): "
                                  f"{str(e).splitlines()[0]}") from None
    else:
        # address="local": a new Ray on 127.0.0.1, never some other cluster found running on this machine.
        ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
                 **init_kwargs)
    if ours is not None:
        signal.signal(signal.SIGTERM, ours)
    return True
