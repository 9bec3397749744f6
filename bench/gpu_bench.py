"""The GPU run of the benches, in one go (driven by bench/gpu.sh on a CUDA machine; ~3-5 minutes on one H200).

Drives ``dept/`` directly (no Ray, no MLflow: the device image has neither). Parts, each in fp32 (TF32 off, so
fp32 means fp32) and in bf16 autocast, with the numerical difference between the two reported:

1. text encoder, forward + backward to a 16-token shared context, full 77 tokens vs truncated vs shared prefix,
   ViT-B-16 text tower, 20/50/100/500 classes (bench/text_encoder.py's workload); every path checked against the
   fp32 full path (features max abs diff, gradient relative error);
2. trial cost at 20 and 50 base classes (bench/trial_cost.py's workload): the reference recipe's online step
   (JPEGs decoded + augmented by a DataLoader with 8 worker processes, as the reference's loader, image encoder,
   full-77 text) vs the project's cached-feature step and a whole epoch of ``dept.train``; plus the difference
   between an epoch trained in fp32 and in bf16 from the same start (learned context, CAT head, logits);
3. the bare image-encoder rate (ViT-B-16 and ViT-B-32, preloaded batch, inference) and the rate of featurize's
   decode stage per CPU core (``pipelines.featurize.decode_images``), i.e. how many decode cores keep one GPU fed.

Timing: wall clock with ``torch.cuda.synchronize()``; best of a few rounds after warm-up. ``--device cpu --tiny``
is a dry run of the same code on the tiny model (seconds; for CI-style checks, not for figures).

    python bench/gpu_bench.py --device cuda --out OUTDIR
    python bench/gpu_bench.py --device cpu --tiny
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import trial_cost
from benchlib import machine_line, write_jpeg_dataset
from dept import DePTConfig, TrainConfig, build_learner, load_clip, train
from dept.text_encoder import PromptTextEncoder
from text_encoder import PATHS, class_names, step

PRECISIONS = ("fp32", "bf16")


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int) -> float:
    """Best of ``repeats`` calls after one warm-up call (seconds)."""
    fn()
    best = math.inf
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


# -- 1. text encoder ----------------------------------------------------------------------------------------------
def bench_text(clip, device, counts, repeats, n_ctx, log) -> list[dict]:
    enc = PromptTextEncoder(clip.model, clip.tokenizer)
    rows = []
    log("\n## text encoder: forward + backward to the context (seconds per step, best of "
        f"{repeats}); errors against the fp32 full-77 path\n")
    log("| classes | precision | full s | truncated s | prefix s | full/prefix | trunc/prefix | full/trunc | "
        "max abs dF (max abs F) | grad rel err |")
    log("|" + "---|" * 10)
    for k in counts:
        torch.manual_seed(k)
        ct = enc.class_tokens(class_names(k))
        ctx0 = torch.randn(n_ctx, enc.width, device=device) * 0.02
        weight = torch.randn(k, clip.embed_dim, device=device)
        f_ref, g_ref = step(enc, ctx0, ct, weight, "full")  # fp32 reference
        for prec in PRECISIONS:
            t, dmax, grel = {}, 0.0, 0.0
            for p in PATHS:
                def run(p=p):
                    with autocast(device, prec):
                        return step(enc, ctx0, ct, weight, p)

                f, g = run()
                dmax = max(dmax, (f.float() - f_ref).abs().max().item())
                grel = max(grel, ((g.float() - g_ref).norm() / g_ref.norm()).item())
                t[p] = timed(run, device, repeats)
            row = {"classes": k, "precision": prec, **{f"{p}_s": t[p] for p in PATHS}, "max_abs_dF": dmax,
                   "max_abs_F": f_ref.abs().max().item(), "grad_rel_err": grel}
            rows.append(row)
            log(f"| {k} | {prec} | {t['full']:.4f} | {t['truncated']:.4f} | {t['prefix']:.4f} | "
                f"{t['full'] / t['prefix']:.1f}x | {t['truncated'] / t['prefix']:.1f}x | {t['full'] / t['truncated']:.1f}x | "
                f"{dmax:.1e} ({row['max_abs_F']:.2f}) | {grel:.1e} |")
    return rows


# -- 2. trial cost -------------------------------------------------------------------------------------------------
def bench_trial(clip, model, device, counts, steps, loader_workers, log) -> list[dict]:
    rows = []
    log("\n## trial cost: online reference step vs cached-feature step / whole dept.train epoch\n")
    head, sep = trial_cost.MARKDOWN_HEADER.split("\n")
    log(head.replace("| model |", "| model | precision |", 1))
    log(sep + "---|")
    for k in counts:
        for prec in PRECISIONS:
            opt = trial_cost.Options(model=model, classes=k, steps=steps, threads=torch.get_num_threads(),
                                     clock="wall", device=str(device), amp=prec == "bf16",
                                     loader_workers=loader_workers)
            r = trial_cost.measure(opt, clip=clip, log=lambda *_: None)
            first, rest = trial_cost.markdown_row(r).split(" | ", 1)
            log(f"{first} | {prec} | {rest}")
            rows.append({"classes": k, "precision": prec, "online_parts": r.online_parts, "online_step": r.online_step,
                         "cached_step": r.cached_step, "cached_epoch": r.cached_epoch,
                         "steps_per_epoch": r.steps_per_epoch, "epoch_ratio": r.ratio})
    return rows


def bench_trial_numerics(clip, device, k, shots, views, log) -> dict:
    """One whole epoch of dept.train from the same start in fp32 and in bf16 autocast: how far apart they end."""
    names = trial_cost.class_names(k)
    g = torch.Generator().manual_seed(0)
    n = k * shots
    feats = torch.randn(n, 1 + views, clip.embed_dim, generator=g).to(device)
    labels = torch.randint(k, (n,), generator=g).to(device)
    eval_x = torch.randn(256, clip.embed_dim, generator=g).to(device)
    out = {}
    for prec in PRECISIONS:
        learner = build_learner("coop", clip, names, dept=DePTConfig(), seed=1)
        with autocast(device, prec):
            hist = train(learner, feats, labels, TrainConfig(epochs=1, batch_size=4))
        with torch.no_grad():
            scores = learner.base_scores(eval_x).float()  # fp32 evaluation of what was learned
        out[prec] = (learner.method.ctx.detach().float(), learner.cat_head.state_dict(), scores, hist[-1].train_loss)
    (c32, h32, s32, l32), (c16, h16, s16, l16) = out["fp32"], out["bf16"]
    head_err = max(((h16[key].float() - h32[key].float()).norm() / h32[key].float().norm()).item() for key in h32)
    res = {
        "classes": k,
        "ctx_rel_err": ((c16 - c32).norm() / c32.norm()).item(),
        "cat_head_rel_err": head_err,
        "score_max_abs_diff": (s16 - s32).abs().max().item(),
        "score_max_abs": s32.abs().max().item(),
        "argmax_agreement": (s16.argmax(-1) == s32.argmax(-1)).float().mean().item(),
        "train_loss_fp32": l32,
        "train_loss_bf16": l16,
    }
    log(f"\nfp32 vs bf16 after one epoch of dept.train ({k} classes, same start, fp32 evaluation): learned context "
        f"rel. diff {res['ctx_rel_err']:.1e}, CAT head rel. diff {res['cat_head_rel_err']:.1e}, fused base logits "
        f"max abs diff {res['score_max_abs_diff']:.2e} (logits up to {res['score_max_abs']:.1f}), predictions "
        f"agree on {100 * res['argmax_agreement']:.1f} % of 256 inputs; epoch loss {l32:.4f} vs {l16:.4f}")
    return res


# -- 3. image encoder and decode ------------------------------------------------------------------------------------
def bench_image(models, device, batch, repeats, log) -> list[dict]:
    rows = []
    log(f"\n## bare image encoder (preloaded batch of {batch}, inference)\n")
    log("| model | precision | img/s | max abs diff vs fp32 (max abs) |")
    log("|---|---|---|---|")
    for model in models:
        clip = load_clip(model, None, device=device)
        x = torch.randn(batch, 3, clip.image_size, clip.image_size, device=device)
        with torch.inference_mode():
            ref = clip.model.encode_image(x).float()
        for prec in PRECISIONS:
            def run():
                with torch.inference_mode(), autocast(device, prec):
                    return clip.model.encode_image(x)

            diff = (run().float() - ref).abs().max().item()
            t = timed(run, device, repeats)
            rows.append({"model": model, "precision": prec, "img_per_s": batch / t, "max_abs_diff": diff})
            log(f"| {model} | {prec} | {batch / t:.0f} | {diff:.1e} ({ref.abs().max().item():.2f}) |")
        del clip
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def bench_decode(model, n_images, side, log) -> dict:
    """featurize's decode stage on one CPU core (the same function Ray runs), test transform and 10 train views."""
    from pipelines.featurize import decode_images

    clip = load_clip(model, None, text_only=True)
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    res = {}
    with tempfile.TemporaryDirectory(prefix="dept-bench-") as tmp:
        data = write_jpeg_dataset(Path(tmp) / "jpeg", num_classes=min(n_images, 8), train_per_class=0,
                                  val_per_class=0, test_per_class=-(-n_images // min(n_images, 8)), side=side)
        paths = sorted(str(p) for p in (data / "images").rglob("*.jpg"))[:n_images]
        kw = dict(image_size=clip.image_size, mean=tuple(clip.mean), std=tuple(clip.std), view_seed=0)
        for views in (1, 11):
            rows = {"unit": np.arange(len(paths)), "path": np.asarray(paths, dtype=object),
                    "image_id": np.asarray(paths, dtype=object), "n_views": np.full(len(paths), views)}
            decode_images({k: v[:1] for k, v in rows.items()}, **kw)  # warm-up
            t0 = time.process_time()
            decode_images(rows, **kw)
            res[views] = len(paths) * views / (time.process_time() - t0)
    torch.set_num_threads(saved)
    log(f"\nfeaturize decode stage, one CPU core ({side}px JPEGs): {res[1]:.0f} rows/s at view 0 (test transform), "
        f"{res[11]:.0f} rows/s for train images (view 0 + 10 augmented views, one file read)")
    return {"test_rows_per_core_s": res[1], "train_rows_per_core_s": res[11]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="dry run: tiny model, tiny sizes")
    ap.add_argument("--out", default=None, help="folder for gpu_bench.json")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: text,trial,image,decode")
    ap.add_argument("--quick", action="store_true",
                    help="the 4-minute lease's subset: 50 and 500 classes, one trial size, ViT-B-16 only, no decode")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible; use --device cpu --tiny for a dry run")
    # fp32 means fp32: no TF32 in matmuls or convolutions (the featurize encoder sets the same).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.tiny:
        model, image_models = "dept-tiny-vit", ["dept-tiny-vit"]
        text_counts, trial_counts, repeats, steps, img_batch, workers, decode_n = [4, 8], [4], 1, 2, 8, 0, 4
    else:
        model, image_models = "ViT-B-16", ["ViT-B-16", "ViT-B-32"]
        text_counts, trial_counts, repeats, steps, img_batch, workers, decode_n = [20, 50, 100, 500], [20, 50], 5, 20, 256, 8, 64
        if args.quick:
            image_models, text_counts, trial_counts, repeats, steps = ["ViT-B-16"], [50, 500], [50], 3, 10
            skip.add("decode")
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def log(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    started = time.perf_counter()
    header = f"# {' '.join(sys.argv)}\n# {machine_line()}"
    if device.type == "cuda":
        header += f"; {torch.cuda.get_device_name(device)}"
    log(header)
    result: dict = {"device": str(device), "tiny": args.tiny, "quick": args.quick, "torch": torch.__version__,
                    "model": model}
    clip = load_clip(model, None, device=device)
    if "text" not in skip:
        result["text"] = bench_text(clip, device, text_counts, repeats, 16, log)
    if "trial" not in skip:
        result["trial"] = bench_trial(clip, model, device, trial_counts, steps, workers, log)
        result["trial_numerics"] = bench_trial_numerics(clip, device, trial_counts[-1], 16, 10, log)
    del clip
    if "image" not in skip:
        result["image"] = bench_image(image_models, device, img_batch, repeats, log)
    if "decode" not in skip:
        result["decode"] = bench_decode(model, decode_n, 448, log)
    result["seconds"] = time.perf_counter() - started
    log(f"\ntotal {result['seconds']:.0f} s")
    if out is not None:
        (out / "gpu_bench.json").write_text(json.dumps(result, indent=1))
        (out / "gpu_bench.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
