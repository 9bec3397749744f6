"""Local output locations: checked before any work starts (a folder given as an option must be, or be creatable
as, a writable folder; object-store URLs are left to their first write), and held by one writer at a time."""
from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from urllib.parse import urlparse


class PathError(ValueError):
    """An output location that cannot be written; one line naming the option and the path."""


def check_writable_folder(location: str, option: str) -> None:
    """``location``: a local path (or file: URL) that must be a folder we can write, or creatable under one."""
    parsed = urlparse(str(location))
    if parsed.scheme not in ("", "file"):
        return
    path = Path(parsed.path if parsed.scheme == "file" else str(location)).expanduser().absolute()
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent  # the first part that exists decides: it must be a folder we may create in
    if not probe.is_dir():
        raise PathError(f"{option} {location}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PathError(f"{option} {location}: folder {probe} is not writable")


class LockHeld(Exception):
    """Another process holds the lock; ``holder`` is what it wrote ("pid N on host, since ...")."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


class HolderLock:
    """An exclusive ``flock`` on a local file that names its holder. The kernel drops it when the holder dies, so a
    killed run never leaves it stale (and a rerun resumes); on a filesystem without flock it does not protect.
    ``acquire`` raises :class:`LockHeld` at once instead of waiting."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise LockHeld(holder) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> "HolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
