"""CLI command ``train``: one run on cached features, no Tune."""
from __future__ import annotations

import json
from pathlib import Path

import click

from dept.protocols import BASE_TO_NEW
from pipelines.cli._common import check_out, feature_store_options, protocol_dataset, protocol_options, write_atomic
from pipelines.cli._compute import compute_options
from pipelines.trial.settings import click_options


@click.command("train")
@feature_store_options
@click.option("--dataset", default=None, help="Dataset name in the store (base-to-new).")
@protocol_options
@click_options  # every trial setting: pipelines.trial.settings
@compute_options
@click.option("--mlflow-uri", default=None, envvar="MLFLOW_TRACKING_URI", show_envvar=True,
              help="Log this run to MLflow (e.g. sqlite:///mlflow.db, http://host:5000).")
@click.option("--experiment", default="dept", show_default=True, help="MLflow experiment (with --mlflow-uri).")
@click.option("--out", default=None, help="Write the results as JSON to this file.")
def train_cmd(features, model, pretrained, dataset, protocol, source, targets, precision, compile_mode, mlflow_uri,
              experiment, out, **settings):
    """Train and evaluate one configuration on cached features (no Tune): prints test base / new / HM."""
    import dataclasses
    import tempfile
    from dataclasses import asdict

    from dept.config import resolve_precision
    from pipelines.trial.context import make_context
    from pipelines.trial.plan import STATE_FILE, check_finite, run_trial
    from pipelines.trial.settings import Hyperparameters

    dataset, names = protocol_dataset(protocol, dataset, source, targets)
    out_path = check_out(out)
    tracker = None
    if mlflow_uri:
        from pipelines.tracking.client import Tracker, check_tracking_uri

        check_tracking_uri(mlflow_uri)
    hp = Hyperparameters(**{k: v for k, v in settings.items() if v is not None})  # not given: the default
    ctx = make_context(features, dataset, shots=[hp.shots], seeds=[hp.seed], model=model, pretrained=pretrained,
                       protocol=protocol, targets=names)
    import torch  # here: every check above answers without it

    device = "cuda" if torch.cuda.is_available() else "cpu"
    ctx = dataclasses.replace(ctx, device=device, num_threads=torch.get_num_threads(),
                              precision=resolve_precision(precision, device), compile=compile_mode)
    hp = hp.resolved([ctx.store_shots] if ctx.store_shots > 0 else [16])
    if protocol != BASE_TO_NEW:
        from pipelines.trial.targets import check_class_specific

        check_class_specific(protocol, ctx.targets, bool(hp.class_specific))  # a ValueError: one line
    if mlflow_uri:
        tracker = Tracker(mlflow_uri, experiment)
    history: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="dept-train-") as tmp:
        def on_epoch(metrics: dict) -> None:
            check_finite(metrics)  # a diverged run stops at that epoch, in one line
            history.append(metrics)

        final = run_trial(hp, ctx, on_epoch=on_epoch, state_dir=tmp)
        check_finite(final)
        run_id = None
        if tracker is not None:
            from pipelines.tracking.client import log_train_run

            run_id = log_train_run(tracker, hp, ctx.tags(), history, final, Path(tmp) / STATE_FILE)
    name = f"{dataset} {hp.method}{'+DePT' if hp.dept else ''} seed {hp.seed}"
    if protocol == BASE_TO_NEW:
        click.echo(f"{name}: base {final['test_base_acc']:.2f}  new {final['test_new_acc']:.2f}  "
                   f"HM {final['test_hm']:.2f}  (test; val HM {final['val_hm']:.2f})")
    else:
        per_target = "  ".join(f"{t.dataset} {final[f'test_acc/{t.dataset}']:.2f}" for t in ctx.targets)
        click.echo(f"{name} ({protocol}): source {final['test_acc']:.2f}  {per_target}  target average "
                   f"{final['test_target_avg']:.2f}  (test; val {final['val_acc']:.2f})")
    if run_id:
        from pipelines.secrets import mask_uri

        click.echo(f"MLflow run {run_id} in experiment {experiment!r} at {mask_uri(mlflow_uri)}")
    if out_path is not None:
        doc = {
            "dataset": dataset,
            "hyperparameters": {**asdict(hp), **hp.applied_dept()},
            "features": ctx.tags(),
            "protocol": protocol,
            "test": {k: v for k, v in final.items() if k.startswith("test_")},
            "val": {k: v for k, v in final.items() if k.startswith("val_")},
            "fusion_sweep": {k: v for k, v in final.items() if k.startswith("sweep_")},
            "history": history + [{k: v for k, v in final.items()
                                   if not k.startswith(("test_", "sweep_")) and k not in ("final", "train_seconds")}],
            "mlflow_run_id": run_id,
        }
        write_atomic(out_path, json.dumps(doc, indent=1) + "\n")
        click.echo(f"wrote {out_path}")


COMMANDS = [train_cmd]
