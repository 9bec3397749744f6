"""``featurize``: frozen CLIP image features of datasets, computed once with Ray, written to the Parquet store.

What is encoded per dataset: every val and test image at view 0 (the CLIP test transform), and the union over the
requested seeds of the few-shot train draws at view 0 and at augmented views 1..K (``dept.transforms.train_view``,
deterministic per (view seed, image, view)). The val few-shot draws are a subset of val, already at view 0.

Why Ray Data (and not hand-rolled Ray tasks/actors over shards): featurizing is the textbook streaming batch
inference job -- a CPU-heavy decode/augment stage feeding a GPU-bound model stage. Ray Data runs the decode stage
as CPU tasks spread over the cluster, the encoder as a fixed pool of actors (model loaded once per actor, GPU
when asked), streams blocks between them with backpressure so decoding overlaps encoding and memory stays
bounded, and retries lost workers. What Ray Data does not give is our commit unit: its own writers name files
themselves and would put tensor extension types in the files. So the driver consumes the embeddings
(``iter_batches``; ~2 KB per image, small next to pixels) and commits each deterministic shard to the store as
soon as its last row arrives; a shard's presence under its final name means complete, which is what makes a
rerun skip finished work and a killed run resume without duplicates. Driver-side writes also make ``memory://``
and credentials-on-the-driver object stores work unchanged.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.ray_runtime import ensure_ray
from pipelines.store import (
    FEWSHOT,
    MANIFEST,
    NOT_FINGERPRINTED,
    SPLITS,
    STORE_FORMAT,
    DatasetStore,
    StoreError,
    check_identity,
    content_fingerprint,
    feature_schema,
    join_url,
    model_store_url,
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
    # Smallest random-resized-crop area fraction of the training views: dept.transforms.CROP_SCALE[0] (the papers'
    # 0.08), written out because importing dept here would slow every CLI start (a test keeps them equal).
    crop_scale_min: float = 0.08
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
    store: DatasetStore
    header: dict  # the manifest without the results (rows, skipped, shards)
    fewshot: dict
    shards: list[ShardPlan]
    pending: list[ShardPlan]
    complete: bool  # a complete manifest of these settings exists and every shard is present


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


# ----------------------------------------------------------------------------------------------------------------
# Planning: everything that can be checked is checked here, before Ray starts.


def _load_splits(cfg: FeaturizeConfig) -> list:
    from dept.datasets import dataset_names, load_custom_dataset, load_dataset, locate

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


def _header(cfg: FeaturizeConfig, splits, clip, images: dict[str, int]) -> dict:
    from dept.clip import file_sha256
    from dept.transforms import describe_test_transform, describe_train_view

    return {
        "format": STORE_FORMAT,
        "dataset": splits.name,
        "model": clip.model_name,
        "pretrained": clip.pretrained,
        "weights_id": clip.weights_id,
        "open_clip_version": clip.identity["open_clip_version"],
        "feature_dim": int(clip.embed_dim),
        "image_size": int(clip.image_size),
        "mean": [float(x) for x in clip.mean],
        "std": [float(x) for x in clip.std],
        "transforms": {"test": describe_test_transform(clip.image_size), "train_view": describe_train_view(cfg.view_seed, cfg.crop_scale_min)},
        "views": int(cfg.views),
        "shots": int(cfg.shots),
        "val_shots": min(int(cfg.shots), 4) if cfg.shots > 0 else 0,
        "seeds": [int(s) for s in cfg.seeds] if cfg.shots > 0 else [],
        "num_classes": splits.num_classes,
        "classnames": list(splits.classnames),
        "label_to_imagenet": splits.label_to_imagenet,
        "split_files": list(splits.split_files),
        "split_sha256": [{"file": f.replace("\\", "/").rsplit("/", 1)[-1], "sha256": file_sha256(f)}
                         for f in splits.split_files],
        "image_root": splits.image_root,
        "images_per_shard": int(cfg.images_per_shard),
        "images": images,
        "complete": False,
    }


def _settings_diff(existing: dict, header: dict) -> str:
    """What differs between a store's manifest and this run, short values shown."""
    keys = sorted(k for k in set(header) | set(existing)
                  if k not in NOT_FINGERPRINTED and k not in ("rows", "skipped") and header.get(k) != existing.get(k))

    def show(k: str) -> str:
        a, b = existing.get(k), header.get(k)
        return f"{k} {a!r} in the store, {b!r} now" if len(repr(a)) <= 40 and len(repr(b)) <= 40 else k

    return "; ".join(map(show, keys)) or "store format"


def _plan_dataset(cfg: FeaturizeConfig, index: int, splits, clip, model_url: str) -> DatasetPlan:
    from dept.datasets import draw_few_shot

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

    header = _header(cfg, splits, clip, {s: len(per_split[s]) for s in SPLITS})
    header["fewshot_sha256"] = sha256_json(fewshot)
    header["config_fingerprint"] = content_fingerprint(header)

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

    store = DatasetStore(join_url(model_url, name))
    present = set(store.shard_names())
    try:
        existing = store.read_json(MANIFEST) if store.exists(MANIFEST) else None
    except (ValueError, UnicodeDecodeError) as e:
        raise FeaturizeError(f"unreadable {store.url}/{MANIFEST} ({e}); use another --out") from None
    if existing is None and present:
        raise FeaturizeError(f"{store.url} holds shard files but no {MANIFEST} (not written by featurize, or "
                             "its manifest was removed); use another --out")
    if existing is not None:
        try:
            check_identity(existing, clip.identity, store.url)
        except StoreError as e:
            raise FeaturizeError(str(e)) from None
        if existing.get("config_fingerprint") != header["config_fingerprint"]:
            raise FeaturizeError(
                f"{store.url} holds features made with other settings ({_settings_diff(existing, header)}); "
                "use another --out or the same settings"
            )
    planned = {s.name for s in shards}
    stray = sorted(present - planned)
    if stray:
        raise FeaturizeError(f"{store.url} holds shard files this plan does not make ({stray[0]}, ...); use another --out")
    pending = [s for s in shards if s.name not in present]
    complete = bool(existing and existing.get("complete") is True and not pending)
    return DatasetPlan(name, store, header, fewshot, shards, pending, complete)


# ----------------------------------------------------------------------------------------------------------------
# Ray stages


def decode_images(batch: dict[str, np.ndarray], *, image_size: int, mean, std, view_seed: int,
                  crop_scale_min: float = FeaturizeConfig.crop_scale_min) -> dict[str, np.ndarray]:
    """Decode stage (Ray Data task): one row per (image, view) of pixels; an unreadable image gives one row with
    ``view = -1`` and the error text, so the driver decides (fail or skip) with the file named."""
    from PIL import Image

    from dept.transforms import test_transform, train_view

    to_test = test_transform(image_size, mean, std)
    units, views, errors, pixels = [], [], [], []
    blank = np.zeros((3, image_size, image_size), np.float32)
    for unit, path, image_id, n_views in zip(batch["unit"], batch["path"], batch["image_id"], batch["n_views"]):
        try:
            with Image.open(str(path)) as im:
                im.load()
                img = im.convert("RGB")
            tensors = [to_test(img)] + [
                train_view(img, image_size=image_size, mean=mean, std=std, seed=view_seed, image_id=str(image_id), view=v,
                           crop_scale_min=crop_scale_min)
                for v in range(1, int(n_views))
            ]
        except Exception as e:  # any decode failure makes this one image unreadable; the driver reports it
            msg = " ".join(f"{type(e).__name__}: {e}".split())
            units.append(int(unit)), views.append(-1), errors.append(msg), pixels.append(blank)
            continue
        for v, t in enumerate(tensors):
            units.append(int(unit)), views.append(v), errors.append(""), pixels.append(t.numpy())
    return {
        "unit": np.asarray(units, np.int64),
        "view": np.asarray(views, np.int16),
        "error": np.asarray(errors, dtype=object),
        "pixels": np.stack(pixels) if pixels else np.zeros((0, 3, image_size, image_size), np.float32),
    }


class ClipEncoder:
    """Encoder stage (Ray Data actor): the image tower loaded once per actor, on GPU when one is assigned."""

    def __init__(self, model: str, pretrained: str | None, weights_id: str, use_gpu: bool):
        import ray
        import torch

        from dept.clip import load_clip

        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        # Stored features must equal fp32 encode_image: no TF32 in convolutions (the patch embedding) or matmuls.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        self.clip = load_clip(model, pretrained, device=self.device)
        if self.clip.weights_id != weights_id:
            # e.g. a different file at the same checkpoint path on this node
            raise RuntimeError(f"node {ray.util.get_node_ip_address()}: {pretrained} has weights {self.clip.weights_id}, "
                               f"the driver saw {weights_id}")
        self.node_id = ray.get_runtime_context().get_node_id()
        self.dim = int(self.clip.embed_dim)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        ok = np.asarray([e == "" for e in batch["error"]], dtype=bool)
        emb = np.zeros((len(ok), self.dim), np.float32)
        if ok.any():
            x = torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok], dtype=np.float32)).to(self.device)
            with torch.inference_mode():
                emb[ok] = self.clip.model.encode_image(x).float().cpu().numpy()
        return {
            "unit": batch["unit"],
            "view": batch["view"],
            "error": batch["error"],
            "embedding": emb,
            "node_id": np.asarray([self.node_id] * len(ok), dtype=object),
        }


def _decode_memory_bytes(rows: int, image_size: int) -> int:
    return int(768 * 2**20 + 3 * rows * 3 * image_size * image_size * 4)


def _gpus_per_worker(cfg: FeaturizeConfig) -> float:
    import ray

    if cfg.gpus_per_worker is not None:
        return float(cfg.gpus_per_worker)
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


class _ShardAssembler:
    """Collects embeddings on the driver and commits each shard the moment its last row arrives."""

    def __init__(self, plans: list[DatasetPlan], units: list[Unit], cfg: FeaturizeConfig, dim: int, bar):
        self.plans, self.units, self.cfg, self.dim, self.bar = plans, units, cfg, dim, bar
        self.remaining: dict[tuple[int, str], int] = defaultdict(int)
        for u in units:
            self.remaining[u.shard] += u.n_views
        self.rows: dict[tuple[int, str], list] = defaultdict(list)
        self.nodes: dict[tuple[int, str], set] = defaultdict(set)
        self.skipped: dict[tuple[int, str], list] = defaultdict(list)
        self.encoded = defaultdict(int)  # per dataset index

    def add(self, batch: dict[str, np.ndarray]) -> None:
        done = 0
        for i, unit_index in enumerate(batch["unit"]):
            u = self.units[int(unit_index)]
            err = str(batch["error"][i])
            if err:
                if self.cfg.on_error == "fail":
                    raise FeaturizeError(
                        f"unreadable image {u.path} ({self.plans[u.shard[0]].name}, {u.split}): {err}; "
                        "fix or remove it, or rerun with --on-error skip"
                    )
                log.warning("skipping unreadable image %s: %s", u.path, err)
                self.skipped[u.shard].append({"image_id": u.image_id, "split": u.split, "path": u.path, "error": err})
                self.remaining[u.shard] -= u.n_views
                done += u.n_views
            else:
                self.rows[u.shard].append((u.order, int(batch["view"][i]), u, batch["embedding"][i]))
                self.nodes[u.shard].add(str(batch["node_id"][i]))
                self.remaining[u.shard] -= 1
                self.encoded[u.shard[0]] += 1
                done += 1
            if self.remaining[u.shard] == 0:
                self._commit(u.shard)
        if self.bar is not None:
            self.bar.update(done)

    def _commit(self, key: tuple[int, str]) -> None:
        plan = self.plans[key[0]]
        rows = sorted(self.rows.pop(key, []), key=lambda r: (r[0], r[1]))
        emb = np.stack([r[3] for r in rows]).astype(np.float32) if rows else np.zeros((0, self.dim), np.float32)
        table = pa.Table.from_arrays(
            [
                pa.array([r[2].image_id for r in rows], pa.string()),
                pa.array([r[2].label for r in rows], pa.int32()),
                pa.array([r[2].classname for r in rows], pa.string()),
                pa.array([r[2].split for r in rows], pa.string()),
                pa.array([r[1] for r in rows], pa.int16()),
                pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), self.dim),
            ],
            schema=feature_schema(self.dim),
        )
        meta = {"node_ids": sorted(self.nodes.pop(key, set())), "skipped": self.skipped.pop(key, [])}
        plan.store.write_shard(key[1], table, meta)
        log.debug("committed %s/%s (%d rows)", plan.store.url, key[1], table.num_rows)


def _encode(cfg: FeaturizeConfig, plans: list[DatasetPlan], clip) -> dict[int, int]:
    """Run the Ray Data pipeline over every pending shard; returns rows encoded per dataset index."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    units = [u for p in plans for s in p.pending for u in s.units]
    total = sum(u.n_views for u in units)
    started = ensure_ray(cfg.ray_address)
    try:
        gpus = _gpus_per_worker(cfg)
        ctx = DataContext.get_current()
        saved = ctx.enable_progress_bars, ctx.wait_for_min_actors_s
        ctx.enable_progress_bars = False  # one progress bar: ours, counting images
        # A fixed pool of W model replicas: start encoding once all are up, so work spreads over them (and a
        # cluster that cannot host them fails clearly instead of waiting forever).
        ctx.wait_for_min_actors_s = int(cfg.worker_start_timeout_s)
        try:
            mean_views = total / max(1, len(units))
            decode_units = max(1, round(cfg.batch_size / mean_views))
            items = [{"unit": i, "path": u.path, "image_id": u.image_id, "n_views": u.n_views}
                     for i, u in enumerate(units)]
            ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / decode_units)))
            ds = ds.map_batches(
                decode_images,
                fn_kwargs={"image_size": clip.image_size, "mean": tuple(clip.mean), "std": tuple(clip.std),
                           "view_seed": cfg.view_seed, "crop_scale_min": cfg.crop_scale_min},
                batch_size=decode_units,
                num_cpus=1,
                # Decode tasks hold a batch of pixels several times over (image, views, stacked output): ask Ray
                # for that memory. Differing resource requests also keep Ray Data from fusing this stage into the
                # encoder actors, which would serialise decoding and encoding inside each actor.
                memory=_decode_memory_bytes(decode_units * max(u.n_views for u in units), clip.image_size),
            )
            # Work spreads over nodes through Ray Data itself: decode tasks are scheduled SPREAD, and each decoded
            # block (tens of MB at 224 px) stays in the object store of its node, whose encoder actor takes it
            # (actor locality), so pixels do not cross the network.
            remote_args: dict[str, Any] = {}
            if cfg.worker_resources:
                remote_args["resources"] = dict(cfg.worker_resources)
            ds = ds.map_batches(
                ClipEncoder,
                fn_constructor_kwargs={"model": clip.model_name,
                                       "pretrained": None if clip.pretrained == "none" else clip.pretrained,
                                       "weights_id": clip.weights_id, "use_gpu": gpus > 0},
                compute=ActorPoolStrategy(size=cfg.workers),
                batch_size=cfg.batch_size,
                num_cpus=cfg.cpus_per_worker,
                num_gpus=gpus,
                **remote_args,
            )
            bar = None
            if cfg.progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=total, unit="img", desc="featurize", dynamic_ncols=True)
            assembler = _ShardAssembler(plans, units, cfg, int(clip.embed_dim), bar)
            try:
                for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    assembler.add(batch)
            except ray.exceptions.GetTimeoutError:
                need = {"CPU": cfg.cpus_per_worker, "GPU": gpus, **cfg.worker_resources}
                raise FeaturizeError(
                    f"could not start {cfg.workers} encoder workers ({need} each) within "
                    f"{cfg.worker_start_timeout_s:.0f}s; Ray cluster resources: {ray.cluster_resources()}"
                ) from None
            finally:
                if bar is not None:
                    bar.close()
            left = {k: v for k, v in assembler.remaining.items() if v}
            if left:
                raise RuntimeError(f"Ray Data pipeline ended with {len(left)} shards incomplete")
            return dict(assembler.encoded)
        finally:
            ctx.enable_progress_bars, ctx.wait_for_min_actors_s = saved
    finally:
        if started:
            ray.shutdown()


# ----------------------------------------------------------------------------------------------------------------
# Finishing: the manifest, written last


def _finalize(plan: DatasetPlan, cfg: FeaturizeConfig) -> dict:
    store = plan.store
    present = set(store.shard_names())
    missing = [s.name for s in plan.shards if s.name not in present]
    if missing:
        raise RuntimeError(f"{store.url}: shards missing after encoding: {missing[:3]}")
    rows = {s: 0 for s in SPLITS}
    skipped: list[dict] = []
    shards: dict[str, dict] = {}
    expected = {s: 0 for s in SPLITS}
    for s in plan.shards:
        n, meta = store.shard_meta(s.name)
        rows[s.split] += n
        sk = meta.get("skipped", [])
        skipped.extend(sk)
        shards[s.name] = {"rows": n, "node_ids": meta.get("node_ids", []), "skipped": len(sk)}
        n_views = 1 + cfg.views if s.split == "train" else 1
        expected[s.split] += s.rows - len(sk) * n_views
    if rows != expected:
        raise RuntimeError(f"{store.url}: row counts {rows} differ from the plan {expected}")
    manifest = dict(plan.header)
    manifest.update(
        rows=rows,
        skipped=sorted(skipped, key=lambda d: (d["split"], d["image_id"])),
        shards=shards,
        on_error=cfg.on_error,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        complete=True,
    )
    manifest["fingerprint"] = content_fingerprint(manifest)
    store.write_json(MANIFEST, manifest)
    store.remove_stale_temporaries()
    return manifest


def featurize(cfg: FeaturizeConfig) -> FeaturizeResult:
    """Featurize the datasets of ``cfg`` into ``cfg.out``; idempotent and resumable (see module docstring)."""
    from dept.clip import is_local_checkpoint, load_clip

    cfg.validate()
    pretrained = cfg.pretrained
    if is_local_checkpoint(pretrained):
        # Ray workers do not share the driver's working directory: pass them an absolute path.
        pretrained = os.path.abspath(os.path.expanduser(str(pretrained)))
    splits_list = _load_splits(cfg)  # DatasetError (one line) for unknown names, missing roots/files/images
    # The driver needs the model's identity, feature size and transform settings; the image tower is not kept.
    clip = load_clip(cfg.model, pretrained, text_only=True)
    model_url = model_store_url(cfg.out, clip.model_name, clip.weights_id)
    plans = [_plan_dataset(cfg, i, s, clip, model_url) for i, s in enumerate(splits_list)]

    with contextlib.ExitStack() as locks:
        for p in plans:
            if not p.complete:
                locks.enter_context(p.store.writer_lock())  # StoreError (one line) if another run writes there
        return _write_plans(cfg, plans, clip, model_url)


def _write_plans(cfg: FeaturizeConfig, plans: list[DatasetPlan], clip, model_url: str) -> FeaturizeResult:
    for p in plans:
        if not p.complete:
            # The manifest goes first, marked incomplete: a rerun with other settings is refused before it
            # writes anything, and no reader takes the folder for a finished store.
            if not p.store.exists(MANIFEST) or p.store.read_json(MANIFEST).get("complete") is True:
                p.store.write_json(MANIFEST, p.header)
            p.store.write_json(FEWSHOT, p.fewshot)

    todo = [p for p in plans if p.pending]
    for p in plans:
        if p.complete:
            log.info("%s: already complete at %s", p.name, p.store.url)
        elif p.pending:
            log.info("%s: %d of %d shards to encode (%d rows)", p.name, len(p.pending), len(p.shards),
                     sum(s.rows for s in p.pending))
    encoded = _encode(cfg, plans, clip) if todo else {}
    encoded_by_name = {plans[i].name: n for i, n in encoded.items()}

    results = []
    for p in plans:
        manifest = p.store.read_json(MANIFEST) if p.complete else _finalize(p, cfg)
        results.append(DatasetResult(
            name=p.name, url=p.store.url, encoded=encoded_by_name.get(p.name, 0),
            shards_skipped=len(p.shards) - len(p.pending), rows=manifest["rows"],
            skipped_images=len(manifest.get("skipped", [])), fingerprint=manifest["fingerprint"],
        ))
    return FeaturizeResult(model_url=model_url, identity=clip.identity, datasets=results)
