"""The miniature's downstream few-shot dataset: colour x shape classes ("red circle") drawn in a shifted domain
(see ``render.sample_downstream_scenes``), written in the custom-dataset layout (``DIR/split.json`` in CoOp's
format + ``DIR/images/``) so ``featurize --dataset-dir DIR`` and the base-to-new protocol run on it unchanged.

Two class splits. Labels put the base classes first, so the protocol's rule (sort the labels, base = the first
ceil(n/2)) gives exactly the designed base and new sets:

- ``shared``: 48 classes; base = red / green / blue x all 8 shapes, new = yellow / purple / cyan x all 8 shapes.
  Base and new share every shape; only the colours are new.
- ``disjoint``: 24 classes; base = red / green / blue x circle, square, triangle, star; new = the same colours x
  hexagon, diamond, cross, ring. No shape of a new class is seen among the base classes.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from PIL import Image

from dept.miniature.render import Shift, render, sample_downstream_scenes
from dept.miniature.world import COLOUR_NAMES, SHAPES, Composition, composition_index
from dept.scores import harmonic_mean

if TYPE_CHECKING:
    from dept.clip import LoadedClip

log = logging.getLogger(__name__)

#: Written first into a dataset folder; it marks the folder as this generator's and records its settings.
MARKER = "miniature_dataset.json"
#: Bump when the drawing or the class splits change, so an old folder is not taken for the new generator's.
GENERATOR_VERSION = 1
#: Distinguishes downstream images from the pair stream and the probe drawn with the same seed.
DOWNSTREAM_STREAM = 3
PARTS = ("train", "val", "test")
ZERO_SHOT_TEMPLATE = "a photo of a {}."


class MiniatureError(ValueError):
    """A miniature dataset or run cannot be made as asked; the message is one line."""


def _c(name: str) -> int:
    return COLOUR_NAMES.index(name)


def _s(name: str) -> int:
    return SHAPES.index(name)


@dataclass(frozen=True)
class ClassSplit:
    name: str
    base: tuple[Composition, ...]
    new: tuple[Composition, ...]
    description: str

    @property
    def classes(self) -> tuple[Composition, ...]:
        """Every class, in label order: base first."""
        return self.base + self.new

    @property
    def classnames(self) -> list[str]:
        return [k.name for k in self.classes]


def class_grid(colours: list[str], shapes: list[str]) -> tuple[Composition, ...]:
    """Every colour x shape composition, colours outer: the label order of a class split."""
    return tuple(Composition(_c(c), _s(s)) for c in colours for s in shapes)


SPLITS: dict[str, ClassSplit] = {
    "shared": ClassSplit(
        "shared",
        base=class_grid(["red", "green", "blue"], list(SHAPES)),
        new=class_grid(["yellow", "purple", "cyan"], list(SHAPES)),
        description="base and new share all 8 shapes; new classes have other colours",
    ),
    "disjoint": ClassSplit(
        "disjoint",
        base=class_grid(["red", "green", "blue"], ["circle", "square", "triangle", "star"]),
        new=class_grid(["red", "green", "blue"], ["hexagon", "diamond", "cross", "ring"]),
        description="base and new share colours; new classes have shapes no base class has",
    ),
}


def class_split(name: str) -> ClassSplit:
    if name not in SPLITS:
        raise MiniatureError(f"unknown miniature class split {name!r}; known: {', '.join(SPLITS)}")
    return SPLITS[name]


@dataclass(frozen=True)
class DownstreamConfig:
    split: str = "disjoint"
    seed: int = 0
    train_per_class: int = 32
    val_per_class: int = 8
    test_per_class: int = 100
    shift: Shift = Shift()

    def check(self) -> None:
        class_split(self.split)
        if self.train_per_class < 16:
            raise MiniatureError(f"train_per_class must be at least 16 (the protocol draws 16 shots), got {self.train_per_class}")
        if self.val_per_class < 4:
            raise MiniatureError(f"val_per_class must be at least 4 (the protocol draws 4 per class), got {self.val_per_class}")
        if self.test_per_class < 1:
            raise MiniatureError(f"test_per_class must be at least 1, got {self.test_per_class}")

    def settings(self) -> dict:
        split = class_split(self.split)
        return {
            "generator": "dept.miniature.downstream",
            "generator_version": GENERATOR_VERSION,
            **{k: v for k, v in asdict(self).items() if k != "shift"},
            # class_tint is recorded only when used, so folders written before it existed keep their settings.
            "shift": {k: v for k, v in asdict(self.shift).items() if k != "class_tint" or v},
            "description": split.description,
            "base": [k.name for k in split.base],
            "new": [k.name for k in split.new],
        }


def draw_class_images(composition: Composition, part: str, count: int, seed: int, shift: Shift = Shift()) -> np.ndarray:
    """uint8 ``[count, 32, 32, 3]``: the ``part`` images of one class. Keyed by (seed, composition, part), so a
    class's images do not depend on which other classes the split has."""
    rng = np.random.default_rng([int(seed), DOWNSTREAM_STREAM, composition_index(composition.colour, composition.shape), PARTS.index(part)])
    colour = np.full(count, composition.colour)
    shape = np.full(count, composition.shape)
    return render(sample_downstream_scenes(rng, colour, shape, shift), noise_rng=rng)


def check_folder(out: Path, settings: dict, what: str = "miniature dataset", marker: str = MARKER) -> None:
    """Refuse ``out`` unless it is absent, empty, or holds ``marker`` with exactly ``settings`` (then writing
    there completes it: a run killed half-way can be repeated). ``settings`` as read back from JSON."""
    path = out / marker
    if out.exists() and not out.is_dir():
        raise MiniatureError(f"{what}: {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not path.is_file():
            raise MiniatureError(f"{what}: {out} is not empty and holds no {marker}; choose an empty or new folder")
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise MiniatureError(f"{what}: {path} is not valid JSON; choose another folder") from None
        if previous != settings:
            raise MiniatureError(f"{what}: {out} holds a dataset written with other settings ({path}); choose another folder")


def write_marker(out: Path, settings: dict, marker: str = MARKER) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / marker).write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")


def write_class_images(out: Path, classes: Sequence[Composition], counts: dict[str, int],
                       draw: Callable[[Composition, str, int], np.ndarray]) -> None:
    """``out/images/<class>/<part>_<i>.png`` for every class (label = position in ``classes``) and part, then
    ``out/split.json`` (CoOp's format). ``draw(class, part, count)`` gives the uint8 images; parts with count 0
    stay empty lists."""
    entries: dict[str, list] = {p: [] for p in PARTS}
    for label, comp in enumerate(classes):
        folder = comp.name.replace(" ", "_")
        (out / "images" / folder).mkdir(parents=True, exist_ok=True)
        for part in PARTS:
            if not counts[part]:
                continue
            for i, pixels in enumerate(draw(comp, part, counts[part])):
                rel = f"{folder}/{part}_{i:03d}.png"
                Image.fromarray(pixels).save(out / "images" / rel, format="PNG")
                entries[part].append([rel, label, comp.name])
    tmp = out / "split.json.tmp"
    tmp.write_text(json.dumps(entries, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out / "split.json")  # the split file appears complete or not at all


def write_miniature_dataset(out_dir: str | os.PathLike, config: DownstreamConfig = DownstreamConfig()) -> Path:
    """Write the downstream dataset to ``out_dir`` (custom-dataset layout). Same config, byte-identical files.

    A folder that is not empty is refused unless it holds a dataset written with exactly these settings (then
    the call completes it: a run killed half-way can be repeated). Nothing is deleted.
    """
    config.check()
    out = Path(out_dir)
    settings = json.loads(json.dumps(config.settings()))  # as read back from the marker (tuples become lists)
    check_folder(out, settings)
    write_marker(out, settings)
    split = class_split(config.split)
    counts = {"train": config.train_per_class, "val": config.val_per_class, "test": config.test_per_class}
    write_class_images(out, split.classes, counts, lambda comp, part, n: draw_class_images(comp, part, n, config.seed, config.shift))
    log.info(
        "wrote miniature dataset %r: %d base + %d new classes, %s images per class, to %s",
        config.split, len(split.base), len(split.new), counts, out,
    )
    return out


def zero_shot_base_new(clip: "LoadedClip", dataset_dir: str | os.PathLike, template: str = ZERO_SHOT_TEMPLATE, batch_size: int = 512) -> dict[str, float]:
    """Zero-shot CLIP on a dataset's test split under the base-to-new protocol: base accuracy among the base
    classes, new accuracy among the new classes (sorted labels, base = first ceil(n/2)), their HM, and the
    accuracy among all classes. Images go through ``clip.preprocess_test`` and ``encode_image``; no cache."""
    # Here, not at the top: writing the miniature's images needs no torch, scoring it does.
    import torch

    from dept.datasets import base_new_split, load_custom_dataset
    from dept.zero_shot import zero_shot_classifier

    if clip.preprocess_test is None:
        raise MiniatureError("zero-shot needs the image tower: load the CLIP without text_only")
    splits = load_custom_dataset(dataset_dir)
    base, new = base_new_split(splits.num_classes)
    model = clip.model
    with torch.no_grad():
        feats = []
        for i in range(0, len(splits.test), batch_size):
            chunk = splits.test[i : i + batch_size]
            x = torch.stack([clip.preprocess_test(Image.open(splits.image_path(it)).convert("RGB")) for it in chunk])
            feats.append(model.encode_image(x))
    sim = zero_shot_classifier(clip, splits.classnames, template).logits(torch.cat(feats))
    labels = torch.tensor([it.label for it in splits.test])

    def acc(classes: list[int]) -> float:
        keep = torch.isin(labels, torch.tensor(classes))
        pred = torch.tensor(classes)[sim[keep][:, classes].argmax(dim=-1)]
        return 100.0 * (pred == labels[keep]).float().mean().item()

    b, n = acc(base), acc(new)
    return {"base_acc": b, "new_acc": n, "hm": harmonic_mean(b, n), "all_acc": acc(list(range(splits.num_classes)))}
