"""Bench only (bench/orchestration_ceiling.py; never set in real runs, no CLI option): the ``tune`` machinery's
timers. With ``DEPT_BENCH_TIMERS_DIR=<folder>`` in the driver's environment (its local Ray's workers inherit it),
:func:`timed` / :func:`record` append one JSON line per event to ``<folder>/<pid>.jsonl``: a trial's start, its
Tune report round trips (the checkpoint's upload to storage included) and checkpoint writes, a population's barrier
waits, the driver's MLflow logging. Unset (always, outside the bench), both do nothing.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

TIMERS_ENV = "DEPT_BENCH_TIMERS_DIR"


def record(name: str, seconds: float, **extra) -> None:
    """One timer event (a no-op unless ``DEPT_BENCH_TIMERS_DIR`` is set)."""
    folder = os.environ.get(TIMERS_ENV)
    if not folder:
        return
    line = json.dumps({"name": name, "s": seconds, "t": time.time(), **extra})
    with open(Path(folder) / f"{os.getpid()}.jsonl", "a") as f:
        f.write(line + "\n")


@contextlib.contextmanager
def timed(name: str, **extra):
    if not os.environ.get(TIMERS_ENV):
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        record(name, time.perf_counter() - start, **extra)
