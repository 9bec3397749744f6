"""``miniature ship``: a pretrained miniature checkpoint copied into the package (``dept/assets``), in the smallest
precision that keeps its features within tolerance, with a record of its pretraining and zero-shot figures."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import open_clip
import torch

from dept.clip import file_sha256
from dept.miniature import MODEL_NAME, MiniatureError, build_probe, to_model_input
from dept.miniature.model import image_mean_std
from dept.miniature.world import all_compositions
from pipelines.miniature.pretrain import CHECKPOINT_NAME, RECORD_NAME

log = logging.getLogger(__name__)
#: Largest relative feature change (||f16 - f32|| / ||f32||, per image or text) allowed by rounding weights to fp16.
FP16_TOLERANCE = 1e-3


#: What may be stored in fp16, tried in this order; the first whose features stay within ``FP16_TOLERANCE`` ships.
#: (Most parameters are the 49408-row token table, which only moves text features; the small image tower is the
#: part most sensitive to rounding.)
PRECISIONS: tuple[tuple[str, str | None], ...] = (
    ("float16", ""),  # every floating-point tensor
    ("float16 except the image tower", "visual."),  # tensors under visual. stay fp32
    ("float32", None),  # nothing rounded
)


#: Never rounded: the temperature is one number that scales every ITM logit downstream (DePT's tau).
KEEP_FP32 = ("logit_scale", "logit_bias")


def _round(state: dict[str, torch.Tensor], keep_fp32_prefix: str | None) -> dict[str, torch.Tensor]:
    if keep_fp32_prefix is None:
        return dict(state)

    def rounded(k: str) -> bool:
        return k not in KEEP_FP32 and not (keep_fp32_prefix and k.startswith(keep_fp32_prefix))

    return {k: v.half() if v.is_floating_point() and rounded(k) else v for k, v in state.items()}


@torch.no_grad()
def feature_change(state: dict[str, torch.Tensor], rounded: dict[str, torch.Tensor], model_name: str = MODEL_NAME,
                   images_per_split: int = 400) -> dict[str, float]:
    """How much image and text features move when a model built from ``state`` is built from ``rounded`` instead
    (loaded into an fp32 model, as ``load_clip`` does): the max and mean relative change ||a - b|| / ||b|| over
    the probe images, downstream test images of both class splits, and the prompts of every composition."""
    from dept.miniature.downstream import SPLITS, draw_class_images

    exact = open_clip.create_model(model_name).eval()
    exact.load_state_dict(state)
    approx = open_clip.create_model(model_name).eval()
    approx.load_state_dict(rounded)
    mean, std = image_mean_std(exact)
    downstream = []
    for split in SPLITS.values():
        per_class = max(1, images_per_split // len(split.classes))
        downstream += [draw_class_images(k, "test", per_class, seed=0) for k in split.classes]
    images = torch.cat([build_probe(mean, std).images, to_model_input(np.concatenate(downstream), mean, std)])
    texts = open_clip.get_tokenizer(model_name)([f"a photo of a {k.name}." for k in all_compositions()])

    def rel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).norm(dim=-1) / b.norm(dim=-1)

    r_img = rel(approx.encode_image(images), exact.encode_image(images))
    r_txt = rel(approx.encode_text(texts), exact.encode_text(texts))
    return {
        "image_max": r_img.max().item(), "image_mean": r_img.mean().item(), "images": len(images),
        "text_max": r_txt.max().item(), "text_mean": r_txt.mean().item(), "texts": len(texts),
    }


def ship(run_dir: str | Path, assets_dir: str | Path) -> dict:
    """Copy a pretraining run's checkpoint into ``assets_dir`` — in the smallest of ``PRECISIONS`` that moves no
    feature by more than ``FP16_TOLERANCE`` (relative) — with a record of the pretraining figures and of the zero-shot
    base / new / HM that the shipped file gives through ``load_clip`` on the downstream test split of each class
    split (default dataset settings). Refuses to overwrite an existing shipped file."""
    import tempfile

    from safetensors.torch import load_file, save_file

    from dept.clip import load_clip
    from dept.miniature import DownstreamConfig, write_miniature_dataset, zero_shot_base_new
    from dept.miniature.downstream import SPLITS, ZERO_SHOT_TEMPLATE

    run_dir, assets_dir = Path(run_dir), Path(assets_dir)
    source, source_record = run_dir / CHECKPOINT_NAME, run_dir / RECORD_NAME
    for p in (source, source_record):
        if not p.is_file():
            raise MiniatureError(f"not a finished pretraining run: {p} is missing")
    pretrain_record = json.loads(source_record.read_text(encoding="utf-8"))
    model_name = pretrain_record["model"]
    target = assets_dir / f"{model_name}.safetensors"
    target_record = assets_dir / f"{model_name}.json"
    for p in (target, target_record):
        if p.exists():
            raise MiniatureError(f"{p} already exists; remove it yourself to ship another checkpoint")

    state = load_file(str(source))
    tried = []
    for precision, keep_fp32 in PRECISIONS:
        rounded = _round(state, keep_fp32)
        change = feature_change(state, rounded, model_name)
        tried.append({"precision": precision, **change})
        log.info("%s: relative feature change %s", precision, change)
        if max(change["image_max"], change["text_max"]) <= FP16_TOLERANCE:
            break
    assets_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    save_file(rounded, str(tmp), metadata={"model": model_name, "format": "open_clip state dict", "precision": precision})
    os.chmod(tmp, 0o644)  # package data: readable by everyone (the writer creates it owner-only)
    os.replace(tmp, target)
    log.info("shipped %s as %s (%.1f MiB)", source, precision, target.stat().st_size / 2**20)

    clip = load_clip(model_name, str(target))
    zero_shot = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        for name in SPLITS:
            cfg = DownstreamConfig(split=name)
            folder = write_miniature_dataset(Path(tmpdir) / name, cfg)
            res = zero_shot_base_new(clip, folder, template=ZERO_SHOT_TEMPLATE)
            zero_shot[name] = {**res, "template": ZERO_SHOT_TEMPLATE,
                               "dataset": {k: v for k, v in asdict(cfg).items() if k != "shift"}}
            log.info("shipped checkpoint, zero-shot on %r: %s", name, res)
    record = {
        "model": model_name,
        "checkpoint": target.name,
        "sha256": file_sha256(target),
        "dtype": precision,
        "checkpoint_bytes": target.stat().st_size,
        "fp32_checkpoint_bytes": source.stat().st_size,
        "feature_change": {"tolerance": FP16_TOLERANCE, "tried": tried},
        "downstream_zero_shot": zero_shot,
        "pretraining": {k: pretrain_record[k] for k in (
            "model_cfg", "parameters", "settings", "steps", "steps_planned", "stopped_by_time", "pairs_seen",
            "wall_seconds", "final", "untrained", "probe", "versions", "sha256")},
        "replay": pretrain_record.get("replay"),
    }
    tmp = target_record.with_name(target_record.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, target_record)
    return record
