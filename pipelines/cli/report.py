"""CLI command ``report``: the paper-style base-to-new table of an MLflow experiment."""
from __future__ import annotations

from pathlib import Path

import click

from pipelines.cli._common import check_out, write_atomic
from pipelines.secrets import mask_uri


@click.command("report")
@click.option("--mlflow-uri", default=None, envvar="MLFLOW_TRACKING_URI", show_envvar=True,
              help="Default: sqlite:///mlflow.db in the working folder.")
@click.option("--experiment", default="dept", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["md", "csv"]), default="md", show_default=True)
@click.option("--out", default=None, help="Write to this file instead of printing.")
def report_cmd(mlflow_uri, experiment, fmt, out):
    """The paper-style base-to-new table of an MLflow experiment, beside the published numbers."""
    from pipelines.report.table import ReportError, make_report
    from pipelines.tracking.client import check_tracking_uri, default_tracking_uri

    out_path = check_out(out)
    uri = mlflow_uri or default_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise ReportError(f"no MLflow store at {mask_uri(uri)} (nothing tracked there yet)")
    check_tracking_uri(uri)
    text = make_report(uri, experiment, fmt)
    if out_path is None:
        click.echo(text, nl=False)
    else:
        write_atomic(out_path, text)
        click.echo(f"wrote {out_path}")


COMMANDS = [report_cmd]
