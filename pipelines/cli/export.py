"""CLI command ``export``: a trial's (or ``train`` run's) learned state out of MLflow into a folder."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click


def export_run(uri: str, run_id: str, out: Path) -> list[Path]:
    """Download the run's ``learned_state/`` artifacts into ``out`` (created; must be empty if it exists): the
    folder holds ``learned_state.safetensors`` (``dept.load_state``), ``hyperparameters.json``, ``final.json`` and
    ``config.json``. Every user error is one line, before anything is written."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from pipelines.paths import check_writable_folder
    from pipelines.secrets import mask_uri
    from pipelines.vocabulary import STATE_ARTIFACTS, STATE_NAMES

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise click.BadParameter(f"{out} exists and is not an empty folder", param_hint="--out")
    if not out.parent.is_dir():
        raise click.BadParameter(f"folder {out.parent} does not exist", param_hint="--out")
    check_writable_folder(out, "--out")  # out is filled ...
    check_writable_folder(out.parent, "--out")  # ... from a download folder beside it
    client = MlflowClient(tracking_uri=uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ValueError(f"no MLflow run {run_id!r} at {mask_uri(uri)}") from None
    names = {Path(a.path).name for a in client.list_artifacts(run_id, STATE_ARTIFACTS)}
    if STATE_NAMES[0] not in names:
        status = run.data.tags.get("trial_status", run.info.status)
        raise ValueError(f"MLflow run {run_id} ({run.info.run_name}, {status}) has no {STATE_ARTIFACTS}/"
                         f"{STATE_NAMES[0]}: only completed trials and train runs keep what they learned")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # our own lines say what was written
    out.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".dept-export-", dir=out.parent) as tmp:
        folder = Path(client.download_artifacts(run_id, STATE_ARTIFACTS, tmp))
        for path in folder.iterdir():  # `out` itself is the learned state folder
            path.replace(out / path.name)
    return sorted(out.iterdir())


@click.command("export")
@click.option("--run-id", required=True, help="The MLflow run of a completed trial (or a train run).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder to create (or an empty one): the learned state, its hyperparameters and config.")
@click.option("--mlflow-uri", default=None, envvar="MLFLOW_TRACKING_URI", show_envvar=True,
              help="Default: sqlite:///mlflow.db in the working folder.")
def export_cmd(run_id, out, mlflow_uri):
    """Export what a trial learned: a folder that `dept.load_state` loads (the prompts + CAT head, safetensors),
    with hyperparameters.json, final.json (its logged numbers) and config.json (dataset and feature store)."""
    from pipelines.tracking.client import default_tracking_uri, require_store

    uri = mlflow_uri or default_tracking_uri()
    require_store(uri)
    for path in export_run(uri, run_id, out.expanduser().resolve()):
        click.echo(f"wrote {path}")


COMMANDS = [export_cmd]
