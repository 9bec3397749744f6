"""``dept-pipeline report``'s base-to-new path: read the runs (:mod:`~pipelines.report.table`), save the figures
(:mod:`pipelines.figures`) and format the table (:mod:`~pipelines.report.formats`)."""
from __future__ import annotations

from pathlib import Path

from pipelines.figures import report_figures
from pipelines.report.formats import format_report
from pipelines.report.table import ReportError, build_report, collect_runs
from pipelines.secrets import mask_uri


def make_report(uri: str, experiment: str, fmt: str = "md", plots: Path | None = None) -> str:
    """The table as ``fmt`` (``pipelines.report.formats.FORMATS``); with ``plots``, each dataset's figures are
    saved under ``plots/<dataset>/`` (``pipelines.figures``)."""
    runs = collect_runs(uri, experiment)
    if not runs:
        raise ReportError(f"MLflow experiment {experiment!r} at {mask_uri(uri)} has no finished runs with test "
                          "metrics yet")
    if plots is not None:
        report_figures(runs, plots)
    return format_report(build_report(runs), fmt, experiment=experiment)
