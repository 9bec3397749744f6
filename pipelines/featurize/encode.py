"""The Ray part of the featurize stage: the decode tasks, the encoder actors, and the driver that commits
each shard to the store.

Why Ray Data (and not hand-rolled Ray tasks/actors over shards): featurizing is the textbook streaming batch
inference job -- a CPU-heavy decode/augment stage feeding a GPU-bound model stage. Ray Data runs the decode stage
as CPU tasks spread over the cluster, the encoder as a fixed pool of actors (model loaded once per actor, GPU
when asked), streams blocks between them with backpressure so decoding overlaps encoding and memory stays
bounded, and retries lost workers: when a node dies, its encoder actors restart elsewhere (Ray Data's defaults,
``max_restarts=-1`` and ``max_task_retries=-1``), their calls are retried and blocks lost with the node are rebuilt
from lineage (tests/pipelines/cluster/test_node_loss.py). What Ray Data does not give is our commit unit: its own
writers name files themselves and would put tensor extension types in the files. So the driver consumes the embeddings
(``iter_batches``; ~2 KB per image, small next to pixels) and commits each deterministic shard to the store as
soon as its last row arrives; a shard's presence under its final name means complete, which is what makes a
rerun skip finished work and a killed run resume without duplicates. Driver-side writes also make ``memory://``
and credentials-on-the-driver object stores work unchanged.
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.featurize.plan import DatasetPlan, FeaturizeConfig, FeaturizeError, Unit
from pipelines.ray_runtime import ensure_ray
from pipelines.store import feature_schema

log = logging.getLogger(__name__)

#: Test hook: seconds every encoder call sleeps, read in the driver's environment (the tiny test model encodes a
#: batch in milliseconds, too fast for a test to remove a node while encoding is under way). Leave unset.
ENCODE_PAUSE_ENV = "DEPT_PIPELINE_TEST_ENCODE_PAUSE_S"


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

    def __init__(self, model: str, pretrained: str | None, weights_id: str, use_gpu: bool, pause_s: float = 0.0):
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
        self.pause_s = pause_s

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        if self.pause_s > 0:
            time.sleep(self.pause_s)
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


def encode(cfg: FeaturizeConfig, plans: list[DatasetPlan], clip) -> dict[int, int]:
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
                                       "weights_id": clip.weights_id, "use_gpu": gpus > 0,
                                       "pause_s": float(os.environ.get(ENCODE_PAUSE_ENV) or 0.0)},
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
