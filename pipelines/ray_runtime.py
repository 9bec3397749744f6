"""Connecting to Ray, the same way for every command."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def ensure_ray(address: str | None, **init_kwargs) -> bool:
    """Connect to the cluster at ``address``, reuse an already connected Ray, or start a new single-machine Ray
    on loopback. True when this call started or joined it (and the caller should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, **init_kwargs)
        except ConnectionError as e:
            raise ConnectionError(f"cannot connect to the Ray cluster at {address}: {str(e).splitlines()[0]}") from None
    else:
        # address="local": a new Ray on 127.0.0.1, never some other cluster found running on this machine.
        ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
                 **init_kwargs)
    return True
