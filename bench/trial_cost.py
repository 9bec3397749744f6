"""Trial cost: the reference recipe's online training step against this project's trial on cached features.

(a) online, as the reference DePT/CoOp code trains: every step decodes the batch's image files (JPEG), augments
    them (random resized crop 0.08-1, bicubic, + flip), runs the frozen image encoder, and runs the text encoder
    over the full 77-token sequence for every base class (forward + backward to the context), then the DePT loss
    (ITM + CAT head) and the SGD step;
(b) cached, as a dept-pipeline trial trains: a batch of stored image features (one of K stored views), the text
    encoder on the project's default path (shared prefix for CoOp's shared context), the same loss and step.

Same learner class, same base classes, same hyperparameters, same batch size, side by side in one process: the
online and cached steps take turns (so load from other processes falls on both alike); each part of a step is
timed separately. (b) is also timed as a whole epoch of the project's trainer (``dept.train``, one epoch over
``shots x classes`` images with K views), which is what a trial runs; (a)'s epoch is its median step times the
epoch's steps (a whole online epoch is minutes to hours on a CPU). Stored features are stand-in values of the
right shape: a step's cost does not depend on them.

``--clock cpu`` (with ``--threads 1``) measures this process's CPU time, which on cores shared with other busy
processes counts the work rather than the waiting; ``--clock wall`` is for a quiet machine or a GPU.

    python bench/trial_cost.py --model ViT-B-16 --classes 20 --steps 5 --threads 1 --clock cpu
    python bench/trial_cost.py --model ViT-B-16 --classes 50 --steps 5 --threads 1 --clock cpu --cached-epoch
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from dept import DePTConfig, TrainConfig, build_learner, load_clip, train
from dept.datasets.demo import demo_classes
from dept.text_encoder import PromptTextEncoder

from benchlib import machine_line, write_jpeg_dataset


@dataclass
class Options:
    model: str = "ViT-B-16"
    classes: int = 20  # base classes trained on
    shots: int = 16
    batch_size: int = 4
    views: int = 10  # stored augmented views per train image (b)
    steps: int = 5  # timed steps per side, after one warm-up step each
    threads: int = 1
    clock: str = "cpu"  # cpu | wall
    device: str = "cpu"
    amp: bool = False  # bf16 autocast
    cached_epoch: bool = True  # also time a whole epoch of dept.train on cached features
    image_pool: int = 32  # distinct JPEG files decoded by the online step
    image_side: int = 448  # pixels of the generated JPEGs (ImageNet photos average about 400 x 350)
    loader_workers: int = 0  # >0: the online step gets its images from a DataLoader with this many processes
    seed: int = 0


@dataclass
class Result:
    options: Options
    steps_per_epoch: int
    online_parts: dict[str, float]  # median seconds per step: decode, image, text (text = text + loss + step)
    online_step: float
    cached_step: float
    cached_epoch: float | None
    load_start: tuple[float, ...]
    load_end: tuple[float, ...]
    extra: dict = field(default_factory=dict)

    @property
    def online_epoch(self) -> float:
        return self.online_step * self.steps_per_epoch

    @property
    def cached_epoch_est(self) -> float:
        return self.cached_epoch if self.cached_epoch is not None else self.cached_step * self.steps_per_epoch

    @property
    def ratio(self) -> float:
        return self.online_epoch / self.cached_epoch_est


def text_path(learner) -> str:
    """The text-encoder path a CoOp learner (shared context) takes."""
    enc = learner.encoder
    return "full" if not enc.truncate else "prefix" if enc.shared_prefix else "truncated"


def class_names(k: int) -> list[str]:
    """Demo-style class names ("red circle", ...) for k classes, unique beyond the demo's 120 by an index."""
    base = [f"{c} {s}" for c, s in demo_classes(min(k, 120))]
    return [base[i % len(base)] + (f" {i // len(base)}" if i >= len(base) else "") for i in range(k)]


def online_transform(image_size: int, mean, std):
    """The reference recipe's training transform (Dassl: random resized crop + flip + normalise)."""
    from torchvision import transforms as T

    return T.Compose([
        T.RandomResizedCrop(image_size, scale=(0.08, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def write_jpeg_pool(folder: Path, n: int, side: int, seed: int) -> list[str]:
    """n generated images saved as JPEG quality 90, like the datasets' photos."""
    k = min(n, 120)
    root = write_jpeg_dataset(folder / "pool", num_classes=k, train_per_class=-(-n // k), val_per_class=0,
                              test_per_class=0, side=side, seed=seed)
    return [str(p) for p in sorted((root / "images").rglob("*.jpg"))[:n]]


class _Decoded(torch.utils.data.Dataset):
    def __init__(self, paths, tf):
        self.paths, self.tf = paths, tf

    def __len__(self):
        return 1 << 30  # sampled with replacement by index

    def __getitem__(self, i):
        with Image.open(self.paths[i % len(self.paths)]) as im:
            return self.tf(im.convert("RGB"))


def make_clock(clock: str, device: torch.device):
    if clock == "cpu":
        if device.type != "cpu":
            raise SystemExit("--clock cpu measures host CPU time; use --clock wall with a GPU")
        return time.process_time

    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    return now


def autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def measure(opt: Options, clip=None, log=print) -> Result:
    torch.set_num_threads(opt.threads)
    device = torch.device(opt.device)
    now = make_clock(opt.clock, device)
    load_start = os.getloadavg()
    if clip is None:
        clip = load_clip(opt.model, None, device=device)
    names = class_names(opt.classes)
    n_train = opt.classes * opt.shots
    steps_per_epoch = n_train // opt.batch_size  # the trainer drops the last incomplete batch
    cfg = TrainConfig(epochs=1, batch_size=opt.batch_size)
    g = torch.Generator().manual_seed(opt.seed)
    labels = torch.randint(opt.classes, (n_train,), generator=g)

    with tempfile.TemporaryDirectory(prefix="dept-bench-") as tmp:
        paths = write_jpeg_pool(Path(tmp), opt.image_pool, opt.image_side, opt.seed)
        tf = online_transform(clip.image_size, clip.mean, clip.std)
        loader_iter = None
        if opt.loader_workers > 0:
            sampler = torch.utils.data.RandomSampler(range(len(paths)), replacement=True, num_samples=1 << 30,
                                                     generator=torch.Generator().manual_seed(opt.seed))
            loader = torch.utils.data.DataLoader(_Decoded(paths, tf), batch_size=opt.batch_size, sampler=sampler,
                                                 num_workers=opt.loader_workers, pin_memory=device.type == "cuda",
                                                 prefetch_factor=4)
            loader_iter = iter(loader)

        # (a) the reference recipe, online: full-77 text path, images decoded + augmented + encoded every step.
        online = build_learner("coop", clip, names, dept=DePTConfig(), seed=1,
                               encoder=PromptTextEncoder(clip.model, clip.tokenizer, truncate=False))
        opt_a = torch.optim.SGD(online.param_groups(cfg.lr, cfg.head_lr_mult), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)

        # (b) this project's trial: default learner (shared-prefix text path), stored features [N, 1 + K, D].
        cached = build_learner("coop", clip, names, dept=DePTConfig(), seed=1)
        feats = torch.randn(n_train, 1 + opt.views, clip.embed_dim, generator=g)
        opt_b = torch.optim.SGD(cached.param_groups(cfg.lr, cfg.head_lr_mult), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)

        def step_online() -> dict[str, float]:
            idx = torch.randint(n_train, (opt.batch_size,), generator=g)
            t0 = now()
            if loader_iter is not None:
                x = next(loader_iter)
            else:
                x = torch.stack([tf(Image.open(paths[j % len(paths)]).convert("RGB")) for j in idx.tolist()])
            x = x.to(device, non_blocking=True)
            t1 = now()
            with torch.no_grad(), autocast(device, opt.amp):
                v = clip.model.encode_image(x).float()
            t2 = now()
            with autocast(device, opt.amp):
                loss, _ = online.training_loss(v, labels[idx].to(device))
            opt_a.zero_grad(set_to_none=True)
            loss.backward()
            opt_a.step()
            t3 = now()
            return {"decode": t1 - t0, "image": t2 - t1, "text": t3 - t2}

        def step_cached() -> float:
            idx = torch.randint(n_train, (opt.batch_size,), generator=g)
            view = torch.randint(1, 1 + opt.views, (opt.batch_size,), generator=g) if opt.views else torch.zeros_like(idx)
            t0 = now()
            batch = feats[idx, view].to(device)
            with autocast(device, opt.amp):
                loss, _ = cached.training_loss(batch, labels[idx].to(device))
            opt_b.zero_grad(set_to_none=True)
            loss.backward()
            opt_b.step()
            t1 = now()
            return t1 - t0

        def step_text() -> float:
            """The text side of (b) alone: base-class features, forward + backward to the context."""
            w = torch.randn(opt.classes, clip.embed_dim, generator=g).to(device)
            t0 = now()
            with autocast(device, opt.amp):
                text = cached.text_features(names)
            (text.float() * w).sum().backward()
            t1 = now()
            opt_b.zero_grad(set_to_none=True)
            return t1 - t0

        step_online(), step_cached(), step_text()  # warm-up: allocations, caches, loader start
        online_times: list[dict[str, float]] = []
        cached_times: list[float] = []
        text_times: list[float] = []
        for i in range(opt.steps):
            online_times.append(step_online())
            cached_times.append(step_cached())
            text_times.append(step_text())
            log(f"  step {i + 1}/{opt.steps}: online {sum(online_times[-1].values()):.3f} s "
                f"({', '.join(f'{k} {v:.3f}' for k, v in online_times[-1].items())}), cached {cached_times[-1]:.4f} s")
        parts = {k: statistics.median(t[k] for t in online_times) for k in ("decode", "image", "text")}
        online_step = statistics.median(sum(t.values()) for t in online_times)
        cached_step = statistics.median(cached_times)

        cached_epoch = None
        if opt.cached_epoch:
            # A whole epoch of the project's trainer, as a trial runs it (fresh learner, same init).
            learner = build_learner("coop", clip, names, dept=DePTConfig(), seed=1)
            t0 = now()
            with autocast(device, opt.amp):
                train(learner, feats, labels, cfg)
            cached_epoch = now() - t0
            log(f"  whole cached epoch ({steps_per_epoch} steps, dept.train): {cached_epoch:.2f} s")
        if loader_iter is not None:
            del loader_iter, loader  # stops the worker processes before their files go
    return Result(opt, steps_per_epoch, parts, online_step, cached_step, cached_epoch, load_start, os.getloadavg(),
                  extra={"online_text_path": text_path(online), "cached_text_path": text_path(cached),
                         "cached_text_s": statistics.median(text_times)})


def describe(r: Result) -> str:
    o = r.options
    lines = [
        f"model {o.model} (random weights), {o.classes} base classes, {o.shots} shots, batch {o.batch_size}, "
        f"{r.steps_per_epoch} steps/epoch, {o.views} stored views; {o.device}, {o.threads} threads, {o.clock} clock, "
        f"{'bf16 autocast' if o.amp else 'fp32'}; median of {o.steps} interleaved steps after 1 warm-up; load average "
        f"{' '.join(f'{x:.1f}' for x in r.load_start)} -> {' '.join(f'{x:.1f}' for x in r.load_end)}; text paths: "
        f"(a) {r.extra['online_text_path']}, (b) {r.extra['cached_text_path']}",
        f"(a) online reference step: {r.online_step:.3f} s  (decode+augment {r.online_parts['decode']:.3f}, "
        f"image encoder {r.online_parts['image']:.3f}, full-77 text + loss + step {r.online_parts['text']:.3f})"
        f"  -> epoch {r.online_epoch:.1f} s",
        f"(b) cached-feature step:    {r.cached_step:.4f} s  (its text side alone, forward + backward: "
        f"{r.extra['cached_text_s']:.4f} s = {100 * r.extra['cached_text_s'] / r.cached_step:.0f} %)"
        f"  -> epoch {r.cached_step * r.steps_per_epoch:.1f} s"
        + (f"; whole epoch of dept.train measured: {r.cached_epoch:.1f} s" if r.cached_epoch is not None else ""),
        f"step ratio (a)/(b): {r.online_step / r.cached_step:.1f}x;  epoch ratio (a)/(b): {r.ratio:.1f}x",
    ]
    return "\n".join(lines)


def markdown_row(r: Result) -> str:
    o = r.options
    return (f"| {o.model} | {o.classes} | {r.steps_per_epoch} | {r.online_parts['decode']:.3f} | "
            f"{r.online_parts['image']:.3f} | {r.online_parts['text']:.3f} | {r.online_step:.3f} | {r.cached_step:.4f} | "
            f"{100 * r.extra['cached_text_s'] / r.cached_step:.0f} % | "
            f"{r.online_epoch:.0f} | {r.cached_epoch_est:.1f} | {r.online_step / r.cached_step:.1f}x | {r.ratio:.1f}x |")


MARKDOWN_HEADER = (
    "| model | base classes | steps/epoch | (a) decode+aug s | (a) image enc s | (a) text77+loss+step s | (a) step s | "
    "(b) step s | (b) text share | (a) epoch s | (b) epoch s | step ratio | epoch ratio |\n|" + "---|" * 13
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Options()
    ap.add_argument("--model", default=d.model)
    ap.add_argument("--classes", type=int, default=d.classes, help="base classes")
    ap.add_argument("--shots", type=int, default=d.shots)
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--views", type=int, default=d.views, help="stored augmented views per train image")
    ap.add_argument("--steps", type=int, default=d.steps, help="timed steps per side (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=d.threads)
    ap.add_argument("--clock", choices=("cpu", "wall"), default=d.clock)
    ap.add_argument("--device", default=d.device)
    ap.add_argument("--amp", action="store_true", help="bf16 autocast")
    ap.add_argument("--no-cached-epoch", dest="cached_epoch", action="store_false",
                    help="skip the whole-epoch timing of dept.train (scale the median cached step instead)")
    ap.add_argument("--image-side", type=int, default=d.image_side)
    ap.add_argument("--loader-workers", type=int, default=d.loader_workers)
    args = ap.parse_args(argv)
    if min(args.classes, args.shots, args.batch_size, args.steps, args.threads) < 1 or args.views < 0:
        ap.error("--classes, --shots, --batch-size, --steps and --threads must be >= 1, --views >= 0")
    if args.classes * args.shots < args.batch_size:
        ap.error("fewer training images than one batch")
    opt = Options(model=args.model, classes=args.classes, shots=args.shots, batch_size=args.batch_size,
                  views=args.views, steps=args.steps, threads=args.threads, clock=args.clock, device=args.device,
                  amp=args.amp, cached_epoch=args.cached_epoch, image_side=args.image_side,
                  loader_workers=args.loader_workers)
    print(f"# {' '.join(sys.argv)}")
    print(f"# {machine_line()}")
    r = measure(opt)
    print(describe(r))
    print(MARKDOWN_HEADER)
    print(markdown_row(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
