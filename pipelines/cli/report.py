"""CLI command ``report``: the paper-style table of an MLflow experiment (base-to-new; with ``--protocol``, the
cross-dataset or domain-generalisation one)."""
from __future__ import annotations

from pathlib import Path

import click

from dept.protocols import BASE_TO_NEW
from pipelines.cli._common import PROTOCOL_CHOICE, check_out, write_atomic
from pipelines.paths import check_writable_folder
from pipelines.secrets import mask_uri
from pipelines.selection import TIE_RULE


@click.command("report", help=(
    "The paper-style table of an MLflow experiment's runs of one protocol, beside the published numbers.\n\n"
    "Per dataset and method (DePT in effect or not: a run at loss weight 0 is the plain method's row) the row shows "
    "the configuration with the best mean selection metric over its seeds (validation only, every seed completed), "
    "with its loss weight and lr; the dataset's winner, the same rule across all methods (as tune's summary), is "
    f"marked (winner). {TIE_RULE}"))
@click.option("--mlflow-uri", default=None, envvar="MLFLOW_TRACKING_URI", show_envvar=True,
              help="Default: sqlite:///mlflow.db in the working folder.")
@click.option("--experiment", default="dept", show_default=True, help="The MLflow experiment tune or train logged to.")
@click.option("--protocol", type=PROTOCOL_CHOICE,
              default=BASE_TO_NEW, show_default=True,
              help="Which of the paper's tables: base-to-new, or the runs tagged with a transfer protocol (source "
                   "and targets, as the paper's Tables 2 and 3).")
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "latex"]), default="md", show_default=True,
              help="Markdown, CSV (a `row` column tells the kinds of rows apart: dataset / average; source / target / "
                   "average for the transfer protocols) or LaTeX (booktabs).")
@click.option("--out", default=None, help="Write to this file instead of printing.")
@click.option("--plots", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Also save each dataset's (each source's) figures as PNGs under DIR/<dataset>/ (created).")
def report_cmd(mlflow_uri, experiment, protocol, fmt, out, plots):
    from pipelines.report.make import make_report
    from pipelines.report.table import ReportError
    from pipelines.tracking.client import check_tracking_uri, default_tracking_uri

    out_path = check_out(out)
    if plots is not None:
        plots = plots.expanduser().resolve()
        if not plots.parent.is_dir():
            raise click.BadParameter(f"folder {plots.parent} does not exist", param_hint="--plots")
        check_writable_folder(plots, "--plots")
    uri = mlflow_uri or default_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise ReportError(f"no MLflow store at {mask_uri(uri)} (nothing tracked there yet)")
    check_tracking_uri(uri)
    if plots is not None:
        plots.mkdir(exist_ok=True)
    if protocol == BASE_TO_NEW:
        text = make_report(uri, experiment, fmt, plots)
    else:
        from pipelines.report.transfer import make_transfer_report

        text = make_transfer_report(uri, experiment, protocol, fmt, plots)
    if out_path is None:
        click.echo(text, nl=False)
    else:
        write_atomic(out_path, text)
        click.echo(f"wrote {out_path}")
    if plots is not None:
        click.echo(f"figures: {plots}", err=out_path is None)


COMMANDS = [report_cmd]
