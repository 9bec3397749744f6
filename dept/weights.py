"""What a ``pretrained`` value names, torch-free: an open_clip tag, ``shipped`` (a checkpoint shipped with the
package, ``dept/assets/``), a local checkpoint file, or none (random weights, seeded); and a checkpoint's sha256.
The store and the trial context check weights with these before anything loads torch."""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

ASSET_DIR = Path(__file__).parent / "assets"
SHIPPED_TAG = "shipped"
#: Seed for ``pretrained=None`` so that random-weight models are identical across processes and machines.
RANDOM_INIT_SEED = 0


def is_none(pretrained: str | None) -> bool:
    return pretrained is None or str(pretrained).lower() in ("", "none", "random")


def shipped_models() -> list[str]:
    return sorted(p.stem for p in ASSET_DIR.glob("*.safetensors"))


def is_local_checkpoint(pretrained: str | None) -> bool:
    if is_none(pretrained) or pretrained == SHIPPED_TAG:
        return False
    p = str(pretrained)
    return p.endswith((".safetensors", ".pt", ".pth", ".bin")) or "/" in p or Path(p).exists()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, computed once per (file, size, modification time) in a process: a checkpoint's
    weights id is asked for at several checks before a run (one per dataset with ``--dataset all``), and hashing a
    ViT-B checkpoint takes seconds. A file rewritten in place gets a new modification time, so a new hash."""
    st = os.stat(path)
    return _sha256_of(os.path.realpath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
