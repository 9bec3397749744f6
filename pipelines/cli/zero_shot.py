"""CLI command ``zero-shot``: CLIP's zero-shot base / new / HM from the feature store, logged to MLflow."""
from __future__ import annotations

import click

from pipelines.cli._common import feature_store_options
from pipelines.secrets import mask_uri


@click.command("zero-shot")
@feature_store_options
@click.option("--dataset", required=True, help="A dataset in the store, or 'all' (each in turn).")
@click.option("--template", default=None,
              help="Prompt template with {} for the class name. Default: the dataset's hand-crafted one "
                   "(CoOp's; 'a photo of a {}.' for custom datasets).")
@click.option("--mlflow-uri", default=None, envvar="MLFLOW_TRACKING_URI", show_envvar=True,
              help="Default: sqlite:///mlflow.db in the working folder.")
@click.option("--experiment", default="dept", show_default=True, help="MLflow experiment.")
def zero_shot_cmd(features, model, pretrained, dataset, template, mlflow_uri, experiment):
    """Zero-shot CLIP on cached features (the dataset's template, ITM head only, nothing trained): prints test
    base / new / HM and logs one MLflow run (role zero-shot) per dataset."""
    import dataclasses

    from pipelines.tracking.client import Tracker, check_tracking_uri, default_tracking_uri
    from pipelines.trial.context import make_context
    from pipelines.trial.zero_shot import log_zero_shot_run, template_for, zero_shot_from_context

    if template is not None:
        template_for("", template)  # a template without {} is refused before any work
    uri = mlflow_uri or default_tracking_uri()
    check_tracking_uri(uri)
    if dataset == "all":
        from pipelines.store import list_datasets, resolve_features

        datasets = list_datasets(resolve_features(features, model=model, pretrained=pretrained))
        if not datasets:
            raise click.BadParameter(f"no complete featurized datasets under {features}", param_hint="--features")
    else:
        datasets = [dataset]
    # Every dataset's store is checked before the first is scored, and before torch loads.
    contexts = [make_context(features, name, shots=[None], seeds=[], model=model, pretrained=pretrained,
                             who="zero-shot") for name in datasets]
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    contexts = [dataclasses.replace(ctx, device=device) for ctx in contexts]
    tracker = Tracker(uri, experiment)
    for ctx in contexts:
        result = zero_shot_from_context(ctx, template=template, device=device)
        run_id = log_zero_shot_run(tracker, result)
        click.echo(result.line())
        click.echo(f"MLflow run {run_id} in experiment {experiment!r} at {mask_uri(uri)}")


COMMANDS = [zero_shot_cmd]
