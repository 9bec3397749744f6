"""Local output locations: checked before any work starts, by every command, with the checks below (a folder a
command writes must be, or be creatable as, a writable folder; an output file's folder must exist and take files;
object-store URLs are left to their first write), and held by one writer at a time."""
from __future__ import annotations

import fcntl
import os
import socket
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse


class PathError(ValueError):
    """An output location that cannot be written; one line naming the option, the path and what is in the way."""

    def __init__(self, option: str, location: str, reason: str):
        super().__init__(f"{option} {location}: {reason}")
        self.option, self.location, self.reason = option, location, reason


def local_path(location: str | os.PathLike) -> Path | None:
    """The absolute local path of ``location`` (a path or a file: URL); None for other URLs (s3://, memory://)."""
    parsed = urlparse(str(location))
    if parsed.scheme not in ("", "file"):
        return None
    return Path(parsed.path if parsed.scheme == "file" else str(location)).expanduser().absolute()


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Never leave a half-written file under the final name."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def _existing_part(path: Path, option: str, location: str) -> Path:
    """The deepest part of ``path`` that exists; it must be a folder (a file in the way is named)."""
    probe = path
    try:
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent  # the first part that exists decides: it must be a folder we may create in
    except OSError as e:  # e.g. a folder we may not even look into
        raise PathError(option, location, f"cannot look at {probe} ({e.strerror})") from None
    if not probe.is_dir():
        raise PathError(option, location, f"{probe} is not a folder")
    return probe


def check_folder(location: str | os.PathLike, option: str) -> None:
    """Every part of ``location`` that exists is a folder (nothing written): for folders that are only read
    when they hold finished work, and written otherwise."""
    path = local_path(location)
    if path is not None:
        _existing_part(path, option, str(location))


def check_writable_folder(location: str | os.PathLike, option: str) -> None:
    """``location``: a local path (or file: URL) that must be a folder we can write, or creatable under one. The
    deepest existing part is tried with a real write (a file created and removed at once): permission bits do not
    stop root, and do not tell a read-only mount."""
    path = local_path(location)
    if path is None:
        return
    probe = _existing_part(path, option, str(location))
    try:
        fd, name = tempfile.mkstemp(prefix=".dept-write-check-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise PathError(option, str(location), f"folder {probe} is not writable ({e.strerror})") from None


def check_writable_file(location: str | os.PathLike, option: str) -> Path:
    """An output file: not a folder, and its folder exists and takes files. Returns its absolute path."""
    path = Path(location).expanduser().resolve()
    if path.is_dir():
        raise PathError(option, str(location), f"{path} is a folder")
    if not path.parent.is_dir():
        reason = f"{path.parent} is not a folder" if path.parent.exists() else f"folder {path.parent} does not exist"
        raise PathError(option, str(location), reason)
    try:
        check_writable_folder(path.parent, option)
    except PathError as e:
        raise PathError(option, str(location), e.reason) from None
    return path


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
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+")
        except OSError as e:  # read-only, a file in the way: one line, whoever did not check first
            raise PathError("lock file", str(self.path), f"cannot be created ({e.strerror})") from None
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
