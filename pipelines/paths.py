"""Output locations checked before any work starts: a local folder given as an option must be, or be creatable as,
a writable folder (object-store URLs are left to their first write)."""
from __future__ import annotations

import os
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
