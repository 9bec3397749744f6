"""Scaling on paper: featurize and ``tune --dataset all`` (11 datasets x 3 seeds x N trials) on 8 GPUs, from FLOP
counts, the CoOp split sizes and stated GPU rates (or rates measured by bench/gpu_bench.py: ``--gpu-json``).

Model of the work (ViT-B/16; every number below is printed with the table):
- featurize: every val and test image once (test transform) + the union of the 3 seeds' 16-shot draws x (1 + 10)
  views; 35.1 GFLOPs per image; no work for ImageNet's val beyond its test set (CoOp uses the val set as test).
- a CoOp+DePT trial on cached features: 10 epochs x (16 x base / 4) steps; a step runs the text encoder forward +
  backward to the context (backward to activations only: the tower is frozen, so ~2x the forward FLOPs) on the
  shared-prefix path: the 17 prefix tokens once, then ``S`` suffix tokens per base class (class name, ".", EOT);
  6.0 GFLOPs per 77-token prompt = 78 MFLOPs per token. Step time = launch floor + FLOPs / sustained rate. Per
  epoch, validation encodes every class once (forward) and scores the few-shot val images; the test set is scored
  once at the end (image-feature matmuls: negligible).
- the reference recipe's online step for comparison: B = 4 images through the image encoder (forward) + every base
  class's full 77-token prompt, forward + backward.

    python bench/scaling.py [--trials-per-seed 1] [--gpu-json OUTDIR/gpu_bench.json]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass

GFLOP_IMAGE = 35.1  # ViT-B/16, one 224 px image, forward
GFLOP_PROMPT77 = 6.0  # ViT-B/16 text tower, one 77-token prompt, forward
GFLOP_TOKEN = GFLOP_PROMPT77 / 77
BWD_FACTOR = 2.0  # forward + backward to activations (frozen weights: no weight gradients)
N_CTX = 16
SHOTS, SEEDS, VIEWS, EPOCHS, BATCH = 16, 3, 10, 10, 4


@dataclass(frozen=True)
class Dataset:
    name: str
    classes: int
    base: int
    train: int  # CoOp split sizes (train / val / test images)
    val: int
    test: int
    suffix_tokens: float  # mean tokens per class suffix (name + "." + EOT), estimated


# CoOp's split sizes (CoOp paper, dataset table); base counts from METHOD.md. ImageNet: val = test (50,000).
DATASETS = (
    Dataset("ImageNet", 1000, 500, 1_281_167, 0, 50_000, 6.0),
    Dataset("Caltech101", 100, 50, 4_128, 1_649, 2_465, 4.0),
    Dataset("OxfordPets", 37, 19, 2_944, 736, 3_669, 5.0),
    Dataset("StanfordCars", 196, 98, 6_509, 1_635, 8_041, 10.0),
    Dataset("Flowers102", 102, 51, 4_093, 1_633, 2_463, 5.0),
    Dataset("Food101", 101, 51, 50_500, 20_200, 30_300, 5.0),
    Dataset("FGVCAircraft", 100, 50, 3_334, 3_333, 3_333, 6.0),
    Dataset("SUN397", 397, 199, 15_880, 3_970, 19_850, 5.0),
    Dataset("DTD", 47, 24, 2_820, 1_128, 1_692, 3.0),
    Dataset("EuroSAT", 10, 5, 13_500, 5_400, 8_100, 5.0),
    Dataset("UCF101", 101, 51, 7_639, 1_898, 3_783, 6.0),
)


@dataclass
class Rates:
    image_per_s: float  # featurize image-encoder rate per GPU (fp32, TF32 off: what featurize stores)
    image_per_s_bf16: float
    step_floor_s: float  # a text fwd+bwd step's fixed cost (kernel launches, optimizer) per GPU
    text_tflops: float  # sustained rate of the text path's matmuls, TFLOP/s
    trial_overhead_s: float  # per trial inside Tune beyond its own work: scheduling, MLflow child run, reports
    dataset_overhead_s: float  # per dataset: Tune experiment start, MLflow parent run and summary
    source: str


# Overheads: measured by bench/tune_overhead.py on the CPU with reused trial workers (1.6-2.1 s per trial, 10-17 s
# per command), rounded up; a reused worker creates its CUDA context and loads the text tower once, not per trial.
ASSUMED = Rates(image_per_s=1_100, image_per_s_bf16=6_000, step_floor_s=0.006, text_tflops=40.0,
                trial_overhead_s=3.0, dataset_overhead_s=15.0,
                source="assumed (H100/H200 class GPU; fp32 = 67 TFLOP/s peak without TF32, bf16 ~790 peak)")


def rates_from_gpu_json(path: str) -> Rates:
    """Rates measured by bench/gpu_bench.py: image rates from its image part, the text step's floor and slope from
    its fp32 shared-prefix times at the smallest and largest class counts."""
    doc = json.loads(open(path).read())
    model = doc.get("model", "ViT-B-16")  # the model of the text and trial parts (a --tiny run: the tiny one)
    img = {(r["model"], r["precision"]): r["img_per_s"] for r in doc["image"]}
    text = sorted((r for r in doc["text"] if r["precision"] == "fp32"), key=lambda r: r["classes"])
    lo, hi = text[0], text[-1]
    slope = (hi["prefix_s"] - lo["prefix_s"]) / (hi["classes"] - lo["classes"])  # s per class per step
    floor = max(1e-4, lo["prefix_s"] - slope * lo["classes"])
    # The bench's class names are 3-8 tokens long with ".", EOT: ~6 suffix tokens.
    tflops = BWD_FACTOR * 6.0 * GFLOP_TOKEN / slope / 1e3 if slope > 0 else ASSUMED.text_tflops
    return Rates(image_per_s=img[(model, "fp32")], image_per_s_bf16=img[(model, "bf16")],
                 step_floor_s=floor, text_tflops=tflops, trial_overhead_s=ASSUMED.trial_overhead_s,
                 dataset_overhead_s=ASSUMED.dataset_overhead_s, source=f"measured ({path})")


def featurize_images(d: Dataset) -> tuple[int, int]:
    """(train images encoded, rows encoded): train images x (1 + views) + val + test."""
    train_imgs = min(d.train, SEEDS * SHOTS * d.classes)  # union of 3 draws, at most 3x one draw
    return train_imgs, train_imgs * (1 + VIEWS) + d.val + d.test


def trial_cost(d: Dataset, r: Rates) -> dict[str, float]:
    steps = EPOCHS * (SHOTS * d.base // BATCH)
    step_gflop = BWD_FACTOR * GFLOP_TOKEN * (1 + N_CTX + d.base * d.suffix_tokens)
    step_s = r.step_floor_s + step_gflop / (r.text_tflops * 1e3)
    val_gflop = EPOCHS * d.classes * (1 + N_CTX + d.suffix_tokens) * GFLOP_TOKEN  # truncated, forward
    val_s = val_gflop / (r.text_tflops * 1e3) + EPOCHS * r.step_floor_s
    online_step_gflop = BATCH * GFLOP_IMAGE + BWD_FACTOR * d.base * GFLOP_PROMPT77
    return {
        "steps": steps,
        "train_s": steps * step_s,
        "eval_s": val_s,
        "trial_s": steps * step_s + val_s + r.trial_overhead_s,
        "text_share_online": BWD_FACTOR * d.base * GFLOP_PROMPT77 / online_step_gflop,
        "flop_ratio": online_step_gflop / step_gflop,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--trials-per-seed", type=int, default=1, help="N: configurations tried per dataset and seed")
    ap.add_argument("--gpu-json", default=None, help="rates measured by bench/gpu_bench.py (else: assumed rates)")
    ap.add_argument("--decode-rows-per-core-s", type=float, default=None,
                    help="featurize decode rate per CPU core, train rows (gpu_bench 'decode'); for the cores column")
    args = ap.parse_args(argv)
    r = rates_from_gpu_json(args.gpu_json) if args.gpu_json else ASSUMED
    n, g = args.trials_per_seed, args.gpus
    print(f"rates: {r.source}: image encoder {r.image_per_s:.0f} img/s/GPU fp32 ({r.image_per_s_bf16:.0f} bf16); "
          f"text step = {1e3 * r.step_floor_s:.1f} ms + FLOPs / {r.text_tflops:.0f} TFLOP/s; overhead "
          f"{r.trial_overhead_s:.0f} s per trial, {r.dataset_overhead_s:.0f} s per dataset; {g} GPUs, one trial per "
          f"GPU at a time, datasets one after another (one Tune experiment each); {SEEDS} seeds x N = {n} trials")
    print()
    print("| dataset | base | featurize rows | featurize GPU-s fp32 (bf16) | trial steps | trial s | "
          "of which Tune overhead | tune wall s (3N trials / 8 GPUs) | online step: text share | "
          "online/cached FLOPs per step |")
    print("|" + "---|" * 10)
    tot_rows = tot_feat = tot_feat16 = tot_wall = tot_gpu = 0.0
    for d in DATASETS:
        _, rows = featurize_images(d)
        feat = rows / r.image_per_s
        feat16 = rows / r.image_per_s_bf16
        t = trial_cost(d, r)
        waves = math.ceil(SEEDS * n / g)
        wall = waves * t["trial_s"] + r.dataset_overhead_s
        tot_rows += rows
        tot_feat += feat
        tot_feat16 += feat16
        tot_wall += wall
        tot_gpu += SEEDS * n * t["trial_s"]
        print(f"| {d.name} | {d.base} | {rows:,} | {feat:.0f} ({feat16:.0f}) | {t['steps']:,} | {t['trial_s']:.0f} | "
              f"{100 * r.trial_overhead_s / t['trial_s']:.0f} % | {wall:.0f} | {100 * t['text_share_online']:.1f} % | {t['flop_ratio']:.0f}x |")
    print(f"| **all 11** | | {tot_rows:,.0f} | {tot_feat:.0f} ({tot_feat16:.0f}) | | | | {tot_wall:.0f} | | |")
    print()
    print(f"featurize on {g} GPUs: {tot_feat / g / 60:.1f} min fp32 ({tot_feat16 / g / 60:.1f} min bf16), if the "
          f"decode stage keeps up" + (f" (it needs {tot_rows / (tot_feat / g) / args.decode_rows_per_core_s:.0f} CPU "
                                      f"cores at {args.decode_rows_per_core_s:.0f} rows/s/core; "
                                      f"{tot_rows / (tot_feat16 / g) / args.decode_rows_per_core_s:.0f} for bf16)"
                                      if args.decode_rows_per_core_s else ""))
    print(f"tune --dataset all, {SEEDS * n} trials per dataset: {tot_wall / 60:.1f} min wall on {g} GPUs "
          f"({tot_gpu / 3600:.2f} GPU-h of trials; GPUs busy {100 * tot_gpu / (tot_wall * g):.0f} % of the wall time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
