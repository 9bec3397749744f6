"""Text side of prompt tuning, forward + backward to the context: full 77 tokens vs truncated vs shared prefix.

All three paths run side by side in one process on the same inputs (ViT-B-16 text tower, random weights,
16 context tokens shared across classes, as CoOp), and the bench checks that they agree before printing times.

    python bench/text_encoder.py --classes 20,50,100 [--repeats 3] [--threads 2] [--clock wall|cpu] [--device cpu]
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time

import torch

from dept.clip import load_clip
from dept.text_encoder import PromptTextEncoder

PATHS = ("full", "truncated", "prefix")

# Words for synthetic class names of 1-4 words (ImageNet-like names are 1-6 BPE tokens; a few are longer).
WORDS = (
    "red tailed hawk golden retriever sports car coral reef space shuttle wooden spoon paper towel ice cream "
    "grey whale snow leopard electric guitar mountain bike soup bowl steel arch bridge tabby cat garden spider "
    "school bus fire engine water tower cheese burger barn owl sea anemone rocking chair"
).split()


def class_names(k: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4))) + f" {i}" for i in range(k)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step(enc: PromptTextEncoder, ctx0: torch.Tensor, ct, weight: torch.Tensor, path: str):
    """One forward + backward to the context; returns (features, grad)."""
    ctx = ctx0.detach().clone().requires_grad_()
    out = enc(ctx, ct, path=path)
    (out * weight).sum().backward()
    return out.detach(), ctx.grad


def time_paths(enc, ctx0, ct, weight, repeats, device, clock) -> dict[str, float]:
    """Best of ``repeats`` rounds per path; the paths take turns within each round, so that load from other
    processes on shared cores falls on all three alike (noise only ever adds time, hence the minimum).

    ``clock="cpu"`` measures this process's CPU time instead of wall time: on cores shared with other busy
    processes it counts the work done rather than the waiting (use it with ``--threads 1``, where no thread
    spins waiting for another)."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    times: dict[str, list[float]] = {p: [] for p in PATHS}
    for _ in range(repeats):
        for p in PATHS:
            sync(device)
            t0 = now()
            step(enc, ctx0, ct, weight, p)
            sync(device)
            times[p].append(now() - t0)
    return {p: min(ts) for p, ts in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", default="20,50,100,500", help="comma-separated class counts")
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--n-ctx", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds (best of), after one warm-up round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="wall time, or this process's CPU time")
    args = ap.parse_args(argv)
    try:
        counts = [int(c) for c in args.classes.split(",") if c.strip()]
    except ValueError:
        ap.error(f"--classes must be comma-separated integers, got {args.classes!r}")
    if not counts or min(counts) < 1:
        ap.error(f"--classes needs positive class counts, got {args.classes!r}")
    if args.clock == "cpu" and args.device != "cpu":
        ap.error("--clock cpu measures host CPU time; use it with --device cpu")

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clip = load_clip(args.model, None, device=device, text_only=True)
    enc = PromptTextEncoder(clip.model, clip.tokenizer)
    print(f"# {' '.join(sys.argv)}")
    print(f"# {args.model} text tower, random weights, fp32, {args.n_ctx} shared context tokens, forward+backward to ctx; "
          f"torch {torch.__version__}, {args.threads} threads, {device}, {platform.processor() or platform.machine()}; "
          f"{args.clock} clock, best of {args.repeats} interleaved rounds after 1 warm-up round; "
          f"load average at start {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    header = ("classes", "max suffix", "full s", "truncated s", "prefix s", "full/prefix", "trunc/prefix", "full/trunc",
              "max |dF|", "grad rel err")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    ok = True
    for k in counts:
        torch.manual_seed(k)
        ct = enc.class_tokens(class_names(k))
        ctx0 = torch.randn(args.n_ctx, enc.width, device=device) * 0.02
        weight = torch.randn(k, clip.embed_dim, device=device)
        # Agreement first (also the warm-up): every path against the full-context one.
        res = {p: step(enc, ctx0, ct, weight, p) for p in PATHS}
        f_ref, g_ref = res["full"]
        dmax = max((res[p][0] - f_ref).abs().max().item() for p in PATHS)
        grel = max(((res[p][1] - g_ref).norm() / g_ref.norm()).item() for p in PATHS)
        ok &= dmax <= 1e-4 and grel <= 1e-4
        t = time_paths(enc, ctx0, ct, weight, args.repeats, device, args.clock)
        row = (k, ct.max_length, f"{t['full']:.3f}", f"{t['truncated']:.3f}", f"{t['prefix']:.3f}",
               f"{t['full'] / t['prefix']:.1f}x", f"{t['truncated'] / t['prefix']:.1f}x",
               f"{t['full'] / t['truncated']:.1f}x", f"{dmax:.1e}", f"{grel:.1e}")
        print("| " + " | ".join(str(c) for c in row) + " |", flush=True)
    if not ok:
        print("PATHS DISAGREE (features > 1e-4 or gradients > 1e-4 relative)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
