"""Datasets: CoOp's folder layouts for the 11 base-to-new datasets and the 4 ImageNet variants, custom datasets
(``DIR/split.json`` + ``DIR/images/``), CoOp-compatible few-shot draws, the base/new class split, and a generated
demo dataset (:mod:`dept.datasets.demo`)."""
from __future__ import annotations

from dept.protocols import BASE_TO_NEW, CROSS_DATASET, DEFAULT_SOURCE, DOMAIN_GENERALIZATION, PROTOCOLS

from .demo import write_demo_dataset
from .fewshot import base_new_split, draw_few_shot, subset
from .registry import (
    DEFAULT_KGCOOP_TEMPLATE,
    DEFAULT_TEMPLATE,
    DatasetSpec,
    dataset_names,
    get_spec,
    kgcoop_template,
    load_custom_dataset,
    load_dataset,
    locate,
    zero_shot_template,
)
from .types import (
    DatasetError,
    DatasetSplits,
    Item,
    TargetOf,
)

__all__ = [
    "BASE_TO_NEW",
    "CROSS_DATASET",
    "DEFAULT_SOURCE",
    "DOMAIN_GENERALIZATION",
    "PROTOCOLS",
    "TargetOf",
    "DEFAULT_KGCOOP_TEMPLATE",
    "DEFAULT_TEMPLATE",
    "DatasetError",
    "DatasetSpec",
    "DatasetSplits",
    "Item",
    "base_new_split",
    "dataset_names",
    "draw_few_shot",
    "get_spec",
    "kgcoop_template",
    "load_custom_dataset",
    "load_dataset",
    "locate",
    "subset",
    "write_demo_dataset",
    "zero_shot_template",
]
