"""Numbers shared by ``tracking`` and ``report`` (a leaf module: no torch, no MLflow)."""
from __future__ import annotations

import math
from typing import Any


def harmonic_mean(base: float, new: float) -> float:
    """dept.evaluate.harmonic_mean's formula, here so that ``report`` need not import torch (any ``dept`` import
    does) to summarise MLflow numbers; tests/pipelines/report/test_report.py keeps the two equal."""
    return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)


def is_number(v: Any, *, nan: bool = True) -> bool:
    """An int or float reported or logged as a metric (not a bool); ``nan=False`` also refuses NaN."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and (nan or not math.isnan(v))
