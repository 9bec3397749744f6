"""CLI group ``analyze``: analyses of a tuned experiment; ``analyze channels`` is the paper's Figure 3."""
from __future__ import annotations

from pathlib import Path

import click

from pipelines.secrets import mask_uri


@click.group("analyze")
def analyze_group() -> None:
    """Analyses of an MLflow experiment's runs on their cached features."""


@analyze_group.command("channels")
@click.option("--mlflow-uri", default=None, envvar="MLFLOW_TRACKING_URI", show_envvar=True,
              help="Default: sqlite:///mlflow.db in the working folder.")
@click.option("--experiment", default="dept", show_default=True, help="The MLflow experiment tune logged to.")
@click.option("--dataset", default=None, help="Only this dataset (default: every dataset of the experiment).")
@click.option("--features", default=None,
              help="The feature store's model folder, if it moved since the runs recorded it (tag features_url).")
@click.option("--window", type=click.IntRange(min=1), default=64, show_default=True,
              help="Channels per sliding window (the reference's 64).")
@click.option("--plots", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Also save each dataset's figure and numbers under DIR/<dataset>/ (created).")
def channels_cmd(mlflow_uri, experiment, dataset, features, window, plots):
    """Channel importance of base and new classes (the paper's Figure 3): CLIP zero-shot, each method's plain
    run and the method with DePT (the configuration the report shows, every seed), on the test features. The
    figure goes to each dataset's parent run (plots/channel_importance.png) and, with --plots, to DIR."""
    from pipelines.analysis.channels import analyse, log_to_parent, plan_channels, write_outputs
    from pipelines.tracking.client import check_tracking_uri, default_tracking_uri

    if plots is not None:
        plots = plots.expanduser().resolve()
        if not plots.parent.is_dir():
            raise click.BadParameter(f"folder {plots.parent} does not exist", param_hint="--plots")
    uri = mlflow_uri or default_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise click.BadParameter(f"no MLflow store at {mask_uri(uri)} (nothing tracked there yet)",
                                 param_hint="--mlflow-uri")
    check_tracking_uri(uri)
    plans = plan_channels(uri, experiment, dataset=dataset, features=features, window=window)  # every check, before torch
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    analyses = [analyse(plan, uri, window=window, device=device) for plan in plans]
    for analysis in analyses:
        name = analysis.plan.dataset
        for skipped in analysis.plan.skipped:
            click.echo(f"{name}: left out {skipped}")
        for v in analysis.variants():
            s = analysis.summary(v.label)
            seeds = len(analysis.results[v.label])
            click.echo(f"{name}  {v.label:<16} {seeds} run{'s' * (seeds != 1)}  CI base {s['ci_base']:.3f}  "
                       f"CI new {s['ci_new']:.3f}  CI-base:CI-new {s['ratio_mean']:.3f} ± {s['ratio_std']:.3f}  "
                       f"windows with base > new {100 * s['ratio_above_1']:.0f}%"
                       + (f"  ({s['ratio_undefined']:.0f} windows with CI new 0: no ratio)"
                          if s["ratio_undefined"] else ""))
        logged = log_to_parent(analysis, uri)
        if logged is None:
            click.echo(f"{name}: no parent run (the runs were not logged by tune); figure not logged to MLflow")
        else:
            click.echo(f"{name}: logged {', '.join(map(str, logged))} to parent run {analysis.plan.parent_run_id}")
        if plots is not None:
            for path in write_outputs(analysis, plots / name):
                click.echo(f"wrote {path}")


COMMANDS = [analyze_group]
