"""``dept-pipeline report``: the paper-style base-to-new table read back from MLflow (:mod:`pipelines.report.table`)."""
from pipelines.report.table import ReportError, build_report, collect_runs, make_report, method_label

__all__ = ["ReportError", "build_report", "collect_runs", "make_report", "method_label"]
