"""A store laid out exactly as featurize writes it (real Parquet shards, sidecars, typed manifest) with synthetic,
recognisable embeddings; and a local filesystem under its own fsspec protocol that counts opens per file name."""
from __future__ import annotations

import collections
import dataclasses
import posixpath

import fsspec
import numpy as np
import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem

from dept.datasets import DatasetSplits, Item, draw_few_shot
from pipelines.store import FEWSHOT, MANIFEST, DatasetFolder, Manifest, feature_schema, sha256_json, shard_name

DIM = 8
VIEWS = 2  # augmented views; train rows carry views 0..2
CLASSES = ["apple", "bear", "cat", "dog", "eel"]  # 5 classes: base = 0,1,2; new = 3,4
IDENTITY = {"model": "m", "weights_id": "sha256:" + "ab" * 32}


def items(split: str, per_class: int) -> list[Item]:
    return [Item(f"{c}/{split}{k}.png", label, c) for k in range(per_class) for label, c in enumerate(CLASSES)]


def embedding(image_id: str, view: int) -> np.ndarray:
    """Recognisable values: element 0 says which image, element 1 which view."""
    e = np.zeros(DIM, np.float32)
    e[0] = sum(ord(ch) for ch in image_id)
    e[1] = view
    return e


def _table(rows_of: list[Item], split: str, n_views: int) -> pa.Table:
    rows = [(it, v) for it in rows_of for v in range(n_views)]
    return pa.Table.from_arrays(
        [
            pa.array([it.impath for it, _ in rows], pa.string()),
            pa.array([it.label for it, _ in rows], pa.int32()),
            pa.array([it.classname for it, _ in rows], pa.string()),
            pa.array([split] * len(rows), pa.string()),
            pa.array([v for _, v in rows], pa.int16()),
            pa.FixedSizeListArray.from_arrays(
                pa.array(np.concatenate([embedding(it.impath, v) for it, v in rows]) if rows else [], pa.float32()),
                DIM),
        ],
        schema=feature_schema(DIM),
    )


def toy_manifest(dataset: str, shots: int, seeds, rows: dict, fewshot: dict, complete: bool, identity: dict,
                 pretrained: str) -> Manifest:
    m = Manifest(dataset=dataset, model=identity["model"], pretrained=pretrained,
                 weights_id=identity["weights_id"], open_clip_version="3", feature_dim=DIM, image_size=32,
                 mean=(0.5,) * 3, std=(0.25,) * 3, transforms={}, views=VIEWS, shots=shots,
                 val_shots=min(shots, 4), seeds=tuple(seeds) if shots else (), num_classes=len(CLASSES),
                 classnames=tuple(CLASSES), label_to_imagenet=None, split_files=(), split_sha256=(), image_root="",
                 images_per_shard=4, images={}, fewshot_sha256=sha256_json(fewshot), rows=rows, complete=complete)
    return dataclasses.replace(m, config_fingerprint=m.settings_fingerprint())


def make_store(model_url: str, *, dataset="toy", shots=2, seeds=(1, 2), complete=True, per_shard=4,
               identity: dict = IDENTITY, pretrained: str = "/x.safetensors") -> DatasetFolder:
    splits = DatasetSplits(dataset, "", list(CLASSES), items("train", 4), items("val", 3), items("test", 2), "")
    draws, chosen = {}, set()
    for seed in seeds if shots else ():
        tr, va = draw_few_shot(splits, shots, seed)
        draws[str(seed)] = {"train": [i.impath for i in tr], "val": [i.impath for i in va]}
        chosen |= set(draws[str(seed)]["train"])
    per_split = {"train": [i for i in splits.train if not shots or i.impath in chosen], "val": splits.val,
                 "test": splits.test}
    folder = DatasetFolder(f"{model_url}/{dataset}")
    rows = {}
    for split, its in per_split.items():
        n_views = 1 + VIEWS if split == "train" else 1
        for k in range(0, len(its), per_shard):
            folder.write_shard(shard_name(split, k // per_shard), _table(its[k:k + per_shard], split, n_views),
                               {"node_ids": ["n1"], "skipped": []})
        rows[split] = len(its) * n_views
    fewshot = {"shots": shots, "seeds": list(seeds), "draws": draws}
    folder.write_json(FEWSHOT, fewshot)
    manifest = toy_manifest(dataset, shots, seeds, rows, fewshot, complete, identity, pretrained)
    if complete:
        manifest = dataclasses.replace(manifest, fingerprint=manifest.content_fingerprint())
    folder.write_json(MANIFEST, manifest.to_dict())
    return folder


#: file name -> opens through the ``counting://`` protocol since the last clear().
OPENS: collections.Counter = collections.Counter()


class CountingFileSystem(LocalFileSystem):
    """The local filesystem under ``counting://``, counting every file open by base name."""

    protocol = "counting"

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        return LocalFileSystem._strip_protocol(path[len("counting://"):] if path.startswith("counting://") else path)

    def _open(self, path, mode="rb", **kwargs):
        OPENS[posixpath.basename(path)] += 1
        return super()._open(path, mode, **kwargs)


fsspec.register_implementation("counting", CountingFileSystem, clobber=True)
