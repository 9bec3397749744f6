"""CLI commands: ``train`` (one run, no Tune), ``tune`` (Ray Tune over a search space), ``report`` (paper table)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

METHOD_CHOICE = click.Choice(["coop", "cocoop", "kgcoop"])


def _check_out(out: str | None) -> Path | None:
    """An output file's folder must exist before any work starts."""
    if out is None or out == "-":
        return None
    path = Path(out).expanduser().resolve()
    if not path.parent.is_dir():
        raise click.BadParameter(f"folder {path.parent} does not exist", param_hint="--out")
    return path


def _write_atomic(path: Path, text: str) -> None:
    """Never leave a half-written file under the final name."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


@click.command("train")
@click.option("--features", required=True, help="Feature store model folder (the URL featurize printed).")
@click.option("--dataset", required=True, help="Dataset name in the store.")
@click.option("--method", type=METHOD_CHOICE, default="coop", show_default=True, help="Base prompt method.")
@click.option("--dept/--no-dept", default=True, show_default=True, help="With DePT's CAT head, or the plain method.")
@click.option("--loss-weight", type=click.FloatRange(0, 1), default=0.7, show_default=True,
              help="lam: the CAT head's share of the training loss.")
@click.option("--fusion-weight", type=click.FloatRange(0, 1), default=0.7, show_default=True,
              help="a: the CAT head's share of base-class logits at inference.")
@click.option("--fusion", type=click.Choice(["logits", "probs"]), default="logits", show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Default: 4 (CoCoOp 1).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Prompt learning rate. Default: 0.0035 (CoCoOp 0.002).")
@click.option("--head-lr-mult", type=click.FloatRange(min=0, min_open=True), default=6.5, show_default=True,
              help="CAT head lr = lr x this.")
@click.option("--n-ctx", type=click.IntRange(min=1), default=None, help="Context tokens. Default: the method's.")
@click.option("--ctx-init", default=None, help='Context init text ("" = random). Default: the method\'s.')
@click.option("--seed", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--shots", type=click.IntRange(min=1), default=None, help="Default: the store's shots.")
@click.option("--logit-scale", type=click.FloatRange(min=0, min_open=True), default=None,
              help="ITM temperature tau (e.g. 100, real CLIP's). Default: the model's learned value.")
@click.option("--mlflow-uri", default=None, envvar="MLFLOW_TRACKING_URI", show_envvar=True,
              help="Log this run to MLflow (e.g. sqlite:///mlflow.db, http://host:5000).")
@click.option("--experiment", default="dept", show_default=True, help="MLflow experiment (with --mlflow-uri).")
@click.option("--out", default=None, help="Write the results as JSON to this file.")
def train_cmd(features, dataset, method, dept, loss_weight, fusion_weight, fusion, epochs, batch_size, lr,
              head_lr_mult, n_ctx, ctx_init, seed, shots, logit_scale, mlflow_uri, experiment, out):
    """Train and evaluate one configuration on cached features (no Tune): prints test base / new / HM."""
    import tempfile
    from dataclasses import asdict

    from pipelines.spaces import Hyperparameters
    from pipelines.trial import STATE_FILE, run_trial
    from pipelines.tune import make_context

    out_path = _check_out(out)
    tracker = None
    if mlflow_uri:
        from pipelines.tracking import Tracker, check_tracking_uri

        check_tracking_uri(mlflow_uri)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    ctx = make_context(features, dataset, shots=[shots], seeds=[seed], num_threads=torch.get_num_threads(),
                       device=device)
    hp = Hyperparameters(
        method=method, dept=dept, loss_weight=loss_weight, fusion_weight=fusion_weight, fusion=fusion,
        epochs=epochs, batch_size=batch_size, lr=lr, head_lr_mult=head_lr_mult, n_ctx=n_ctx, ctx_init=ctx_init,
        shots=shots, logit_scale=logit_scale, seed=seed,
    ).resolved([ctx.store_shots] if ctx.store_shots > 0 else [16])
    if mlflow_uri:
        tracker = Tracker(mlflow_uri, experiment)
    history: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="dept-train-") as tmp:
        final = run_trial(hp, ctx, on_epoch=history.append, state_dir=tmp)
        run_id = None
        if tracker is not None:
            from pipelines.tracking import log_train_run

            run_id = log_train_run(tracker, hp, ctx.tags(), history, final, Path(tmp) / STATE_FILE)
    click.echo(f"{dataset} {method}{'+DePT' if dept else ''} seed {seed}: base {final['test_base_acc']:.2f}  "
               f"new {final['test_new_acc']:.2f}  HM {final['test_hm']:.2f}  (test; val HM {final['val_hm']:.2f})")
    if run_id:
        click.echo(f"MLflow run {run_id} in experiment {experiment!r} at {mlflow_uri}")
    if out_path is not None:
        doc = {
            "dataset": dataset,
            "hyperparameters": asdict(hp),
            "features": ctx.tags(),
            "test": {k: final[k] for k in ("test_base_acc", "test_new_acc", "test_hm")},
            "val": {k: final[k] for k in ("val_base_acc", "val_new_acc", "val_hm")},
            "fusion_sweep": {k: v for k, v in final.items() if k.startswith("sweep_")},
            "history": history + [{k: v for k, v in final.items()
                                   if not k.startswith(("test_", "sweep_")) and k not in ("final", "train_seconds")}],
            "mlflow_run_id": run_id,
        }
        _write_atomic(out_path, json.dumps(doc, indent=1) + "\n")
        click.echo(f"wrote {out_path}")


def _space_help() -> str:
    try:
        from tune_spaces import space_names

        return ", ".join(space_names())
    except Exception:  # help text only
        return "?"


@click.command("tune")
@click.option("--features", required=True, help="Feature store model folder (the URL featurize printed).")
@click.option("--dataset", required=True, help="A dataset in the store, or 'all' (one Tune experiment each, in turn).")
@click.option("--space", default="smoke", show_default=True, help=f"Search space: a shipped name ({_space_help()}) or a .yaml path.")
@click.option("--method", "methods", type=METHOD_CHOICE, multiple=True,
              help="Only these methods (repeatable); replaces the space's method values.")
@click.option("--objective", type=click.Choice(["val", "pseudo-new"]), default=None,
              help="Selection objective; default: the space's (val).")
@click.option("--num-samples", type=click.IntRange(min=1), default=None, help="Override the space's num_samples.")
@click.option("--gpus-per-trial", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option("--cpus-per-trial", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--max-concurrent", type=click.IntRange(min=1), default=None, help="Most trials at once (default: as resources allow).")
@click.option("--max-failures", type=click.IntRange(min=0), default=2, show_default=True, help="Retries of a failed trial.")
@click.option("--ray-address", default=None, help="Existing Ray cluster (default: start a local one).")
@click.option("--storage", default=None, help="Tune storage: folder or URL (s3://...). Default ./runs/tune.")
@click.option("--resume", is_flag=True, help="Continue an interrupted experiment (finished trials are not rerun).")
@click.option("--mlflow-uri", default=None, envvar="MLFLOW_TRACKING_URI", show_envvar=True,
              help="Default: sqlite:///mlflow.db in the working folder.")
@click.option("--experiment", default="dept", show_default=True, help="MLflow experiment and Tune folder name.")
def tune_cmd(features, dataset, space, methods, objective, num_samples, gpus_per_trial, cpus_per_trial,
             max_concurrent, max_failures, ray_address, storage, resume, mlflow_uri, experiment):
    """Tune DePT trials with Ray Tune over cached features; every trial tracked in MLflow."""
    from pipelines.tune import TuneOptions, best_table, run_tune

    opts = TuneOptions(
        features=features, dataset=dataset, space=space, experiment=experiment, num_samples=num_samples,
        methods=tuple(methods), objective=objective, gpus_per_trial=gpus_per_trial, cpus_per_trial=cpus_per_trial,
        max_concurrent=max_concurrent, max_failures=max_failures, ray_address=ray_address, storage=storage,
        resume=resume, mlflow_uri=mlflow_uri,
    )
    outcomes = run_tune(opts, progress=click.echo)
    from pipelines.spaces import load_space

    metric = load_space(space).with_overrides(objective=objective).metric
    click.echo("")
    click.echo(f"best configuration per dataset (selected on {metric}; test numbers are mean over seeds):")
    click.echo(best_table(outcomes, metric))
    failed = [o.dataset for o in outcomes if o.records and o.count("error") == len(o.records)]
    if failed:
        raise click.ClickException(f"every trial of {', '.join(failed)} failed; the error of each is in the "
                                   "'error' tag of its MLflow run")


@click.command("report")
@click.option("--mlflow-uri", default=None, envvar="MLFLOW_TRACKING_URI", show_envvar=True,
              help="Default: sqlite:///mlflow.db in the working folder.")
@click.option("--experiment", default="dept", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["md", "csv"]), default="md", show_default=True)
@click.option("--out", default=None, help="Write to this file instead of printing.")
def report_cmd(mlflow_uri, experiment, fmt, out):
    """The paper-style base-to-new table of an MLflow experiment, beside the published numbers."""
    from pipelines.report import ReportError, make_report
    from pipelines.tracking import check_tracking_uri, default_tracking_uri

    out_path = _check_out(out)
    uri = mlflow_uri or default_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise ReportError(f"no MLflow store at {uri} (nothing tracked there yet)")
    check_tracking_uri(uri)
    text = make_report(uri, experiment, fmt)
    if out_path is None:
        click.echo(text, nl=False)
    else:
        _write_atomic(out_path, text)
        click.echo(f"wrote {out_path}")


COMMANDS = [train_cmd, tune_cmd, report_cmd]
