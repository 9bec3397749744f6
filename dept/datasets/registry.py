"""The registry of known datasets: one :class:`DatasetSpec` per dataset, holding every per-dataset fact as data
(folder, image folder, split file, reader, KgCoOp template, class renames), so no code branches on dataset names."""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from . import readers
from .types import DatasetError, DatasetSplits

log = logging.getLogger(__name__)

#: KgCoOp's hand-crafted template for datasets that have none of their own (and for custom datasets).
DEFAULT_KGCOOP_TEMPLATE = "a photo of a {}."

BASE_TO_NEW = "base_to_new"
DOMAIN_GENERALISATION = "domain_generalisation"


def _frozen(mapping: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lives under the data root and how to read it.

    ``folder``: the dataset's folder under the data root; ``image_subdir``: the image folder inside it ("" = the
    folder itself); ``split_file``: the main split/label file inside it (what :func:`locate` looks for);
    ``reader(spec, dataset_dir) -> DatasetSplits``; ``kgcoop_template``: KgCoOp's hand-crafted prompt, with ``{}``
    for the class name; ``classname_renames``: raw class name -> prompt name, applied before ``_`` -> space.
    """

    name: str
    folder: str
    image_subdir: str
    split_file: str
    reader: Callable[[DatasetSpec, str], DatasetSplits]
    kgcoop_template: str = DEFAULT_KGCOOP_TEMPLATE
    classname_renames: Mapping[str, str] = field(default_factory=lambda: _frozen({}))
    #: base-to-new datasets (the paper's 11) or ImageNet's domain-generalisation targets
    protocol: str = BASE_TO_NEW
    #: further label files read besides ``split_file`` (FGVCAircraft's per-split lists, train/val/test order)
    extra_files: tuple[str, ...] = ()
    #: raw class names / top-level image folders whose split entries are skipped (Caltech101)
    dropped_classes: tuple[str, ...] = ()
    #: ImageNet variants: class folders are named by line index in classnames.txt, not by wnid (ImageNetV2)
    class_folders_by_index: bool = False
    #: ImageNet variants: the dataset holds a subset of the 1000 classes; labels cover only those (A, R)
    class_subset: bool = False
    #: ImageNet: images per class held out of images/train as the validation split (see readers.read_imagenet)
    val_holdout_per_class: int = 0

    def dataset_dir(self, data_root: str | os.PathLike) -> str:
        return os.path.join(os.fspath(data_root), self.folder)

    def required_paths(self, data_root: str | os.PathLike) -> list[str]:
        """Files and folders that must exist for the dataset to load, in the order they are checked."""
        d = self.dataset_dir(data_root)
        return [os.path.join(d, f) for f in (self.split_file, *self.extra_files)] + [
            os.path.join(d, self.image_subdir) if self.image_subdir else d
        ]


_SPECS: tuple[DatasetSpec, ...] = (
    DatasetSpec(
        "ImageNet", "imagenet", "images", "classnames.txt", readers.read_imagenet,
        # CoOp reuses the test images for validation; we hold out 10 train images per class instead, so the
        # tuning objective never sees test images (few-shot val draws take min(shots, 4) of them).
        val_holdout_per_class=10,
    ),
    DatasetSpec(
        "Caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json",
        readers.read_json_dataset,
        # CoOp's split file already carries these prompt names; mapping the folder names keeps other files working.
        classname_renames=_frozen(
            {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}
        ),
        dropped_classes=("BACKGROUND_Google", "Faces_easy"),
    ),
    DatasetSpec(
        "OxfordPets", "oxford_pets", "images", "split_zhou_OxfordPets.json", readers.read_json_dataset,
        kgcoop_template="a photo of a {}, a type of pet.",
    ),
    DatasetSpec(
        "StanfordCars", "stanford_cars", "", "split_zhou_StanfordCars.json", readers.read_json_dataset,
    ),
    DatasetSpec(
        "Flowers102", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json", readers.read_json_dataset,
        kgcoop_template="a photo of a {}, a type of flower.",
    ),
    DatasetSpec(
        "Food101", "food-101", "images", "split_zhou_Food101.json", readers.read_json_dataset,
        kgcoop_template="a photo of {}, a type of food.",
    ),
    DatasetSpec(
        "FGVCAircraft", "fgvc_aircraft", "images", "variants.txt", readers.read_fgvc_aircraft,
        kgcoop_template="a photo of a {}, a type of aircraft.",
        extra_files=("images_variant_train.txt", "images_variant_val.txt", "images_variant_test.txt"),
    ),
    DatasetSpec(
        "SUN397", "sun397", "SUN397", "split_zhou_SUN397.json", readers.read_json_dataset,
    ),
    DatasetSpec(
        "DTD", "dtd", "images", "split_zhou_DescribableTextures.json", readers.read_json_dataset,
        kgcoop_template="{} texture.",
    ),
    DatasetSpec(
        "EuroSAT", "eurosat", "2750", "split_zhou_EuroSAT.json", readers.read_json_dataset,
        kgcoop_template="a centered satellite photo of {}.",
        classname_renames=_frozen({
            "AnnualCrop": "Annual Crop Land",
            "Forest": "Forest",
            "HerbaceousVegetation": "Herbaceous Vegetation Land",
            "Highway": "Highway or Road",
            "Industrial": "Industrial Buildings",
            "Pasture": "Pasture Land",
            "PermanentCrop": "Permanent Crop Land",
            "Residential": "Residential Buildings",
            "River": "River",
            "SeaLake": "Sea or Lake",
        }),
    ),
    DatasetSpec(
        "UCF101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", readers.read_json_dataset,
        kgcoop_template="a photo of a person doing {}.",
    ),
    DatasetSpec(
        "ImageNetV2", "imagenetv2", "imagenetv2-matched-frequency-format-val", "classnames.txt",
        readers.read_imagenet_variant, protocol=DOMAIN_GENERALISATION, class_folders_by_index=True,
    ),
    DatasetSpec(
        "ImageNetSketch", "imagenet-sketch", "images", "classnames.txt",
        readers.read_imagenet_variant, protocol=DOMAIN_GENERALISATION,
    ),
    DatasetSpec(
        "ImageNetA", "imagenet-adversarial", "imagenet-a", "classnames.txt",
        readers.read_imagenet_variant, protocol=DOMAIN_GENERALISATION, class_subset=True,
    ),
    DatasetSpec(
        "ImageNetR", "imagenet-rendition", "imagenet-r", "classnames.txt",
        readers.read_imagenet_variant, protocol=DOMAIN_GENERALISATION, class_subset=True,
    ),
)

_BY_KEY: dict[str, DatasetSpec] = {s.name.lower(): s for s in _SPECS}


def dataset_names(protocol: str | None = None) -> list[str]:
    """Known dataset names: the 11 base-to-new datasets in the paper's table order, then the 4 ImageNet variants.

    ``protocol="base_to_new"`` or ``"domain_generalisation"`` gives only that group.
    """
    if protocol not in (None, BASE_TO_NEW, DOMAIN_GENERALISATION):
        raise ValueError(f"unknown protocol {protocol!r}; known: {BASE_TO_NEW}, {DOMAIN_GENERALISATION}")
    return [s.name for s in _SPECS if protocol is None or s.protocol == protocol]


def get_spec(name: str) -> DatasetSpec:
    """The spec of a known dataset; names match case-insensitively (``oxfordpets`` is OxfordPets)."""
    spec = _BY_KEY.get(str(name).lower())
    if spec is None:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}")
    return spec


def kgcoop_template(name: str) -> str:
    """KgCoOp's hand-crafted prompt template for a dataset (``{}`` = class name).

    Datasets without their own template, custom datasets included, get ``"a photo of a {}."``.
    """
    spec = _BY_KEY.get(str(name).lower())
    return spec.kgcoop_template if spec is not None else DEFAULT_KGCOOP_TEMPLATE


def locate(name: str, data_root: str | os.PathLike) -> tuple[bool, str]:
    """Is dataset ``name`` present under ``data_root``? Returns ``(found, path)``.

    ``path`` is the dataset's main split/label file when found, else the first required path that is missing
    (data root, split/label files, image folder, in that order). Cheap: images are not checked; :func:`load_dataset`
    does that.
    """
    spec = get_spec(name)
    root = os.fspath(data_root)
    if not os.path.isdir(root):
        return False, os.path.abspath(root)
    for path in spec.required_paths(root):
        if not os.path.exists(path):
            return False, os.path.abspath(path)
    return True, os.path.abspath(spec.required_paths(root)[0])


def load_dataset(name: str, data_root: str | os.PathLike) -> DatasetSplits:
    """Read a known dataset from its CoOp folder layout under ``data_root``.

    Raises :class:`DatasetError` (one line, naming the dataset and the path) for an unknown name, a missing data
    root, dataset folder, split/label file or image folder, a malformed split file, or a listed image that does not
    exist.
    """
    spec = get_spec(name)
    root = os.fspath(data_root)
    if not os.path.isdir(root):
        raise DatasetError(f"{spec.name}: data root does not exist: {os.path.abspath(root)}")
    dataset_dir = spec.dataset_dir(root)
    if not os.path.isdir(dataset_dir):
        raise DatasetError(f"{spec.name}: dataset folder not found: {os.path.abspath(dataset_dir)}")
    for path in spec.required_paths(root):
        if not os.path.exists(path):
            what = "image folder" if path == spec.required_paths(root)[-1] else "split file"
            raise DatasetError(f"{spec.name}: {what} not found: {os.path.abspath(path)}")
    splits = spec.reader(spec, dataset_dir)
    log.info(
        "%s: %d classes, %d train / %d val / %d test images from %s",
        spec.name, splits.num_classes, len(splits.train), len(splits.val), len(splits.test), splits.split_file,
    )
    return splits


def load_custom_dataset(dataset_dir: str | os.PathLike) -> DatasetSplits:
    """Read a dataset in the custom layout: ``DIR/split.json`` in CoOp's split format, images under
    ``DIR/images/``. Its name is the folder's name. Class names get ``_`` -> space, no renames."""
    d = os.path.abspath(os.fspath(dataset_dir))
    name = os.path.basename(os.path.normpath(d)) or d
    if not os.path.isdir(d):
        raise DatasetError(f"{name}: custom dataset folder does not exist: {d}")
    split_path = os.path.join(d, "split.json")
    if not os.path.isfile(split_path):
        raise DatasetError(f"{name}: split file not found: {split_path}")
    image_root = os.path.join(d, "images")
    if not os.path.isdir(image_root):
        raise DatasetError(f"{name}: image folder not found: {image_root}")
    splits = readers.read_split_json(name, split_path, image_root)
    log.info(
        "%s: %d classes, %d train / %d val / %d test images from %s",
        name, splits.num_classes, len(splits.train), len(splits.val), len(splits.test), split_path,
    )
    return splits
