"""Numbers shared by ``tracking`` and ``report`` (a leaf module: no torch, no MLflow)."""
from __future__ import annotations

import math
from typing import Any

from dept.scores import harmonic_mean  # noqa: F401  (the HM of the method library, torch-free; re-exported)


def is_number(v: Any, *, nan: bool = True) -> bool:
    """An int or float reported or logged as a metric (not a bool); ``nan=False`` also refuses NaN."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and (nan or not math.isnan(v))
