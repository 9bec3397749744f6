"""Connecting to Ray, the same way for every command."""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

ADDRESS_ENV = "RAY_ADDRESS"  # set by `ray job submit` for the entrypoint, and by users, as Ray's own tools read it


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


def keep_credentials_out_of_runtime_envs() -> None:
    try:
        from ray.tune.execution import class_cache
    except ImportError:  # a Ray without Tune, or one that moved it: nothing copies them there
        return
    class_cache.ENV_VARS_TO_PROPAGATE = set(class_cache.ENV_VARS_TO_PROPAGATE) - CREDENTIAL_ENV


def ensure_ray(address: str | None, **init_kwargs) -> bool:
    """Connect to the cluster at ``address`` (or ``$RAY_ADDRESS``), reuse an already connected Ray, or start a new
    single-machine Ray on loopback. True when this call started or joined it (and the caller should shut it down)."""
    import ray

    keep_credentials_out_of_runtime_envs()
    if ray.is_initialized():
        return False
    address, source = ray_address(address)
    if address:
        log.info("joining the Ray cluster at %s (from %s)", address, source)
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, **init_kwargs)
        except (ConnectionError, ValueError) as e:
            raise ConnectionError(f"cannot connect to the Ray cluster at {address} (from {source}): "
                                  f"{str(e).splitlines()[0]}") from None
    else:
        # address="local": a new Ray on 127.0.0.1, never some other cluster found running on this machine.
        ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
                 **init_kwargs)
    return True
