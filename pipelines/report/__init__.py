"""``dept-pipeline report``: the paper-style base-to-new table read back from MLflow (:mod:`pipelines.report.table`)."""
from pipelines.report.table import (
    ZERO_SHOT_LABEL, ReportError, build_report, collect_runs, make_report, method_label,
)

__all__ = ["ZERO_SHOT_LABEL", "ReportError", "build_report", "collect_runs", "make_report", "method_label"]
