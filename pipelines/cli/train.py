"""CLI command ``train``: one run on cached features, no Tune."""
from __future__ import annotations

import json
from pathlib import Path

import click

from pipelines.cli._common import METHOD_CHOICE, check_out, write_atomic


@click.command("train")
@click.option("--features", required=True, help="Feature store model folder (the URL featurize printed).")
@click.option("--dataset", required=True, help="Dataset name in the store.")
@click.option("--method", type=METHOD_CHOICE, default="coop", show_default=True,
              help="Base prompt method: a name registered in dept.methods (a wrong one lists them).")
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

    from pipelines.tune.runner import make_context
    from pipelines.tune.settings import Hyperparameters
    from pipelines.tune.trial import STATE_FILE, run_trial

    out_path = check_out(out)
    tracker = None
    if mlflow_uri:
        from pipelines.tracking.client import Tracker, check_tracking_uri

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
            from pipelines.tracking.client import log_train_run

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
        write_atomic(out_path, json.dumps(doc, indent=1) + "\n")
        click.echo(f"wrote {out_path}")


COMMANDS = [train_cmd]
