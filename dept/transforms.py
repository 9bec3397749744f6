"""Image transforms for feature caching.

- ``test_transform``: the CLIP test transform (resize the shorter side, centre crop, normalise) -- open_clip's own,
  identical to ``LoadedClip.preprocess_test``, so a cached view-0 feature equals ``encode_image(preprocess_test(x))``.
- ``train_view``: one augmented training view (random resized crop, scale 0.08-1, bicubic, + horizontal flip,
  CLIP mean/std), as in the reference training recipe. Because features are cached, "a fresh augmentation every
  epoch" becomes "K views drawn once"; each view is a pure function of (seed, image id, view index) so any worker on
  any machine, in any order, on any rerun, produces the same pixels.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from dept.config import CROP_RATIO, CROP_SCALE, FLIP_P  # noqa: F401  (the training views' recipe, re-exported)


def test_transform(image_size: int, mean, std) -> Callable[[Image.Image], torch.Tensor]:
    """open_clip's evaluation transform for a model of this input size and normalisation."""
    import open_clip  # imported here: the training-view code below needs only torch/torchvision/PIL

    return open_clip.image_transform(image_size, is_train=False, mean=tuple(mean), std=tuple(std))


test_transform.__test__ = False  # its name starts with "test": keep pytest from collecting it where imported


def view_generator(seed: int, image_id: str, view: int) -> torch.Generator:
    """A torch Generator seeded from a stable hash of (seed, image id, view).

    Python's ``hash()`` is salted per process, so it cannot be used; sha256 is stable across processes and machines.
    """
    digest = hashlib.sha256(f"{int(seed)}\x1f{image_id}\x1f{int(view)}".encode()).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return float(low + (high - low) * torch.rand((), generator=g, dtype=torch.float64))


def _randint(g: torch.Generator, low: int, high_inclusive: int) -> int:
    return int(torch.randint(low, high_inclusive + 1, (1,), generator=g))


@dataclass(frozen=True)
class CropBox:
    top: int
    left: int
    height: int
    width: int


def sample_crop(
    width: int,
    height: int,
    g: torch.Generator,
    scale: tuple[float, float] = CROP_SCALE,
    ratio: tuple[float, float] = CROP_RATIO,
) -> CropBox:
    """Inception-style crop box: area fraction uniform in ``scale``, log-aspect uniform in ``log(ratio)``.

    Up to ten tries for a box that fits; otherwise the largest centred box whose aspect ratio is clamped to
    ``ratio``. Sampled from ``g`` (torchvision's ``get_params`` would draw from the global RNG).
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * _uniform(g, scale[0], scale[1])
        aspect = math.exp(_uniform(g, log_lo, log_hi))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return CropBox(_randint(g, 0, height - h), _randint(g, 0, width - w), h, w)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return CropBox((height - h) // 2, (width - w) // 2, h, w)


def train_view(
    image: Image.Image,
    *,
    image_size: int,
    mean,
    std,
    seed: int,
    image_id: str,
    view: int,
    crop_scale_min: float = CROP_SCALE[0],
) -> torch.Tensor:
    """One augmented training view [3, image_size, image_size], deterministic per (seed, image_id, view).
    ``crop_scale_min``: the smallest crop, as a fraction of the image area (the papers' 0.08 suits photographs
    whose object fills the frame; small objects on a background need a larger one)."""
    g = view_generator(seed, image_id, view)
    image = image.convert("RGB")
    box = sample_crop(image.width, image.height, g, scale=(crop_scale_min, CROP_SCALE[1]))
    out = F.resized_crop(
        image, box.top, box.left, box.height, box.width, [image_size, image_size],
        interpolation=InterpolationMode.BICUBIC,
    )
    if float(torch.rand((), generator=g)) < FLIP_P:
        out = F.hflip(out)
    return F.normalize(F.to_tensor(out), mean=list(mean), std=list(std))


def describe_train_view(seed: int, crop_scale_min: float = CROP_SCALE[0]) -> dict:
    """What the manifest records about the training views (part of the store's fingerprint)."""
    return {
        "kind": "random_resized_crop+hflip",
        "scale": [float(crop_scale_min), CROP_SCALE[1]],
        "ratio": list(CROP_RATIO),
        "interpolation": "bicubic",
        "flip_p": FLIP_P,
        "seed": int(seed),
        "rng": "torch.Generator seeded by sha256(seed, image_id, view)",
    }


def describe_test_transform(image_size: int) -> dict:
    return {
        "kind": "open_clip.image_transform(is_train=False)",
        "resize_shorter_side": int(image_size),
        "interpolation": "bicubic",
        "center_crop": int(image_size),
    }
