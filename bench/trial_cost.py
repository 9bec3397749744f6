"""Trial cost: the reference recipe's online training step against this project's step on cached features.

(a) online, as the reference DePT/CoOp code trains: every step decodes the batch's image files, augments them
    (random resized crop 0.08-1 + flip), runs the frozen image encoder, and runs the text encoder over the full
    77-token sequence for every base class (forward + backward to the context), then the DePT loss and SGD step;
(b) cached, as a dept-pipeline trial trains: a batch of stored image features, the text encoder on the shared
    prefix / truncated path, the same loss and step.

Both run the same learner, data and hyperparameters, side by side in one process; each is timed over the same
number of steps after a warm-up step and scaled to an epoch (shots * classes / batch steps). Prints the ratio.

    python bench/trial_cost.py --model ViT-B-16 --classes 20 --steps 4
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from dept import DePTConfig, TrainConfig, build_learner, load_clip
from dept.datasets import load_custom_dataset
from dept.datasets.demo import write_demo_dataset
from dept.text_encoder import PromptTextEncoder


def online_transform(image_size, mean, std):
    from torchvision import transforms as T

    return T.Compose([
        T.RandomResizedCrop(image_size, scale=(0.08, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def timed_steps(step, n_steps: int) -> list[float]:
    step(0)  # warm-up: allocations, caches
    times = []
    for i in range(1, n_steps + 1):
        t0 = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--classes", type=int, default=20, help="base classes")
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per side (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    clip = load_clip(args.model, None)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_demo_dataset(Path(tmp) / "data", num_classes=args.classes, train_per_class=args.shots,
                                  val_per_class=1, test_per_class=1, image_size=256, seed=0)
        splits = load_custom_dataset(str(root))
        items = splits.train
        names = splits.classnames
        paths = [str(Path(splits.image_root) / it.impath) for it in items]
        labels = torch.tensor([it.label for it in items])
        cfg = TrainConfig(batch_size=args.batch_size)
        steps_per_epoch = len(items) // args.batch_size

        # (a) the reference recipe, online.
        online = build_learner("coop", clip, names, dept=DePTConfig(), seed=1,
                               encoder=PromptTextEncoder(clip.model, clip.tokenizer, truncate=False))
        tf = online_transform(clip.image_size, clip.mean, clip.std)
        opt_a = torch.optim.SGD(online.param_groups(cfg.lr, cfg.head_lr_mult), lr=cfg.lr, momentum=0.9)
        g = torch.Generator().manual_seed(0)

        def step_online(i):
            idx = torch.randint(len(items), (args.batch_size,), generator=g)
            x = torch.stack([tf(Image.open(paths[j]).convert("RGB")) for j in idx.tolist()])
            with torch.no_grad():
                v = clip.model.encode_image(x)
            loss, _ = online.training_loss(v, labels[idx])
            opt_a.zero_grad()
            loss.backward()
            opt_a.step()

        # (b) this project's trial, on cached features (encoded once, outside the timing, as featurize does).
        cached = build_learner("coop", clip, names, dept=DePTConfig(), seed=1)
        feats = torch.randn(len(items), clip.embed_dim)  # stand-in values: the step's cost does not depend on them
        opt_b = torch.optim.SGD(cached.param_groups(cfg.lr, cfg.head_lr_mult), lr=cfg.lr, momentum=0.9)

        def step_cached(i):
            idx = torch.randint(len(items), (args.batch_size,), generator=g)
            loss, _ = cached.training_loss(feats[idx], labels[idx])
            opt_b.zero_grad()
            loss.backward()
            opt_b.step()

        ta = timed_steps(step_online, args.steps)
        tb = timed_steps(step_cached, args.steps)
    a, b = statistics.median(ta), statistics.median(tb)
    print(f"model {args.model}, {args.classes} base classes, {args.shots} shots, batch {args.batch_size}, "
          f"{steps_per_epoch} steps/epoch, {args.threads} threads, median of {args.steps} steps")
    print(f"(a) online reference step: {a:.3f} s  -> epoch {a * steps_per_epoch:.1f} s")
    print(f"(b) cached-feature step:    {b:.4f} s  -> epoch {b * steps_per_epoch:.1f} s")
    print(f"ratio (a)/(b): {a / b:.1f}x")


if __name__ == "__main__":
    main()
