"""Planning the featurize stage: its config, the shards of every dataset, the manifest header. Everything
that can be checked is checked here, before Ray starts."""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field

from dept.config import CROP_SCALE
from dept.datasets import dataset_names, draw_few_shot, load_custom_dataset, load_dataset, locate
from dept.weights import file_sha256
from pipelines.paths import check_folder
from pipelines.store import (
    MANIFEST,
    SPLITS,
    STORE_FORMAT,
    DatasetFolder,
    Manifest,
    StoreError,
    join_url,
    load_manifest,
    sha256_json,
    shard_name,
)

log = logging.getLogger(__name__)

ON_ERROR = ("fail", "skip")


class FeaturizeError(ValueError):
    """A featurize request that cannot be carried out as asked; the message is one line."""


@dataclass
class FeaturizeConfig:
    """Everything ``dept-pipeline featurize`` takes. Defaults are the paper's setting (ViT-B/16 OpenAI weights,
    16 shots, seeds 1-3) with one augmented view per training epoch (10)."""

    out: str
    datasets: tuple[str, ...] = ()  # known dataset names under data_root
    data_root: str | None = None
    dataset_dirs: tuple[str, ...] = ()  # custom datasets: DIR/split.json + DIR/images/
    model: str = "ViT-B-16"
    pretrained: str | None = "openai"
    views: int = 10  # augmented training views per few-shot train image (view 0, the test transform, is extra)
    shots: int = 16  # per class; 0 = every train (and val) image
    seeds: tuple[int, ...] = (1, 2, 3)
    view_seed: int = 0  # seed of the training-view augmentation (independent of the few-shot seeds)
    crop_scale_min: float = CROP_SCALE[0]  # smallest random-resized-crop area fraction of the training views
    batch_size: int = 64  # images per encoder call
    workers: int = 1  # encoder actors (model replicas)
    gpus_per_worker: float | None = None  # None: 1 when the Ray cluster has GPUs, else 0
    cpus_per_worker: float = 1.0
    worker_resources: dict[str, float] = field(default_factory=dict)  # extra Ray resources per encoder actor
    images_per_shard: int = 512  # commit / resume unit (images; a train image carries all its views)
    on_error: str = "fail"  # unreadable image: "fail" the run, or "skip" it and record it in the manifest
    ray_address: str | None = None
    worker_start_timeout_s: float = 600.0
    progress: bool = True

    def validate(self) -> None:
        if not self.datasets and not self.dataset_dirs:
            raise FeaturizeError("nothing to featurize: give --dataset NAME|all (with --data-root) or --dataset-dir DIR")
        if self.datasets and not self.data_root:
            raise FeaturizeError(f"--data-root is required with --dataset ({', '.join(self.datasets)})")
        if self.views < 0:
            raise FeaturizeError(f"--views must be >= 0, got {self.views}")
        if not 0.0 < self.crop_scale_min <= 1.0:
            raise FeaturizeError(f"--crop-scale-min must be in (0, 1], got {self.crop_scale_min}")
        if self.shots < 0:
            raise FeaturizeError(f"--shots must be >= 0 (0 = all), got {self.shots}")
        if self.shots > 0 and not self.seeds:
            raise FeaturizeError("--seeds must name at least one seed")
        for name, value in (("--batch-size", self.batch_size), ("--workers", self.workers),
                            ("--images-per-shard", self.images_per_shard)):
            if value < 1:
                raise FeaturizeError(f"{name} must be >= 1, got {value}")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise FeaturizeError(f"--gpus-per-worker must be >= 0, got {self.gpus_per_worker}")
        if self.cpus_per_worker <= 0:
            raise FeaturizeError(f"--cpus-per-worker must be > 0, got {self.cpus_per_worker}")
        if self.on_error not in ON_ERROR:
            raise FeaturizeError(f"--on-error must be one of {', '.join(ON_ERROR)}, not {self.on_error!r}")


@dataclass
class Unit:
    """One image to decode, with the number of views to make of it (1 for val/test, 1 + K for train)."""

    shard: tuple[int, str]  # (dataset index, shard file name)
    order: int  # position in its shard (rows are written in split-file order)
    split: str
    image_id: str
    path: str
    label: int
    classname: str
    n_views: int


@dataclass
class ShardPlan:
    name: str
    split: str
    units: list[Unit]

    @property
    def rows(self) -> int:
        return sum(u.n_views for u in self.units)


@dataclass
class DatasetPlan:
    name: str
    store: DatasetFolder
    header: Manifest  # the settings; results (rows, skipped, shards) empty, complete false
    fewshot: dict
    shards: list[ShardPlan]
    pending: list[ShardPlan]
    complete: bool  # a complete manifest of these settings exists and every shard is present and intact
    damaged: list[str] = field(default_factory=list)  # present shards that failed their check: removed, re-encoded


@dataclass
class DatasetResult:
    name: str
    url: str
    encoded: int  # rows (image views) encoded by this run
    shards_skipped: int  # shards already present from an earlier run
    rows: dict[str, int]
    skipped_images: int
    fingerprint: str


@dataclass
class FeaturizeResult:
    model_url: str  # <out>/<model>/<weights>: what readers and `tune --features` take
    identity: dict
    datasets: list[DatasetResult]

    @property
    def encoded(self) -> int:
        return sum(d.encoded for d in self.datasets)


def load_splits(cfg: FeaturizeConfig) -> list:
    names: list[str] = []
    for name in cfg.datasets:
        if name.lower() != "all":
            names.append(name)
            continue
        # 'all' means every supported dataset that is downloaded: the missing ones are named and skipped (a dataset
        # asked for by name is still an error when missing).
        found = {n: locate(n, cfg.data_root) for n in dataset_names()}
        present = [n for n, (ok, _) in found.items() if ok]
        if not present:
            raise FeaturizeError(f"--dataset all: none of the {len(found)} supported datasets is under "
                                 f"{os.path.abspath(cfg.data_root)} (see `dept-pipeline datasets --data-root`)")
        for n, (ok, path) in found.items():
            if not ok:
                log.warning("--dataset all: skipping %s, not found: %s", n, path)
        names.extend(present)
    out = [load_dataset(n, cfg.data_root) for n in dict.fromkeys(names)]
    out += [load_custom_dataset(d) for d in cfg.dataset_dirs]
    seen: dict[str, str] = {}
    for s in out:
        if s.name in seen:
            raise FeaturizeError(f"two datasets named {s.name!r} ({seen[s.name]} and {s.split_file}); "
                                 "store folders are per dataset name")
        seen[s.name] = s.split_file
    return out


def _unique(items: list, name: str, split: str) -> list:
    """Items with distinct image paths, first occurrence kept: the store holds one row per (image, split, view)."""
    seen: set[str] = set()
    out = [it for it in items if not (it.impath in seen or seen.add(it.impath))]
    if len(out) < len(items):
        log.warning("%s/%s: %d duplicate image entries ignored", name, split, len(items) - len(out))
    return out


def _header(cfg: FeaturizeConfig, splits, clip, images: dict[str, int], fewshot_sha256: str) -> Manifest:
    from dept.transforms import describe_test_transform, describe_train_view  # here: torchvision, for the header only

    header = Manifest(
        format=STORE_FORMAT,
        dataset=splits.name,
        model=clip.model_name,
        pretrained=clip.pretrained,
        weights_id=clip.weights_id,
        open_clip_version=clip.identity["open_clip_version"],
        feature_dim=int(clip.embed_dim),
        image_size=int(clip.image_size),
        mean=tuple(float(x) for x in clip.mean),
        std=tuple(float(x) for x in clip.std),
        transforms={"test": describe_test_transform(clip.image_size),
                    "train_view": describe_train_view(cfg.view_seed, cfg.crop_scale_min)},
        views=int(cfg.views),
        shots=int(cfg.shots),
        val_shots=min(int(cfg.shots), 4) if cfg.shots > 0 else 0,
        seeds=tuple(int(s) for s in cfg.seeds) if cfg.shots > 0 else (),
        num_classes=splits.num_classes,
        classnames=tuple(splits.classnames),
        label_to_imagenet=tuple(splits.label_to_imagenet) if splits.label_to_imagenet is not None else None,
        target_of=splits.target_of.as_dict() if splits.target_of is not None else None,
        split_files=tuple(splits.split_files),
        split_sha256=tuple({"file": f.replace("\\", "/").rsplit("/", 1)[-1], "sha256": file_sha256(f)}
                           for f in splits.split_files),
        image_root=splits.image_root,
        images_per_shard=int(cfg.images_per_shard),
        images=images,
        fewshot_sha256=fewshot_sha256,
        complete=False,
    )
    return dataclasses.replace(header, config_fingerprint=header.settings_fingerprint())


def plan_dataset(cfg: FeaturizeConfig, index: int, splits, clip, model_url: str) -> DatasetPlan:
    name = splits.name
    per_split = {s: _unique(getattr(splits, s), name, s) for s in SPLITS}
    draws: dict[str, dict[str, list[str]]] = {}
    if cfg.shots > 0:
        chosen: set[str] = set()
        for seed in cfg.seeds:
            train, val = draw_few_shot(splits, cfg.shots, int(seed))
            draws[str(seed)] = {"train": [it.impath for it in train], "val": [it.impath for it in val]}
            chosen.update(draws[str(seed)]["train"])
        per_split["train"] = [it for it in per_split["train"] if it.impath in chosen]
    fewshot = {"dataset": name, "shots": int(cfg.shots), "val_shots": min(cfg.shots, 4) if cfg.shots > 0 else 0,
               "seeds": [int(s) for s in cfg.seeds] if cfg.shots > 0 else [], "draws": draws,
               "note": "shots 0: every train and val image is used" if cfg.shots == 0 else
               "CoOp's draw: per seed, train then val (min(shots, 4)) per class; image ids = paths under the image root"}

    header = _header(cfg, splits, clip, {s: len(per_split[s]) for s in SPLITS}, sha256_json(fewshot))

    shards: list[ShardPlan] = []
    for split in SPLITS:
        n_views = 1 + cfg.views if split == "train" else 1
        items = per_split[split]
        for k in range(math.ceil(len(items) / cfg.images_per_shard)):
            sname = shard_name(split, k)
            chunk = items[k * cfg.images_per_shard:(k + 1) * cfg.images_per_shard]
            units = [Unit((index, sname), j, split, it.impath, os.path.abspath(splits.image_path(it)), int(it.label),
                          it.classname, n_views) for j, it in enumerate(chunk)]
            shards.append(ShardPlan(sname, split, units))

    store = DatasetFolder(join_url(model_url, name))
    check_folder(store.url, "--out")  # a file in the way is one line, not a failed read below
    present = set(store.shard_names())
    try:
        existing = load_manifest(store, require_complete=False)
        existing.check_identity(clip.identity, store.url)
    except FileNotFoundError:
        existing = None
    except StoreError as e:  # unreadable, old format, another model
        raise FeaturizeError(f"{e}; use another --out" if "--out" not in str(e) else str(e)) from None
    if existing is None and present:
        raise FeaturizeError(f"{store.url} holds shard files but no {MANIFEST} (not written by featurize, or "
                             "its manifest was removed); use another --out")
    if existing is not None and existing.config_fingerprint != header.config_fingerprint:
        raise FeaturizeError(
            f"{store.url} holds features made with other settings ({existing.settings_diff(header)}); "
            "use another --out or the same settings"
        )
    planned = {s.name for s in shards}
    stray = sorted(present - planned)
    if stray:
        raise FeaturizeError(f"{store.url} holds shard files this plan does not make ({stray[0]}, ...); use another --out")
    damaged = _damaged_shards(store, [s for s in shards if s.name in present], existing, cfg.views)
    pending = [s for s in shards if s.name not in present or s.name in damaged]
    complete = bool(existing is not None and existing.complete and not pending)
    return DatasetPlan(name, store, header, fewshot, shards, pending, complete, damaged)


def _damaged_shards(store: DatasetFolder, present: list[ShardPlan], existing: Manifest | None, views: int) -> list[str]:
    """The present shards that a rerun must not skip: unreadable, or not the rows / size / sha256 recorded when
    they were written (a complete manifest records them; a killed run's shards are checked by their footer)."""
    recorded = existing.shards if existing is not None else {}
    damaged = []
    for s in present:
        reason, _ = store.check_shard(s.name, s.rows, recorded.get(s.name),
                                      skipped_views=1 + views if s.split == "train" else 1)
        if reason is not None:
            log.warning("%s/%s is damaged (%s); it will be encoded again", store.url, s.name, reason)
            damaged.append(s.name)
    return damaged
