"""featurize throughput against its limit: images per second of the whole ``featurize`` pipeline (JPEG files decoded
and transformed in Ray Data tasks, encoded by the encoder actor pool, shards committed to Parquet) against the bare
image-encoder rate on preloaded tensors, same model, same batch size, same threads per encoder, measured side by
side in one run.

What is printed:
- bare encoder rate: ``encode_image`` on a preloaded batch, in this process, with the encoder actor's thread count
  (Ray sets OMP_NUM_THREADS to the actor's CPUs, so ``--cpus-per-worker 1`` means one thread); measured before
  and after the pipeline (load from other processes drifts);
- decode rate alone: the pipeline's own decode function (``pipelines.featurize.decode_images``) on the same files,
  in this process, one thread;
- featurize, whole call (actor start, model load, Ray Data set-up, decode, encode, Parquet commits, manifest),
  and its steady state: rows from the first to the last batch reaching the driver over that interval;
- the bounds this machine puts on the pipeline: with D and E the decode and encode rates on one core each,
  decoding hidden behind encoding needs a free core for the decoder (rate min(D, E)); sharing one core, both
  run in turn (1 / (1/D + 1/E)).

    python bench/featurize_throughput.py --model ViT-B-32 --images 384 --batch-size 32 --workers 1
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np
import torch

from dept.clip import load_clip, save_random_checkpoint
from dept.datasets import load_custom_dataset
from pipelines.featurize import encode as featurize_mod
from pipelines.featurize import FeaturizeConfig, decode_images, featurize
from pipelines.ray_runtime import ensure_ray

from benchlib import machine_line, write_jpeg_dataset


def bare_rate(clip, batch_size: int, n_batches: int, threads: int) -> float:
    """Images per second of encode_image on one preloaded batch (wall clock, best of 3 runs of n batches)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    x = torch.randn(batch_size, 3, clip.image_size, clip.image_size)
    best = math.inf
    with torch.inference_mode():
        clip.model.encode_image(x)  # warm-up
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(n_batches):
                clip.model.encode_image(x)
            best = min(best, time.perf_counter() - t0)
    torch.set_num_threads(saved)
    return n_batches * batch_size / best


def decode_rate(paths: list[str], clip, batch: int) -> tuple[float, float]:
    """Images per second of the pipeline's decode stage alone (one thread): (wall, CPU-time) rates."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = {"unit": np.arange(len(paths)), "path": np.asarray(paths, dtype=object),
            "image_id": np.asarray(paths, dtype=object), "n_views": np.ones(len(paths), np.int64)}
    kw = dict(image_size=clip.image_size, mean=tuple(clip.mean), std=tuple(clip.std), view_seed=0)
    decode_images({k: v[:2] for k, v in rows.items()}, **kw)  # warm-up (transform construction, imports)
    w0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(paths), batch):
        out = decode_images({k: v[i:i + batch] for k, v in rows.items()}, **kw)
        assert (out["view"] >= 0).all(), "decode failed"
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    torch.set_num_threads(saved)
    return len(paths) / wall, len(paths) / cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--images", type=int, default=384, help="test images to encode (view 0)")
    ap.add_argument("--classes", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--cpus-per-worker", type=float, default=1.0)
    ap.add_argument("--image-side", type=int, default=448, help="side of the generated JPEG files")
    ap.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start a local one)")
    ap.add_argument("--bare-batches", type=int, default=3, help="batches per bare-rate run (best of 3 runs)")
    args = ap.parse_args(argv)
    if min(args.images, args.classes, args.batch_size, args.workers, args.bare_batches) < 1:
        ap.error("--images, --classes, --batch-size, --workers and --bare-batches must be >= 1")
    threads = max(1, math.floor(args.cpus_per_worker))
    print(f"# {' '.join(sys.argv)}")
    print(f"# {machine_line()}")

    import ray

    with tempfile.TemporaryDirectory(prefix="dept-bench-") as tmp:
        tmp = Path(tmp)
        ckpt = save_random_checkpoint(args.model, tmp / "model.safetensors")
        per_class = max(1, args.images // args.classes)
        data = write_jpeg_dataset(tmp / "bench", num_classes=args.classes, train_per_class=1, val_per_class=0,
                                  test_per_class=per_class, side=args.image_side, seed=0)
        splits = load_custom_dataset(str(data))
        paths = [str(Path(splits.image_root) / it.impath) for it in splits.test]
        clip = load_clip(args.model, str(ckpt))

        bare_before = bare_rate(clip, args.batch_size, args.bare_batches, threads)
        dec_wall, dec_cpu = decode_rate(paths[: max(2 * args.batch_size, 64)], clip, args.batch_size)
        print(f"bare encode_image ({threads} thread(s)), before: {bare_before:.1f} img/s; decode stage alone "
              f"(1 thread): {dec_wall:.1f} img/s wall, {dec_cpu:.1f} img/s of CPU time", flush=True)

        # Timestamps of the batches reaching the driver: the steady-state rate excludes start-up and the tail.
        arrivals: list[tuple[float, int]] = []
        original_add = featurize_mod._ShardAssembler.add

        def timed_add(self, batch):
            arrivals.append((time.perf_counter(), len(batch["unit"])))
            return original_add(self, batch)

        featurize_mod._ShardAssembler.add = timed_add
        # Started (or joined) here so that Ray's own start-up is not counted against featurize.
        started = ensure_ray(args.ray_address)
        try:
            cfg = FeaturizeConfig(out=str(tmp / "store"), dataset_dirs=(str(data),), model=args.model,
                                  pretrained=str(ckpt), views=0, shots=1, seeds=(1,), batch_size=args.batch_size,
                                  workers=args.workers, cpus_per_worker=args.cpus_per_worker, gpus_per_worker=0,
                                  progress=False)
            load0 = os.getloadavg()
            t0 = time.perf_counter()
            result = featurize(cfg)
            pipeline_s = time.perf_counter() - t0
        finally:
            featurize_mod._ShardAssembler.add = original_add
            if started:
                ray.shutdown()
        encoded = result.encoded
        bare_after = bare_rate(clip, args.batch_size, args.bare_batches, threads)

    first_t = arrivals[0][0]
    steady_rows = sum(n for _, n in arrivals[1:])
    steady_s = arrivals[-1][0] - first_t
    steady = steady_rows / steady_s if steady_s > 0 else float("nan")
    whole = encoded / pipeline_s
    bare = statistics.mean([bare_before, bare_after])
    hidden = min(dec_cpu, bare)
    shared = 1.0 / (1.0 / dec_cpu + 1.0 / bare)
    print(f"model {args.model} (random weights), batch {args.batch_size}, {args.workers} encoder worker(s) x "
          f"{args.cpus_per_worker} CPU, {encoded} images ({args.image_side}px JPEG); load average during featurize "
          f"{' '.join(f'{x:.1f}' for x in load0)} -> {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"bare encode_image on preloaded tensors: {bare_before:.1f} before, {bare_after:.1f} after -> {bare:.1f} img/s")
    print(f"featurize, whole call: {encoded} images in {pipeline_s:.1f} s = {whole:.1f} img/s "
          f"(first batch after {first_t - t0:.1f} s)")
    print(f"featurize, steady state: {steady_rows} images in {steady_s:.1f} s = {steady:.1f} img/s "
          f"({len(arrivals)} batches)")
    print(f"featurize / bare: whole {100 * whole / bare:.0f} %, steady {100 * steady / bare:.0f} %")
    print(f"bounds on this machine: decoder on its own core min(D, E) = {hidden:.1f} img/s "
          f"({100 * hidden / bare:.0f} % of bare); decoder and encoder sharing one core 1/(1/D + 1/E) = "
          f"{shared:.1f} img/s ({100 * shared / bare:.0f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
