"""The records of the datasets package: :class:`DatasetSpec` (how a known dataset is laid out and read), what every
loader returns (:class:`DatasetSplits` of :class:`Item`), and the one error type they raise. Kept apart from the
registry and the readers so that both import these and neither imports the other for them."""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from dept.protocols import BASE_TO_NEW

#: The hand-crafted prompt of datasets that have none of their own (and of custom datasets): zero-shot and KgCoOp.
DEFAULT_TEMPLATE = "a photo of a {}."
DEFAULT_KGCOOP_TEMPLATE = DEFAULT_TEMPLATE

#: A custom dataset's optional declaration of being a transfer target (see :class:`TargetOf`).
TRANSFER_FILE = "transfer.json"


class DatasetError(ValueError):
    """A dataset cannot be loaded as asked. The message is one line naming the dataset and the path involved."""


@dataclass(frozen=True)
class Item:
    """One image: its path relative to the dataset's image root, its label, and the class name of that label."""

    impath: str
    label: int
    classname: str


@dataclass(frozen=True)
class TargetOf:
    """A dataset's role in a transfer protocol: a target of ``source`` under ``protocol`` (cross-dataset or
    domain-generalization). ``label_to_source``: a domain-generalisation target holding a subset of the source's
    classes maps its label ``i`` to the source's label ``label_to_source[i]`` (None: its labels are the source's)."""

    protocol: str
    source: str
    label_to_source: tuple[int, ...] | None = None

    def as_dict(self) -> dict:
        return {"protocol": self.protocol, "source": self.source,
                "label_to_source": list(self.label_to_source) if self.label_to_source is not None else None}


@dataclass
class DatasetSplits:
    """A dataset's train / val / test items over one label space.

    ``classnames[label]`` is the (cleaned) class name of ``label``. ``split_file`` is the main file the splits were
    read from, and ``split_files`` every file that defines them (``split_file`` first), so a feature store can
    record their sha256. ``label_to_imagenet`` is set for ImageNet variants that hold a subset of the 1000
    ImageNet classes (ImageNet-A, -R): entry ``i`` is the 1000-class index of this dataset's label ``i``, so a
    1000-way CAT head can be cut to the classes present. It is ``None`` when labels already are ImageNet's.
    """

    name: str
    image_root: str
    classnames: list[str]
    train: list[Item]
    val: list[Item]
    test: list[Item]
    split_file: str
    split_files: list[str] = field(default_factory=list)
    label_to_imagenet: list[int] | None = None
    target_of: TargetOf | None = None  # set by the registry (known datasets) or a custom dataset's transfer.json

    def __post_init__(self) -> None:
        if not self.split_files:
            self.split_files = [self.split_file]

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def image_path(self, item: Item) -> str:
        """Absolute path of ``item``'s image file."""
        return os.path.join(self.image_root, item.impath)


def frozen_mapping(mapping: Mapping[str, str]) -> Mapping[str, str]:
    """A read-only copy, so a frozen :class:`DatasetSpec` really cannot change."""
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lives under the data root and how to read it.

    ``folder``: the dataset's folder under the data root; ``image_subdir``: the image folder inside it ("" = the
    folder itself); ``split_file``: the main split/label file inside it (what the registry's ``locate`` looks for);
    ``reader(spec, dataset_dir) -> DatasetSplits``; ``zero_shot_template``: CoOp's hand-crafted zero-shot prompt,
    with ``{}`` for the class name; ``kgcoop_template``: KgCoOp's hand-crafted target prompt where it differs from
    the zero-shot one (DTD), None where it is the same; ``classname_renames``: raw class name -> prompt name,
    applied before ``_`` -> space.
    """

    name: str
    folder: str
    image_subdir: str
    split_file: str
    reader: Callable[[DatasetSpec, str], DatasetSplits]
    zero_shot_template: str = DEFAULT_TEMPLATE
    kgcoop_template: str | None = None
    classname_renames: Mapping[str, str] = field(default_factory=lambda: frozen_mapping({}))
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
    #: (protocol, source): the transfer protocol this dataset is a target in (the paper's: ImageNet's 10 cross-dataset
    #: targets and its 4 domain-generalisation variants)
    target_of: tuple[str, str] | None = None

    @property
    def kgcoop_prompt(self) -> str:
        """KgCoOp's target prompt template: its own where it has one, else the zero-shot template."""
        return self.kgcoop_template if self.kgcoop_template is not None else self.zero_shot_template

    def dataset_dir(self, data_root: str | os.PathLike) -> str:
        return os.path.join(os.fspath(data_root), self.folder)

    def required_paths(self, data_root: str | os.PathLike) -> list[str]:
        """Files and folders that must exist for the dataset to load, in the order they are checked."""
        d = self.dataset_dir(data_root)
        return [os.path.join(d, f) for f in (self.split_file, *self.extra_files)] + [
            os.path.join(d, self.image_subdir) if self.image_subdir else d
        ]
