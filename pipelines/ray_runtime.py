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
    """When a cluster is named (``address`` or ``$RAY_ADDRESS``), make :func:`ensure_ray`'s checks before joining
    it (it answers; it takes this driver's token): a command calls this before it writes anything, so that a dead
    address or a refused token leaves nothing behind."""
    address, source = ray_address(address)
    if address:
        _check_joinable(address, source)


def _check_joinable(address: str, source: str) -> None:
    wait_for_address(address, source)
    check_ray_auth(address, source)


def _keep_sigterm_handler():
    """The SIGTERM handler to put back after ``ray.init`` (which installs one calling ``sys.exit`` mid-loop, a native
    abort): ours (:mod:`pipelines.interrupts`) when one is installed, else None (Ray's stays)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    handler = signal.getsignal(signal.SIGTERM)
    return handler if getattr(handler, "_dept_stop", False) else None


AUTH_MODE_ENV, TOKEN_ENV, TOKEN_PATH_ENV = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
#: Ray's own default token file (``ray get-auth-token --generate`` writes it; a local ``ray.init()`` creates it).
DEFAULT_TOKEN_FILE = "~/.ray/auth_token"
_WHERE_TOKENS_GO = (f"the cluster's token (`ray get-auth-token` on the head prints it) in ${TOKEN_ENV}, in a file "
                    f"named by ${TOKEN_PATH_ENV}, or in {DEFAULT_TOKEN_FILE}")


class RayAuthError(ConnectionError):
    """The cluster refused this driver's token, or it has none: one line saying where Ray looks."""


def token_source() -> tuple[str | None, str]:
    """(the token Ray would send, where it came from), in Ray's order: ``$RAY_AUTH_TOKEN``, the file
    ``$RAY_AUTH_TOKEN_PATH`` names, ``~/.ray/auth_token``; (None, "") when none is there."""
    if TOKEN_ENV in os.environ:  # set, even blank, it is the one Ray reads
        token = os.environ[TOKEN_ENV].strip()
        return (token, f"${TOKEN_ENV}") if token else (None, "")
    named = os.environ.get(TOKEN_PATH_ENV, "").strip()
    path = os.path.expanduser(named or DEFAULT_TOKEN_FILE)
    try:
        with open(path) as f:
            token = f.read().strip()
    except OSError:
        token = ""
    shown = f"${TOKEN_PATH_ENV} ({named})" if named else DEFAULT_TOKEN_FILE
    return (token, shown) if token else (None, "")


def check_ray_auth(address: str, source: str, timeout: float = 10.0) -> None:
    """Before ``ray.init`` joins ``address``: one gRPC call to its GCS with the token Ray would send, so that a
    cluster with token authentication (``ray start --head`` in Ray 2.60 when a token exists) that refuses it is
    one line naming ``RAY_AUTH_MODE`` / ``RAY_AUTH_TOKEN_PATH``, not a minute of ``InvalidAuthToken`` warnings and
    "cannot connect". Ray sends a token to an explicitly given address only under ``RAY_AUTH_MODE=token``; an
    unreachable cluster, or a Ray without these modules, is left to ``ray.init``."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():  # ray://, auto: not a GCS address
        return
    try:  # here, not at the top: Ray's modules load only when a command joins a cluster
        import grpc
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
    except ImportError:
        return
    mode = os.environ.get(AUTH_MODE_ENV, "").strip().lower()
    token, where = token_source()
    if mode == "token" and token is None:
        raise RayAuthError(f"{AUTH_MODE_ENV}=token but no token found to join the Ray cluster at {address} "
                           f"(from {source}): put {_WHERE_TOKENS_GO}")
    metadata = [("authorization", f"Bearer {token}")] if mode == "token" else []
    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), metadata=metadata, timeout=timeout)
            return
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAUTHENTICATED:
                return
    if mode == "token":
        raise RayAuthError(f"the Ray cluster at {address} (from {source}) refused the token from {where}: it is "
                           f"not this cluster's; put {_WHERE_TOKENS_GO}")
    found = f" (a token is in {where})" if token else ""
    raise RayAuthError(f"the Ray cluster at {address} (from {source}) uses token authentication: set "
                       f"{AUTH_MODE_ENV}=token with {_WHERE_TOKENS_GO}{found}")


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
        _check_joinable(address, source)
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
