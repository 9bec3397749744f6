"""featurize throughput against its limit: images per second of the whole ``featurize`` pipeline (files decoded,
transformed, encoded through Ray Data, shards committed to Parquet) against the bare image-encoder rate on
preloaded tensors, same model, same batch size, measured side by side in one run.

    python bench/featurize_throughput.py --model ViT-B-32 --images 384 --batch-size 32 --workers 1
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import torch

from dept.clip import load_clip, save_random_checkpoint
from dept.datasets.demo import write_demo_dataset
from pipelines.featurize import FeaturizeConfig, featurize
from pipelines.ray_runtime import ensure_ray


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--images", type=int, default=384, help="test images to encode (view 0)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--cpus-per-worker", type=float, default=1.0)
    ap.add_argument("--image-size", type=int, default=256, help="side of the generated image files")
    args = ap.parse_args()

    import ray

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = save_random_checkpoint(args.model, tmp / "model.safetensors")
        classes = 12
        data = write_demo_dataset(tmp / "data", num_classes=classes, train_per_class=1, val_per_class=0,
                                  test_per_class=max(1, args.images // classes), image_size=args.image_size, seed=0)
        ensure_ray(None)
        cfg = FeaturizeConfig(out=str(tmp / "store"), dataset_dirs=(str(data),), model=args.model,
                              pretrained=str(ckpt), views=0, shots=1, seeds=(1,), batch_size=args.batch_size,
                              workers=args.workers, cpus_per_worker=args.cpus_per_worker, gpus_per_worker=0,
                              progress=False)
        t0 = time.perf_counter()
        result = featurize(cfg)
        pipeline_s = time.perf_counter() - t0
        encoded = result.encoded
        ray.shutdown()

        # The bare limit: the same model and batch size on tensors already decoded and transformed in memory.
        clip = load_clip(args.model, str(ckpt))
        x = torch.randn(args.batch_size, 3, clip.image_size, clip.image_size)
        with torch.no_grad():
            clip.model.encode_image(x)  # warm-up
            n_batches = max(2, encoded // args.batch_size // 2)
            t0 = time.perf_counter()
            for _ in range(n_batches):
                clip.model.encode_image(x)
            bare_s = time.perf_counter() - t0
    pipeline_rate = encoded / pipeline_s
    bare_rate = n_batches * args.batch_size / bare_s
    print(f"model {args.model}, batch {args.batch_size}, workers {args.workers}, {os.cpu_count()} CPUs")
    print(f"featurize (whole command incl. Ray start-up of actors, decode, Parquet): {encoded} images in "
          f"{pipeline_s:.1f} s = {pipeline_rate:.1f} img/s")
    print(f"bare encode_image on preloaded tensors: {bare_rate:.1f} img/s")
    print(f"featurize / bare: {100 * pipeline_rate / bare_rate:.0f} %")


if __name__ == "__main__":
    main()
