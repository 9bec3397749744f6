"""The miniature's transfer suite: a source dataset with all its classes (the ImageNet analogue) and the targets
of the paper's two transfer protocols, each a dataset in the custom layout (``DIR/<name>/split.json`` +
``DIR/<name>/images/``); targets hold test images only and declare their role in ``DIR/<name>/transfer.json``.

- ``mini-source``: red / green / blue x all 8 shapes (the ``shared`` split's base classes, same label order and,
  for the same seed, the same images), in the downstream domain; train / val / test.
- domain generalisation (the source's classes in another domain):
  ``mini-v2`` the same domain, a fresh draw (ImageNetV2); ``mini-sketch`` outlines on plain paper
  (ImageNet-Sketch); ``mini-r`` striped / dotted renditions on other backgrounds, 12 of the classes
  (ImageNet-R); ``mini-a`` small, faint shapes under heavy noise, another 12 (ImageNet-A).
- cross-dataset (own classes, none of the source's): ``mini-other-colours-a`` / ``-b``, yellow / purple / cyan
  x the first / last 4 shapes, in the downstream domain.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dept.datasets.types import TRANSFER_FILE
from dept.miniature.downstream import (
    PARTS,
    DownstreamConfig,
    MiniatureError,
    check_folder,
    class_grid,
    class_split,
    draw_class_images,
    write_class_images,
    write_marker,
)
from dept.miniature.render import (
    render,
    sample_downstream_scenes,
    sample_hard_scenes,
    sample_rendition_scenes,
    sample_sketch_scenes,
)
from dept.miniature.world import SHAPES, Composition, composition_index
from dept.protocols import CROSS_DATASET, DOMAIN_GENERALIZATION

log = logging.getLogger(__name__)

#: Written first into the suite's folder; it marks the folder as this suite's and records its settings.
SUITE_MARKER = "miniature_suite.json"
#: Bump when a target's drawing or classes change.
TRANSFER_VERSION = 1
#: Distinguishes the targets' images from every other stream drawn with the same seed (downstream: 3).
TRANSFER_STREAM = 6
SOURCE = "mini-source"

#: How each domain's scenes are sampled (``downstream``: the source's own domain).
DOMAINS = {
    "downstream": sample_downstream_scenes,
    "sketch": sample_sketch_scenes,
    "rendition": sample_rendition_scenes,
    "hard": sample_hard_scenes,
}

SOURCE_CLASSES: tuple[Composition, ...] = class_split("shared").base
#: The class subsets of mini-r and mini-a, as source labels: every other source label (each colour with circle,
#: triangle, hexagon, cross), and a colour x shape checkerboard (red and blue with the other 4 shapes, green with
#: those 4), so the two share the 4 green classes.
R_LABELS: tuple[int, ...] = tuple(range(0, len(SOURCE_CLASSES), 2))
A_LABELS: tuple[int, ...] = tuple(i for i in range(len(SOURCE_CLASSES)) if (i + i // len(SHAPES)) % 2 == 1)


@dataclass(frozen=True)
class TransferDataset:
    """One dataset of the suite. ``stream`` keys its images (fixed per dataset, so they do not depend on which
    other datasets are written); ``protocol`` is None for the source."""

    name: str
    classes: tuple[Composition, ...]
    domain: str
    stream: int
    description: str
    protocol: str | None = None
    label_to_source: tuple[int, ...] | None = None

    @property
    def role(self) -> str:
        return "source" if self.protocol is None else self.protocol

    def transfer(self) -> dict | None:
        """The ``transfer.json`` declaration of a target (None for the source)."""
        if self.protocol is None:
            return None
        out: dict = {"protocol": self.protocol, "source": SOURCE}
        if self.label_to_source is not None:
            out["label_to_source"] = list(self.label_to_source)
        return out


def _subset(labels: tuple[int, ...]) -> tuple[Composition, ...]:
    return tuple(SOURCE_CLASSES[i] for i in labels)


SUITE: tuple[TransferDataset, ...] = (
    TransferDataset(SOURCE, SOURCE_CLASSES, "downstream", 0, "the source: all its classes, train / val / test"),
    TransferDataset("mini-v2", SOURCE_CLASSES, "downstream", 1, "the source's domain, a fresh draw", DOMAIN_GENERALIZATION),
    TransferDataset("mini-sketch", SOURCE_CLASSES, "sketch", 2, "outlines only, on plain light paper", DOMAIN_GENERALIZATION),
    TransferDataset("mini-r", _subset(R_LABELS), "rendition", 3, "striped / dotted fills on other backgrounds, 12 classes",
                    DOMAIN_GENERALIZATION, R_LABELS),
    TransferDataset("mini-a", _subset(A_LABELS), "hard", 4, "small faint shapes under heavy noise, 12 classes",
                    DOMAIN_GENERALIZATION, A_LABELS),
    TransferDataset("mini-other-colours-a", class_grid(["yellow", "purple", "cyan"], list(SHAPES[:4])), "downstream", 5,
                    "other colours x circle, square, triangle, star", CROSS_DATASET),
    TransferDataset("mini-other-colours-b", class_grid(["yellow", "purple", "cyan"], list(SHAPES[4:])), "downstream", 6,
                    "other colours x hexagon, diamond, cross, ring", CROSS_DATASET),
)


@dataclass(frozen=True)
class TransferSuiteConfig:
    seed: int = 0
    train_per_class: int = 32
    val_per_class: int = 8
    test_per_class: int = 50  # the source's test images
    target_test_per_class: int = 50

    def check(self) -> None:
        DownstreamConfig(split="shared", seed=self.seed, train_per_class=self.train_per_class,
                         val_per_class=self.val_per_class, test_per_class=self.test_per_class).check()
        if self.target_test_per_class < 1:
            raise MiniatureError(f"target_test_per_class must be at least 1, got {self.target_test_per_class}")

    def counts(self, dataset: TransferDataset) -> dict[str, int]:
        if dataset.protocol is None:
            return {"train": self.train_per_class, "val": self.val_per_class, "test": self.test_per_class}
        return {"train": 0, "val": 0, "test": self.target_test_per_class}

    def settings(self) -> dict:
        return {"generator": __name__, "generator_version": TRANSFER_VERSION, **asdict(self), "datasets": [d.name for d in SUITE]}

    def dataset_settings(self, dataset: TransferDataset) -> dict:
        return {
            "generator": __name__, "generator_version": TRANSFER_VERSION, "name": dataset.name, "role": dataset.role,
            "domain": dataset.domain, "description": dataset.description, "seed": self.seed,
            "per_class": self.counts(dataset), "classes": [k.name for k in dataset.classes], "transfer": dataset.transfer(),
        }


def draw_target_images(dataset: TransferDataset, composition: Composition, part: str, count: int, seed: int) -> np.ndarray:
    """uint8 ``[count, 32, 32, 3]``, keyed by (seed, dataset, composition, part)."""
    rng = np.random.default_rng([int(seed), TRANSFER_STREAM, dataset.stream,
                                 composition_index(composition.colour, composition.shape), PARTS.index(part)])
    colour, shape = np.full(count, composition.colour), np.full(count, composition.shape)
    return render(DOMAINS[dataset.domain](rng, colour, shape), noise_rng=rng)


@dataclass(frozen=True)
class WrittenDataset:
    name: str
    path: Path
    classes: int
    images: int
    role: str


def write_transfer_suite(out_dir: str | os.PathLike, config: TransferSuiteConfig = TransferSuiteConfig()) -> list[WrittenDataset]:
    """Write every dataset of ``SUITE`` to ``out_dir/<name>``. Same config, byte-identical files. A folder that
    is not empty is refused unless it holds this suite with exactly these settings (then it is completed);
    every dataset folder is checked the same way, all before anything is written. Nothing is deleted."""
    config.check()
    out = Path(out_dir)
    settings = json.loads(json.dumps(config.settings()))
    per_dataset = [json.loads(json.dumps(config.dataset_settings(d))) for d in SUITE]
    check_folder(out, settings, what="miniature transfer suite", marker=SUITE_MARKER)
    for dataset, s in zip(SUITE, per_dataset):
        check_folder(out / dataset.name, s, what="miniature transfer suite")
    write_marker(out, settings, SUITE_MARKER)
    written = []
    for dataset, s in zip(SUITE, per_dataset):
        folder = out / dataset.name
        write_marker(folder, s)
        if dataset.protocol is not None:
            (folder / TRANSFER_FILE).write_text(json.dumps(dataset.transfer(), indent=1) + "\n", encoding="utf-8")
        counts = config.counts(dataset)
        if dataset.protocol is None:  # the shared split's base classes, image for image
            def draw(comp, part, n):
                return draw_class_images(comp, part, n, config.seed)
        else:
            def draw(comp, part, n, dataset=dataset):
                return draw_target_images(dataset, comp, part, n, config.seed)
        write_class_images(folder, dataset.classes, counts, draw)
        written.append(WrittenDataset(dataset.name, folder, len(dataset.classes), len(dataset.classes) * sum(counts.values()), dataset.role))
        log.info("wrote %s (%s, %d classes, %s images per class) to %s", dataset.name, dataset.role, len(dataset.classes), counts, folder)
    return written
