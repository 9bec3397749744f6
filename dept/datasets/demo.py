"""A small generated dataset in the custom-dataset layout, for tests and demos.

Classes are colour x shape compositions ("red circle", "blue square", ...). Every image is drawn procedurally:
a textured, noisy background and one shape of the class colour at a random size, position and rotation.
The output depends only on the arguments (seed included), so writing it twice gives byte-identical files.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from .types import DatasetError

log = logging.getLogger(__name__)

#: Written first into a demo folder; it marks the folder as a demo dataset and records the arguments.
MARKER = "demo_dataset.json"
#: Bump when the drawing changes, so an old folder is not taken for the output of the new generator.
GENERATOR_VERSION = 1

COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (220, 30, 35)),
    ("green", (35, 170, 50)),
    ("blue", (35, 70, 225)),
    ("yellow", (240, 215, 30)),
    ("purple", (135, 45, 175)),
    ("orange", (245, 130, 20)),
    ("cyan", (30, 205, 215)),
    ("pink", (245, 125, 185)),
    ("brown", (125, 75, 30)),
    ("white", (248, 248, 248)),
    ("black", (12, 12, 12)),
    ("lime", (170, 240, 40)),
)
SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "pentagon", "ring", "arrow",
)
MAX_CLASSES = len(COLOURS) * len(SHAPES)


def demo_classes(num_classes: int) -> list[tuple[str, str]]:
    """The first ``num_classes`` (colour, shape) compositions.

    Class ``k`` has colour ``k mod C`` and shape ``(k mod C + k div C) mod S``: a bijection onto all C x S pairs in
    which the first classes differ in both colour and shape (the first 10 use 10 colours and 10 shapes).
    """
    if not 1 <= num_classes <= MAX_CLASSES:
        raise DatasetError(f"demo dataset: num_classes must be 1..{MAX_CLASSES}, got {num_classes}")
    out = []
    for k in range(num_classes):
        c = k % len(COLOURS)
        s = (c + k // len(COLOURS)) % len(SHAPES)
        out.append((COLOURS[c][0], SHAPES[s]))
    return out


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of ``shape`` (radius ``r``, centre ``(cx, cy)``) rotated by ``angle`` radians."""
    if shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2 + i * 2 * math.pi / 3 for i in range(3))]
    elif shape == "square":
        pts = [(-0.75, -0.75), (0.75, -0.75), (0.75, 0.75), (-0.75, 0.75)]
    elif shape == "pentagon":
        pts = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2 + i * 2 * math.pi / 5 for i in range(5))]
    elif shape == "hexagon":
        pts = [(math.cos(a), math.sin(a)) for a in (i * math.pi / 3 for i in range(6))]
    elif shape == "star":
        pts = [
            ((1.0 if i % 2 == 0 else 0.42) * math.cos(a), (1.0 if i % 2 == 0 else 0.42) * math.sin(a))
            for i, a in enumerate(-math.pi / 2 + i * math.pi / 5 for i in range(10))
        ]
    elif shape == "diamond":
        pts = [(0.0, -1.0), (0.6, 0.0), (0.0, 1.0), (-0.6, 0.0)]
    elif shape == "cross":
        a, b = 0.3, 0.9
        pts = [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a),
               (-a, -a)]
    elif shape == "arrow":
        pts = [(-0.9, -0.25), (0.2, -0.25), (0.2, -0.6), (0.95, 0.0), (0.2, 0.6), (0.2, 0.25), (-0.9, 0.25)]
    else:
        raise ValueError(f"not a polygon shape: {shape}")
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in pts]


def _background(rng: random.Random, size: int) -> Image.Image:
    """A random texture (plain, stripes, checks or dots) in muted colours, blended with per-pixel noise."""
    base = tuple(rng.randint(70, 185) for _ in range(3))
    alt = tuple(max(0, min(255, v + rng.randint(-45, 45))) for v in base)
    img = Image.new("RGB", (size, size), base)
    draw = ImageDraw.Draw(img)
    texture = rng.choice(("plain", "stripes", "checks", "dots"))
    period = rng.randint(max(3, size // 16), max(4, size // 5))
    if texture == "stripes":
        for x in range(-size, 2 * size, period):
            draw.line([(x, 0), (x + size, size)] if rng.random() < 0.5 else [(x, 0), (x, size)],
                      fill=alt, width=max(1, period // 2))
    elif texture == "checks":
        for y in range(0, size, period):
            for x in range(0, size, period):
                if (x // period + y // period) % 2:
                    draw.rectangle([x, y, x + period - 1, y + period - 1], fill=alt)
    elif texture == "dots":
        for _ in range(rng.randint(8, 30)):
            x, y, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(1, size / 12)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=alt)
    noise = Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3))
    return Image.blend(img, noise, rng.uniform(0.12, 0.3))


def draw_demo_image(colour: tuple[int, int, int], shape: str, rng: random.Random, size: int) -> Image.Image:
    """One image: ``shape`` in (a jittered) ``colour`` on a random background, random size/position/rotation."""
    img = _background(rng, size)
    # Draw the shape on a 4x mask and shrink it, for anti-aliased edges.
    ss = 4
    big = size * ss
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    r = rng.uniform(0.18, 0.38) * big
    cx = rng.uniform(r * 0.8, big - r * 0.8)
    cy = rng.uniform(r * 0.8, big - r * 0.8)
    angle = rng.uniform(0, 2 * math.pi)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        inner = r * rng.uniform(0.45, 0.6)
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=255)
    mask = mask.resize((size, size), Image.Resampling.BOX)
    jitter = tuple(max(0, min(255, v + rng.randint(-18, 18))) for v in colour)
    shade = Image.new("RGB", (size, size), jitter)
    img.paste(shade, (0, 0), mask)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    return img


def _settings(num_classes: int, train_per_class: int, val_per_class: int, test_per_class: int, image_size: int,
              seed: int) -> dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "num_classes": num_classes,
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "test_per_class": test_per_class,
        "image_size": image_size,
        "seed": seed,
    }


def write_demo_dataset(
    out_dir: str | os.PathLike,
    *,
    num_classes: int = 10,
    train_per_class: int = 20,
    val_per_class: int = 4,
    test_per_class: int = 10,
    image_size: int = 64,
    seed: int = 0,
) -> Path:
    """Write a generated dataset in the custom layout and return its folder.

    Layout: ``out_dir/split.json`` (CoOp's split format), ``out_dir/images/<colour_shape>/<n>.png`` with ``n``
    numbering a class's train, then val, then test images, and ``out_dir/demo_dataset.json`` recording the
    arguments. Refuses (:class:`DatasetError`) a folder that is not empty and not a demo dataset, or a demo dataset
    written with other arguments; writing the same arguments again rewrites identical files (and completes a
    folder an interrupted run left behind).
    """
    out = Path(out_dir)
    counts = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
    if any(v < 0 for v in counts.values()) or train_per_class + val_per_class + test_per_class == 0:
        raise DatasetError(f"demo dataset: image counts per class must be >= 0 and not all 0, got {counts}: {out}")
    if image_size < 16:
        raise DatasetError(f"demo dataset: image_size must be >= 16, got {image_size}: {out}")
    classes = demo_classes(num_classes)
    settings = _settings(num_classes, train_per_class, val_per_class, test_per_class, image_size, seed)

    marker = out / MARKER
    if out.exists() and not out.is_dir():
        raise DatasetError(f"demo dataset: output path exists and is not a folder: {out}")
    if out.is_dir() and any(out.iterdir()):
        if not marker.is_file():
            raise DatasetError(
                f"demo dataset: refusing to write into a non-empty folder that is not a demo dataset: {out}"
            )
        try:
            previous = json.loads(marker.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            previous = None
        if previous != settings:
            raise DatasetError(
                f"demo dataset: {out} holds a demo dataset written with other settings ({marker}); "
                f"choose another folder"
            )

    out.mkdir(parents=True, exist_ok=True)
    # The marker goes first so that a run killed half-way leaves a folder the same call may complete.
    marker.write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    colour_rgb = dict(COLOURS)
    for label, (colour, shape) in enumerate(classes):
        classname = f"{colour} {shape}"
        folder = f"{colour}_{shape}"
        (out / "images" / folder).mkdir(parents=True, exist_ok=True)
        n = 0
        for part in ("train", "val", "test"):
            for _ in range(counts[part]):
                # A per-image RNG keyed by (seed, class, n): an image does not depend on how many others exist.
                rng = random.Random(f"dept-demo:{seed}:{label}:{n}")
                img = draw_demo_image(colour_rgb[colour], shape, rng, image_size)
                rel = f"{folder}/{n}.png"
                img.save(out / "images" / rel, format="PNG", optimize=False)
                split[part].append([rel, label, classname])
                n += 1
    tmp = out / "split.json.tmp"
    tmp.write_text(json.dumps(split, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out / "split.json")  # the split file appears complete or not at all
    log.info("wrote demo dataset: %d classes, %s images per class, to %s", num_classes, counts, out)
    return out
