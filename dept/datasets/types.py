"""The records every dataset loader returns, and the one error type they raise."""
from __future__ import annotations

import os
from dataclasses import dataclass, field


class DatasetError(ValueError):
    """A dataset cannot be loaded as asked. The message is one line naming the dataset and the path involved."""


@dataclass(frozen=True)
class Item:
    """One image: its path relative to the dataset's image root, its label, and the class name of that label."""

    impath: str
    label: int
    classname: str


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

    def __post_init__(self) -> None:
        if not self.split_files:
            self.split_files = [self.split_file]

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def image_path(self, item: Item) -> str:
        """Absolute path of ``item``'s image file."""
        return os.path.join(self.image_root, item.impath)
