"""The registry of known datasets: one :class:`DatasetSpec` per dataset, holding every per-dataset fact as data
(folder, image folder, split file, reader, zero-shot and KgCoOp templates, class renames), so no code branches on
dataset names.

Templates: CoOp's hand-crafted zero-shot prompts (its ``zsclip.py``) and KgCoOp's target prompts (KgCoOp's and
DePT's ``kgcoop.py``) are one table but for DTD: zero-shot "{} texture.", KgCoOp "a photo of a {}, a type of
texture."."""
from __future__ import annotations

import json
import logging
import os

from dept.protocols import BASE_TO_NEW, CROSS_DATASET, DEFAULT_SOURCE, DOMAIN_GENERALIZATION, TRANSFER_PROTOCOLS

from . import readers
from .types import (
    DEFAULT_KGCOOP_TEMPLATE,
    DEFAULT_TEMPLATE,
    TRANSFER_FILE,
    DatasetError,
    DatasetSpec,
    DatasetSplits,
    TargetOf,
    frozen_mapping,
)

log = logging.getLogger(__name__)

#: The paper's transfer protocols: ImageNet is the source; the other 10 datasets are its cross-dataset targets, the
#: 4 variants its domain-generalisation targets.
_CROSS_DATASET_OF_IMAGENET = (CROSS_DATASET, DEFAULT_SOURCE)
_DOMAIN_OF_IMAGENET = (DOMAIN_GENERALIZATION, DEFAULT_SOURCE)

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
        classname_renames=frozen_mapping(
            {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}
        ),
        dropped_classes=("BACKGROUND_Google", "Faces_easy"),
        target_of=_CROSS_DATASET_OF_IMAGENET,
    ),
    DatasetSpec(
        "OxfordPets", "oxford_pets", "images", "split_zhou_OxfordPets.json", readers.read_json_dataset,
        zero_shot_template="a photo of a {}, a type of pet.",
        target_of=_CROSS_DATASET_OF_IMAGENET,
    ),
    DatasetSpec(
        "StanfordCars", "stanford_cars", "", "split_zhou_StanfordCars.json", readers.read_json_dataset,
        target_of=_CROSS_DATASET_OF_IMAGENET,
    ),
    DatasetSpec(
        "Flowers102", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json", readers.read_json_dataset,
        zero_shot_template="a photo of a {}, a type of flower.",
        target_of=_CROSS_DATASET_OF_IMAGENET,
    ),
    DatasetSpec(
        "Food101", "food-101", "images", "split_zhou_Food101.json", readers.read_json_dataset,
        zero_shot_template="a photo of {}, a type of food.",
        target_of=_CROSS_DATASET_OF_IMAGENET,
    ),
    DatasetSpec(
        "FGVCAircraft", "fgvc_aircraft", "images", "variants.txt", readers.read_fgvc_aircraft,
        zero_shot_template="a photo of a {}, a type of aircraft.",
        extra_files=("images_variant_train.txt", "images_variant_val.txt", "images_variant_test.txt"),
        target_of=_CROSS_DATASET_OF_IMAGENET,
    ),
    DatasetSpec(
        "SUN397", "sun397", "SUN397", "split_zhou_SUN397.json", readers.read_json_dataset,
        target_of=_CROSS_DATASET_OF_IMAGENET,
    ),
    DatasetSpec(
        "DTD", "dtd", "images", "split_zhou_DescribableTextures.json", readers.read_json_dataset,
        zero_shot_template="{} texture.", kgcoop_template="a photo of a {}, a type of texture.",
        target_of=_CROSS_DATASET_OF_IMAGENET,
    ),
    DatasetSpec(
        "EuroSAT", "eurosat", "2750", "split_zhou_EuroSAT.json", readers.read_json_dataset,
        zero_shot_template="a centered satellite photo of {}.",
        classname_renames=frozen_mapping({
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
        target_of=_CROSS_DATASET_OF_IMAGENET,
    ),
    DatasetSpec(
        "UCF101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", readers.read_json_dataset,
        zero_shot_template="a photo of a person doing {}.",
        target_of=_CROSS_DATASET_OF_IMAGENET,
    ),
    DatasetSpec(
        "ImageNetV2", "imagenetv2", "imagenetv2-matched-frequency-format-val", "classnames.txt",
        readers.read_imagenet_variant, protocol=DOMAIN_GENERALIZATION, class_folders_by_index=True,
        target_of=_DOMAIN_OF_IMAGENET,
    ),
    DatasetSpec(
        "ImageNetSketch", "imagenet-sketch", "images", "classnames.txt",
        readers.read_imagenet_variant, protocol=DOMAIN_GENERALIZATION,
        target_of=_DOMAIN_OF_IMAGENET,
    ),
    DatasetSpec(
        "ImageNetA", "imagenet-adversarial", "imagenet-a", "classnames.txt",
        readers.read_imagenet_variant, protocol=DOMAIN_GENERALIZATION, class_subset=True,
        target_of=_DOMAIN_OF_IMAGENET,
    ),
    DatasetSpec(
        "ImageNetR", "imagenet-rendition", "imagenet-r", "classnames.txt",
        readers.read_imagenet_variant, protocol=DOMAIN_GENERALIZATION, class_subset=True,
        target_of=_DOMAIN_OF_IMAGENET,
    ),
)

_BY_KEY: dict[str, DatasetSpec] = {s.name.lower(): s for s in _SPECS}


def dataset_names(protocol: str | None = None) -> list[str]:
    """Known dataset names: the 11 base-to-new datasets in the paper's table order, then the 4 ImageNet variants.

    ``protocol`` (``dept.protocols``: base-to-new, or domain-generalization for the variants) gives only that group.
    """
    if protocol not in (None, BASE_TO_NEW, DOMAIN_GENERALIZATION):
        raise ValueError(f"unknown protocol {protocol!r}; known: {BASE_TO_NEW}, {DOMAIN_GENERALIZATION}")
    return [s.name for s in _SPECS if protocol is None or s.protocol == protocol]


def get_spec(name: str) -> DatasetSpec:
    """The spec of a known dataset; names match case-insensitively (``oxfordpets`` is OxfordPets)."""
    spec = _BY_KEY.get(str(name).lower())
    if spec is None:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}")
    return spec


def kgcoop_template(name: str) -> str:
    """KgCoOp's hand-crafted target prompt template for a dataset (``{}`` = class name).

    Datasets without their own template, custom datasets included, get ``"a photo of a {}."``.
    """
    spec = _BY_KEY.get(str(name).lower())
    return spec.kgcoop_prompt if spec is not None else DEFAULT_KGCOOP_TEMPLATE


def zero_shot_template(name: str) -> str:
    """CoOp's hand-crafted zero-shot prompt template for a dataset (``{}`` = class name); differs from KgCoOp's
    for DTD only. Datasets without their own template, custom datasets included, get ``"a photo of a {}."``."""
    spec = _BY_KEY.get(str(name).lower())
    return spec.zero_shot_template if spec is not None else DEFAULT_TEMPLATE


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
    if spec.target_of is not None:
        protocol, source = spec.target_of
        labels = tuple(splits.label_to_imagenet) if splits.label_to_imagenet is not None else None
        splits.target_of = TargetOf(protocol, source, labels)
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
    splits.target_of = read_transfer_file(name, os.path.join(d, TRANSFER_FILE), splits.num_classes)
    log.info(
        "%s: %d classes, %d train / %d val / %d test images from %s",
        name, splits.num_classes, len(splits.train), len(splits.val), len(splits.test), split_path,
    )
    return splits


def read_transfer_file(name: str, path: str, num_classes: int) -> TargetOf | None:
    """A custom dataset's ``transfer.json`` (absent: it is nobody's target): ``{"protocol": "cross-dataset" |
    "domain-generalization", "source": NAME}``, and for a domain-generalisation target holding a subset of the
    source's classes ``"label_to_source": [source label of label 0, ...]``."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{name}: malformed {path}: {e}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("source"), str) or not raw["source"]:
        raise DatasetError(f"{name}: malformed {path}: expected an object with 'protocol' and 'source'")
    protocol = raw.get("protocol")
    if protocol not in TRANSFER_PROTOCOLS:
        raise DatasetError(f"{name}: {path}: protocol must be {' or '.join(TRANSFER_PROTOCOLS)}, not {protocol!r}")
    mapping = raw.get("label_to_source")
    if mapping is not None:
        if protocol != DOMAIN_GENERALIZATION:
            raise DatasetError(f"{name}: {path}: label_to_source is for {DOMAIN_GENERALIZATION} targets only")
        if (not isinstance(mapping, list) or len(mapping) != num_classes
                or any(not isinstance(x, int) or x < 0 for x in mapping) or len(set(mapping)) != len(mapping)):
            raise DatasetError(f"{name}: {path}: label_to_source must list {num_classes} distinct source labels "
                               "(one per class of this dataset)")
        mapping = tuple(mapping)
    return TargetOf(protocol, raw["source"], mapping)
