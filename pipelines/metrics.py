"""Numbers shared by ``tracking`` and ``report`` (a leaf module: no torch, no MLflow)."""
from __future__ import annotations


def harmonic_mean(base: float, new: float) -> float:
    """dept.evaluate.harmonic_mean's formula, here so that ``report`` need not import torch (any ``dept`` import
    does) to summarise MLflow numbers; tests/pipelines/report/test_report.py keeps the two equal."""
    return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)
