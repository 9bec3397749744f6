"""CLI commands: ``datasets``, ``demo-data``, ``featurize``."""
from __future__ import annotations

import signal
import sys

import click

from pipelines.cli._common import rerun_line


def _seeds(ctx, param, value: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in str(value).replace(" ", "").split(",") if s != "")
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if len(set(seeds)) != len(seeds):
        raise click.BadParameter(f"repeated seed in {value!r}")
    return seeds


def _shots(ctx, param, value: str) -> int:
    if str(value).lower() == "all":
        return 0
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"expected an integer or 'all', got {value!r}") from None


def _gpus(ctx, param, value: str) -> float | None:
    if str(value).lower() == "auto":
        return None
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(f"expected a number or 'auto', got {value!r}") from None


def _resources(ctx, param, values: tuple[str, ...]) -> dict[str, float]:
    out: dict[str, float] = {}
    for v in values:
        name, sep, amount = v.partition("=")
        try:
            out[name] = float(amount) if sep else 1.0
        except ValueError:
            raise click.BadParameter(f"expected NAME=AMOUNT, got {v!r}") from None
        if not name:
            raise click.BadParameter(f"expected NAME=AMOUNT, got {v!r}")
    return out


@click.command("datasets")
@click.option("--data-root", required=True, type=click.Path(file_okay=False), help="Folder holding the datasets (CoOp's DATASETS.md layout).")
def datasets_cmd(data_root: str) -> None:
    """List every supported dataset as found / missing under DATA_ROOT, with the exact path looked for."""
    from dept.datasets import dataset_names, locate

    names = dataset_names()
    width = max(len(n) for n in names)
    found = 0
    for name in names:
        ok, path = locate(name, data_root)
        found += ok
        click.echo(f"{name:<{width}}  {'found  ' if ok else 'missing'}  {path}")
    click.echo(f"{found} of {len(names)} datasets found under {data_root}")


@click.command("demo-data")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write (custom-dataset layout).")
@click.option("--num-classes", default=10, show_default=True, type=int, help="Number of classes.")
@click.option("--train-per-class", default=20, show_default=True, type=int, help="Train images per class.")
@click.option("--val-per-class", default=4, show_default=True, type=int, help="Validation images per class.")
@click.option("--test-per-class", default=10, show_default=True, type=int, help="Test images per class.")
@click.option("--image-size", default=64, show_default=True, type=int, help="Side of the square images, pixels.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the generated images.")
def demo_data_cmd(out: str, num_classes: int, train_per_class: int, val_per_class: int, test_per_class: int,
                  image_size: int, seed: int) -> None:
    """Write a small generated dataset (DIR/split.json + DIR/images/) usable with `featurize --dataset-dir DIR`."""
    from dept.datasets.demo import write_demo_dataset
    from pipelines.paths import check_writable_folder

    check_writable_folder(out, "--out")
    path = write_demo_dataset(out, num_classes=num_classes, train_per_class=train_per_class,
                              val_per_class=val_per_class, test_per_class=test_per_class,
                              image_size=image_size, seed=seed)
    click.echo(f"demo dataset written to {path}")


@click.command("featurize")
@click.option("--data-root", type=click.Path(file_okay=False), help="Folder holding the datasets (for --dataset).")
@click.option("--dataset", "datasets", multiple=True, metavar="NAME|all",
              help="A supported dataset (see `dept-pipeline datasets`), or 'all'. Repeatable.")
@click.option("--dataset-dir", "dataset_dirs", multiple=True, type=click.Path(file_okay=False),
              help="A custom dataset folder: DIR/split.json (CoOp format) + DIR/images/. Its name is the folder name. Repeatable.")
@click.option("--out", required=True, help="Feature store root: a local folder, memory://..., s3://... (with s3fs).")
@click.option("--model", default="ViT-B-16", show_default=True, help="open_clip architecture.")
@click.option("--pretrained", default="openai", show_default=True,
              help="open_clip pretrained tag, a local checkpoint path, or 'none' (random weights).")
@click.option("--views", default=10, show_default=True, type=int,
              help="Augmented views per few-shot train image (random resized crop + flip), besides view 0 (test "
                   "transform). The paper augments afresh every epoch; the default gives one view per epoch of its "
                   "10-epoch schedule.")
@click.option("--shots", default="16", show_default=True, callback=_shots, help="Shots per class, or 'all' (or 0) for every train image.")
@click.option("--seeds", default="1,2,3", show_default=True, callback=_seeds, help="Few-shot draw seeds, comma-separated.")
@click.option("--view-seed", default=0, show_default=True, type=int, help="Seed of the training-view augmentation.")
@click.option("--crop-scale-min", default=0.08, show_default=True, type=float,
              help="Smallest random-resized-crop area fraction of the training views (the papers' 0.08 suits photos; "
                   "small objects on a background, as in the miniature, need larger crops).")
@click.option("--batch-size", default=64, show_default=True, type=int, help="Images per encoder call.")
@click.option("--workers", default=1, show_default=True, type=int, help="Encoder actors (model replicas) in the Ray cluster.")
@click.option("--gpus-per-worker", default="auto", show_default=True, callback=_gpus,
              help="GPUs per encoder actor (fractions allowed); 'auto' = 1 when the Ray cluster has GPUs, else 0.")
@click.option("--cpus-per-worker", default=1.0, show_default=True, type=float, help="CPUs per encoder actor.")
@click.option("--worker-resource", "worker_resources", multiple=True, callback=_resources, metavar="NAME=AMOUNT",
              help="Extra Ray resource each encoder actor requires (e.g. to pin to a node type). Repeatable.")
@click.option("--images-per-shard", default=512, show_default=True, type=int,
              help="Images per Parquet shard, the unit a rerun skips or redoes.")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="Unreadable image: stop, or skip it and record it in the manifest.")
@click.option("--ray-address", default=None,
              help="Ray cluster to join (default: $RAY_ADDRESS, as `ray job submit` sets it; else a new local Ray).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def featurize_cmd(data_root, datasets, dataset_dirs, out, model, pretrained, views, shots, seeds, view_seed, crop_scale_min,
                  batch_size, workers, gpus_per_worker, cpus_per_worker, worker_resources, images_per_shard,
                  on_error, ray_address, no_progress) -> None:
    """Compute frozen CLIP image features of datasets with Ray and write them to a Parquet feature store.

    Writes OUT/<model>/<weights>/<dataset>/: val and test images at view 0 (test transform), the union of the
    few-shot train draws at views 0..K, _fewshot.json and _manifest.json. Rerunning skips finished shards; an
    interrupted run resumes.
    """
    from pipelines.featurize import FeaturizeConfig, featurize
    from pipelines.interrupts import StopSignals
    from pipelines.paths import check_writable_folder
    from pipelines.ray_runtime import check_cluster

    check_writable_folder(out, "--out")  # before any model load or Ray start
    cfg = FeaturizeConfig(
        out=out, datasets=tuple(datasets), data_root=data_root, dataset_dirs=tuple(dataset_dirs), model=model,
        pretrained=pretrained, views=views, shots=shots, seeds=seeds, view_seed=view_seed, crop_scale_min=crop_scale_min,
        batch_size=batch_size,
        workers=workers, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
        worker_resources=worker_resources, images_per_shard=images_per_shard, on_error=on_error,
        ray_address=ray_address, progress=not no_progress,
    )
    signals = StopSignals()
    signals.install()  # a SIGTERM takes Ctrl-C's path: committed shards kept, Ray shut down, the lock released
    try:
        check_cluster(ray_address)  # a named cluster that does not answer: one line, before the store is touched
        result = featurize(cfg)
    except KeyboardInterrupt:
        # Shards are committed whole (written aside, then renamed), so the same command encodes only the rest.
        signals.record(signal.SIGINT)
        click.echo(f"interrupted ({signals.signal_name()}); the shards finished so far are kept, resume with: "
                   f"{rerun_line()}", err=True)
        sys.exit(signals.exit_status())
    finally:
        signals.restore()
    for d in result.datasets:
        rows = ", ".join(f"{k} {d.rows.get(k, 0)}" for k in ("train", "val", "test"))
        note = f", {d.skipped_images} unreadable images skipped" if d.skipped_images else ""
        click.echo(f"{d.name}: {rows} rows; encoded {d.encoded} this run, {d.shards_skipped} shards already done"
                   f"{note}; fingerprint {d.fingerprint[:16]}")
    click.echo(f"features: {result.model_url}")


COMMANDS = [datasets_cmd, demo_data_cmd, featurize_cmd]
