"""Search spaces shipped with dept-pipeline (YAML, package data). Format: see ``pipelines.tune.spaces`` / README.md."""
from __future__ import annotations

from pathlib import Path

SPACES_DIR = Path(__file__).parent


def space_names() -> list[str]:
    """Names of the shipped spaces (file stems), sorted."""
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def space_path(name: str) -> Path | None:
    """The file of shipped space ``name``, or None when there is none."""
    path = SPACES_DIR / f"{name}.yaml"
    return path if path.is_file() else None
