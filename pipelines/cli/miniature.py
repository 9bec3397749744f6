"""CLI commands: ``miniature pretrain``, ``miniature data``, ``miniature zero-shot``."""
from __future__ import annotations

import click


@click.group("miniature")
def miniature_group() -> None:
    """The miniature: a small CLIP pretrained here on generated image-caption pairs, and a shifted downstream
    dataset, so base-to-new and DePT's effect can be measured without downloaded weights."""


@miniature_group.command("pretrain")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for dept-mini-vit.safetensors and pretrain.json.")
@click.option("--minutes", type=float, default=None, help="Time budget; picks the step count from the measured speed.")
@click.option("--steps", type=int, default=None, help="Number of steps (exactly reproducible with the same --seed).")
@click.option("--seed", default=0, show_default=True, type=int, help="Initial weights and the pair stream.")
@click.option("--batch-size", default=128, show_default=True, type=int, help="Image-caption pairs per step.")
@click.option("--lr", default=1e-3, show_default=True, type=float, help="AdamW peak learning rate.")
@click.option("--weight-decay", default=0.1, show_default=True, type=float, help="AdamW weight decay.")
@click.option("--warmup-steps", default=200, show_default=True, type=int,
              help="Linear warmup steps of the learning rate.")
@click.option("--probe-every", default=100, show_default=True, type=int, help="Steps between zero-shot probes.")
@click.option("--logit-scale", type=float, default=None, help="Fix the temperature tau (e.g. 100, as CLIP's) instead of learning it.")
@click.option("--model", default="dept-mini-vit", show_default=True, help="open_clip architecture to pretrain.")
@click.option("--mlflow-uri", default=None, help="Default: sqlite:///mlflow.db in the working folder.")
@click.option("--experiment", default="miniature-pretrain", show_default=True,
              help="MLflow experiment of the pretraining run.")
@click.option("--threads", type=int, default=None, help="torch CPU threads (default: torch's). On a shared CPU, 1 can be much faster.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="tqdm progress bar on stderr.")
def pretrain_cmd(out, minutes, steps, seed, batch_size, lr, weight_decay, warmup_steps, probe_every, logit_scale,
                 model, mlflow_uri, experiment, threads, progress) -> None:
    """Pretrain the miniature CLIP from scratch on generated pairs; log curves to MLflow; write the checkpoint."""
    from pipelines.miniature.pretrain import PretrainConfig, pretrain

    result = pretrain(PretrainConfig(
        out=out, minutes=minutes, steps=steps, seed=seed, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        warmup_steps=warmup_steps, probe_every=probe_every, logit_scale=logit_scale, model=model,
        mlflow_uri=mlflow_uri, experiment=experiment, threads=threads, progress=progress,
    ))
    r = result.record
    f = r["final"]
    click.echo(
        f"{r['steps']} steps ({r['pairs_seen']} pairs, {r['wall_seconds'] / 60:.1f} min): loss {f['loss']:.3f}, "
        f"logit scale {f['logit_scale']:.1f}, zero-shot seen {f['zs_seen']:.1f} %, held-out {f['zs_heldout']:.1f} % "
        f"(chance {r['probe']['chance']:.1f} %)"
    )
    click.echo(f"checkpoint: {result.checkpoint}  (use --model {r['model']} --pretrained {result.checkpoint})")
    click.echo(f"MLflow run {r['mlflow']['run_id']} in experiment {experiment!r}")


@miniature_group.command("data")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write (custom-dataset layout).")
@click.option("--suite", type=click.Choice(["single", "transfer"]), default="single", show_default=True,
              help="single: one base-to-new dataset; transfer: mini-source and its cross-dataset / domain-generalization "
                   "targets, each in DIR/<name>/.")
@click.option("--split", "split", type=click.Choice(["shared", "disjoint"]), default="disjoint", show_default=True,
              help="shared: base and new share shapes (new colours); disjoint: new classes have unseen shapes. Single only.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the rendered images.")
@click.option("--train-per-class", default=32, show_default=True, type=int, help="Train images per class.")
@click.option("--val-per-class", default=8, show_default=True, type=int, help="Validation images per class.")
@click.option("--test-per-class", default=None, type=int, help="Default: 100 (single), 50 (transfer: the source's).")
@click.option("--target-test-per-class", default=None, type=int, help="Test images per class of each transfer target. Default: 50.")
@click.option("--class-tint", default=0.0, show_default=True, type=click.FloatRange(0, 255),
              help="A class-specific shift: each class's object colour moved by its own fixed RGB offset up to this. Single only.")
@click.pass_context
def data_cmd(ctx, out, suite, split, seed, train_per_class, val_per_class, test_per_class, target_test_per_class, class_tint) -> None:
    """Write the shifted downstream dataset (DIR/split.json + DIR/images/) for `featurize --dataset-dir DIR`,
    or with --suite transfer the transfer suite (DIR/<name>/, targets with DIR/<name>/transfer.json)."""
    from click.core import ParameterSource

    from dept.miniature import DownstreamConfig, MiniatureError, Shift, class_split, write_miniature_dataset
    from pipelines.paths import check_writable_folder

    check_writable_folder(out, "--out")

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)

    if suite == "transfer":
        from dept.miniature import TransferSuiteConfig, write_transfer_suite

        for name in ("split", "class_tint"):
            if given(name):
                raise MiniatureError(f"miniature data: --{name.replace('_', '-')} applies to --suite single only")
        written = write_transfer_suite(out, TransferSuiteConfig(
            seed=seed, train_per_class=train_per_class, val_per_class=val_per_class,
            test_per_class=50 if test_per_class is None else test_per_class,
            target_test_per_class=50 if target_test_per_class is None else target_test_per_class,
        ))
        for d in written:
            click.echo(f"{d.name}: {d.classes} classes, {d.images} images, {d.role}  ({d.path})")
        return
    if target_test_per_class is not None:
        raise MiniatureError("miniature data: --target-test-per-class applies to --suite transfer only")
    path = write_miniature_dataset(out, DownstreamConfig(
        split=split, seed=seed, train_per_class=train_per_class, val_per_class=val_per_class,
        test_per_class=100 if test_per_class is None else test_per_class, shift=Shift(class_tint=class_tint),
    ))
    s = class_split(split)
    click.echo(f"miniature dataset {split!r} ({len(s.base)} base + {len(s.new)} new classes: {s.description}) written to {path}")


@miniature_group.command("zero-shot")
@click.option("--dataset-dir", required=True, type=click.Path(file_okay=False), help="A custom-layout dataset (e.g. from `miniature data`).")
@click.option("--model", default="dept-mini-vit", show_default=True, help="open_clip architecture.")
@click.option("--pretrained", default=None, help="Checkpoint path or tag. Default for dept-mini-vit: the shipped checkpoint.")
@click.option("--template", default="a photo of a {}.", show_default=True,
              help="Class-text prompt; {} is the class name.")
def zero_shot_cmd(dataset_dir, model, pretrained, template) -> None:
    """Zero-shot base / new / HM on a dataset's test split (no feature store, no Ray)."""
    from dept import load_clip
    from dept.miniature import MODEL_NAME, shipped_checkpoint, zero_shot_base_new

    if "{}" not in template:
        raise click.BadParameter(f"the template must contain {{}} for the class name, got {template!r}", param_hint="--template")
    if pretrained is None and model == MODEL_NAME:
        pretrained = str(shipped_checkpoint())
    res = zero_shot_base_new(load_clip(model, pretrained), dataset_dir, template=template)
    click.echo(f"zero-shot {model} ({pretrained or 'random weights'}): base {res['base_acc']:.2f}  new {res['new_acc']:.2f}  "
               f"HM {res['hm']:.2f}  (all classes {res['all_acc']:.2f})")


@miniature_group.command("ship")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, exists=True), help="A finished `miniature pretrain --out` folder.")
@click.option("--assets", default=None, type=click.Path(file_okay=False), help="Default: the package's dept/assets folder.")
def ship_cmd(run_dir, assets) -> None:
    """Ship a pretrained checkpoint with the package (fp16 where features stay within 1e-3), recording its
    pretraining figures and its zero-shot base / new / HM on both downstream class splits."""
    from dept.miniature import ASSETS
    from pipelines.miniature.ship import ship

    record = ship(run_dir, assets or ASSETS)
    click.echo(f"shipped {record['checkpoint']} ({record['dtype']}, {record['checkpoint_bytes'] / 2**20:.1f} MiB) to {assets or ASSETS}")
    for split, r in record["downstream_zero_shot"].items():
        click.echo(f"  zero-shot {split}: base {r['base_acc']:.2f}  new {r['new_acc']:.2f}  HM {r['hm']:.2f}")


COMMANDS = [miniature_group]
