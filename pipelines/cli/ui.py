"""CLI command ``ui``: the MLflow UI on 127.0.0.1 over the store ``tune`` / ``train`` wrote, and the link to the
runs table in the saved view that compares the trials."""
from __future__ import annotations

import os
import socket
import sys

import click


@click.command("ui")
@click.option("--mlflow-uri", default=None, envvar="MLFLOW_TRACKING_URI", show_envvar=True,
              help="Default: sqlite:///mlflow.db in the working folder (the quickstart's). An http(s) tracking "
                   "server is its own UI: only its links are printed.")
@click.option("--experiment", default=None, help="Print the runs-table link of this experiment only.")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True,
              help="Port of the UI on 127.0.0.1.")
def ui_cmd(mlflow_uri, experiment, port):
    """Serve the MLflow UI on 127.0.0.1 (mlflow server, one worker) and print the runs-table link of each
    experiment (trials listed flat, sorted on the selection metric, the coefficient and metric columns first) and
    of its comparison chart (parallel coordinates: loss weight, fusion weight, lr against val_hm and test_hm)."""
    from mlflow import MlflowClient

    from pipelines.secrets import mask_uri
    from pipelines.tracking.client import default_tracking_uri, require_store, runs_url

    uri = mlflow_uri or default_tracking_uri()
    require_store(uri)
    served = not uri.startswith(("http://", "https://"))
    if served:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                raise click.BadParameter(f"port {port} on 127.0.0.1 is in use; pass another", param_hint="--port")
    base = f"http://127.0.0.1:{port}" if served else mask_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    if experiment is not None:
        chosen = [e for e in experiments if e.name == experiment]
        if not chosen:
            names = ", ".join(e.name for e in experiments) or "none"
            raise click.BadParameter(f"no experiment {experiment!r} at {mask_uri(uri)} (there: {names})",
                                     param_hint="--experiment")
        experiments = chosen
    for e in experiments:
        click.echo(f"experiment {e.name!r}: {runs_url(base, e.experiment_id)}")
        click.echo(f"  its comparison chart: {runs_url(base, e.experiment_id, charts=True)}")
    # MLflow 3 opens an experiment from its own pages on the GenAI side until this switch is set once per browser.
    click.echo('From MLflow\'s Home or Experiments pages: set the sidebar switch to "Model training" once '
               "(the browser keeps it), then the experiments open on their runs.")
    if not served:
        return
    click.echo(f"MLflow UI on {base} over {mask_uri(uri)} (Ctrl-C stops it)")
    sys.stdout.flush()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner beside the UI
    args = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1"]
    os.execve(sys.executable, args, env)  # the server in this process: Ctrl-C and kill reach it directly


COMMANDS = [ui_cmd]
