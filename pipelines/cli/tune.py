"""CLI command ``tune``: Ray Tune over a search space, every trial tracked in MLflow."""
from __future__ import annotations

import signal
import sys

import click

from pipelines.cli._common import (
    METHOD_CHOICE,
    command_line,
    feature_store_options,
    protocol_dataset,
    protocol_options,
    rerun_line,
)
from pipelines.cli._compute import compute_options
from pipelines.selection import TIE_RULE


def follow_ups(uri: str, experiment: str, protocol: str, outcomes) -> list[str]:
    """What to run next, each line runnable as printed: the UI over the trials, the paper-style tables, and the
    export of the first dataset's winner (every dataset's is its parent run's ``best_run_id`` tag)."""
    store = ("--mlflow-uri", uri)
    lines = [f"compare the trials in the MLflow UI: {command_line('ui', *store, '--experiment', experiment)}",
             f"the paper-style table: "
             f"{command_line('report', *store, '--experiment', experiment, '--protocol', protocol)}"]
    won = next((o for o in outcomes if o.best_trial is not None and o.best_trial.run_id), None)
    if won is not None:
        export = command_line("export", *store, "--run-id", won.best_trial.run_id, "--out", f"learned-{won.dataset}")
        lines.append(f"what {won.dataset}'s winner learned (each dataset's winner: its parent run's best_run_id tag): "
                     f"{export}")
    return lines


def parse_population(value: str) -> int | None:
    """``--population``: a count >= 1, or auto (None: chosen by device, pipelines.trial.population)."""
    if value == "auto":
        return None
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise click.BadParameter(f"{value!r} is neither auto nor a whole number >= 1", param_hint="'--population'")
    return count


def _space_help() -> str:
    try:
        from tune_spaces import space_names

        return ", ".join(space_names())
    except Exception:  # help text only
        return "?"


@click.command("tune", help=(
    "Tune DePT trials with Ray Tune over cached features; every trial tracked in MLflow.\n\n"
    "The summary names per dataset the winner: of the configurations (every setting but the seed) with every seed "
    "completed, the one with the best mean selection metric over its seeds (validation only), across all methods; "
    f"`report` marks the same one. {TIE_RULE} DePT at loss weight 0 is the plain method, and named so."))
@feature_store_options
@click.option("--dataset", default=None, help="A dataset in the store, or 'all' (one Tune experiment each, in turn). Base-to-new only.")
@protocol_options
@click.option("--space", default="smoke", show_default=True, help=f"Search space: a shipped name ({_space_help()}) or a .yaml path.")
@click.option("--method", "methods", type=METHOD_CHOICE, multiple=True,
              help="Only these methods (names registered in dept.methods; repeatable); replaces the space's method values.")
@click.option("--objective", type=click.Choice(["val", "pseudo-new"]), default=None,
              help="Selection objective; default: the space's (val).")
@click.option("--num-samples", type=click.IntRange(min=1), default=None, help="Override the space's num_samples.")
@click.option("--gpus-per-trial", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="GPUs Ray reserves per trial (a fraction shares a GPU).")
@click.option("--cpus-per-trial", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="CPUs Ray reserves per trial.")
@click.option("--max-concurrent", type=click.IntRange(min=1), default=None, help="Most trials at once (default: as resources allow).")
@click.option("--population", default="auto", show_default=True, callback=lambda c, p, v: parse_population(v),
              help="Train up to this many same-shape trials as one batched step (each still its own Tune trial and "
                   "MLflow run); auto: 1 on CPU, 8 with --gpus-per-trial.")
@compute_options
@click.option("--max-failures", type=click.IntRange(min=0), default=2, show_default=True, help="Retries of a failed trial.")
@click.option("--ray-address", default=None,
              help="Ray cluster to join (default: $RAY_ADDRESS, as `ray job submit` sets it; else a new local Ray).")
@click.option("--storage", default=None, help="Tune storage: folder or URL (s3://...). Default ./runs/tune.")
@click.option("--resume", is_flag=True, help="Continue an interrupted experiment (finished trials are not rerun).")
@click.option("--mlflow-uri", default=None, envvar="MLFLOW_TRACKING_URI", show_envvar=True,
              help="Default: sqlite:///mlflow.db in the working folder.")
@click.option("--experiment", default="dept", show_default=True, help="MLflow experiment and Tune folder name.")
def tune_cmd(features, model, pretrained, dataset, protocol, source, targets, space, methods, objective, num_samples,
             gpus_per_trial, cpus_per_trial, max_concurrent, population, precision, compile_mode, max_failures,
             ray_address, storage, resume, mlflow_uri, experiment):
    dataset, target_names = protocol_dataset(protocol, dataset, source, targets)
    from pipelines.tune.runner import TuneInterrupted, TuneOptions, best_table, run_tune
    opts = TuneOptions(
        features=features, model=model, pretrained=pretrained, dataset=dataset, space=space, experiment=experiment,
        num_samples=num_samples,
        methods=tuple(methods), objective=objective, gpus_per_trial=gpus_per_trial, cpus_per_trial=cpus_per_trial,
        max_concurrent=max_concurrent, max_failures=max_failures, ray_address=ray_address, storage=storage,
        resume=resume, mlflow_uri=mlflow_uri, protocol=protocol, targets=target_names, population=population,
        precision=precision, compile=compile_mode,
    )
    try:
        outcomes = run_tune(opts, progress=click.echo)
    except TuneInterrupted as e:
        # The parent run is KILLED. One line: what happened and the command that continues.
        if e.saved:
            click.echo(f"interrupted ({signal.Signals(e.signum).name}); Tune's state is saved, resume with: "
                       f"{rerun_line('--resume')}", err=True)
        else:
            click.echo(f"interrupted ({signal.Signals(e.signum).name}) before Tune started; nothing to resume, "
                       f"run again with: {rerun_line()}", err=True)
        sys.exit(128 + e.signum)  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
    from pipelines.tune.spaces import load_space

    chosen = load_space(space).with_overrides(objective=objective, protocol=protocol)
    click.echo("")
    click.echo(f"best configuration per dataset (selected on {chosen.metric}; test numbers are mean over seeds):")
    click.echo(best_table(outcomes, chosen.metric, chosen.mode, protocol))
    from pipelines.tracking.client import default_tracking_uri

    click.echo("")
    for line in follow_ups(mlflow_uri or default_tracking_uri(), experiment, protocol, outcomes):
        click.echo(line)
    failed = [o.dataset for o in outcomes if o.records and o.count("error") == len(o.records)]
    if failed:
        raise click.ClickException(f"every trial of {', '.join(failed)} failed; the error of each is in the "
                                   "'error' tag of its MLflow run")


COMMANDS = [tune_cmd]
