"""Reading a dataset's features: :class:`DatasetStore` opens one dataset folder once (manifest checked and typed),
reads each split at most once, and serves every selection (train / val / test x base / new / all, a seed's
few-shot draw) from memory. :func:`open_store` keeps the last opened store per process, so trials that a Ray
Tune worker runs one after another read nothing again."""
from __future__ import annotations

import functools
import json
import logging
import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from dept.datasets import DatasetSplits, Item, base_new_split, draw_few_shot
from pipelines.store.layout import (
    FEWSHOT,
    LEGACY_MANIFEST,
    MANIFEST,
    SPLITS,
    STORE_FORMAT,
    DatasetFolder,
    StoreError,
    join_url,
    model_store_url,
    parse_shard_name,
    url_to_filesystem,
)
from pipelines.store.manifest import Manifest, content_fingerprint

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass
class FeatureSplit:
    features: torch.Tensor  # [N, V, D] float32 for split="train" (view 0, then views 1..K); [N, D] otherwise
    labels: torch.Tensor  # [N] int64, relabelled 0..m-1 within the chosen classes
    classnames: list[str]  # m names, index = relabelled label
    image_ids: list[str]


@dataclass
class SplitRows:
    """One split's rows as stored, decoded once; every selection indexes into these arrays."""

    image_ids: list[str]  # per row (train: one row per (image, view))
    views: np.ndarray  # [R] int
    labels: np.ndarray  # [R] int
    embeddings: np.ndarray  # [R, D] float32
    row_of: dict[tuple[str, int], int]  # (image id, view) -> row

    @classmethod
    def from_table(cls, table: pa.Table | None, dim: int) -> "SplitRows":
        if table is None:
            return cls([], np.zeros(0, np.int16), np.zeros(0, np.int32), np.zeros((0, dim), np.float32), {})
        ids = table.column("image_id").to_pylist()
        views = table.column("view").to_numpy()
        emb = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
        return cls(ids, views, table.column("label").to_numpy(), emb,
                   {(i, int(v)): r for r, (i, v) in enumerate(zip(ids, views))})

    @property
    def num_rows(self) -> int:
        return len(self.image_ids)

    def distinct_ids(self) -> list[str]:
        return list(dict.fromkeys(self.image_ids))  # stored order = split-file order; train rows repeat per view


def class_subset(num_classes: int, classes: str) -> list[int]:
    if classes == "all":
        return list(range(num_classes))
    base, new = base_new_split(num_classes)
    if classes == "base":
        return list(base)
    if classes == "new":
        return list(new)
    raise StoreError(f"classes must be 'base', 'new' or 'all', not {classes!r}")


def load_manifest(folder: DatasetFolder, *, require_complete: bool = True) -> Manifest:
    """The checked manifest of ``folder``: present, current format, complete and matching its fingerprint (with
    ``require_complete``; featurize reads unfinished ones too). One read."""
    try:
        raw = folder.read_json(MANIFEST)
    except FileNotFoundError:
        if folder.exists(LEGACY_MANIFEST):
            raise StoreError(legacy_message(folder.url)) from None
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"unreadable manifest {folder.url}/{MANIFEST}: {e}") from None
    if raw.get("format") != STORE_FORMAT:
        raise StoreError(f"feature store {folder.url} is in format {raw.get('format')}, this version reads format "
                         f"{STORE_FORMAT}; re-run `dept-pipeline featurize` into a new --out")
    if require_complete and raw.get("complete") is not True:
        raise StoreError(
            f"feature store {folder.url} is incomplete (featurize was interrupted or is running); "
            "rerun the same featurize command to finish it"
        )
    if require_complete and raw.get("fingerprint") != content_fingerprint(raw):
        raise StoreError(f"manifest {folder.url}/{MANIFEST} does not match its fingerprint (edited by hand?)")
    return Manifest.from_dict(raw, f"{folder.url}/{MANIFEST}")


def legacy_message(url: str) -> str:
    return (f"feature store {url} is in the old format 1 layout ({LEGACY_MANIFEST}, which pyarrow and pandas "
            f"cannot skip); re-run `dept-pipeline featurize` into a new --out (format {STORE_FORMAT})")


class DatasetStore:
    """One dataset's features, opened once: a typed :class:`Manifest` and every split read at most once."""

    def __init__(self, folder: DatasetFolder, manifest: Manifest):
        self.folder = folder
        self.manifest = manifest
        self._shards: list[str] | None = None
        self._splits: dict[str, SplitRows] = {}
        self._draws: dict | None = None

    def __repr__(self) -> str:
        return f"DatasetStore({self.url!r})"

    @property
    def url(self) -> str:
        return self.folder.url

    @classmethod
    def open(cls, url: str, dataset: str, *, expected_identity: dict | None = None) -> "DatasetStore":
        """``url``: the model folder (``<root>/<model>/<weights>``), or the store root with ``expected_identity``.
        Refuses (``StoreError``, one line) a missing, old-format, incomplete or hand-edited store, or one made by
        another model than ``expected_identity``."""
        folder = DatasetFolder(join_url(url, dataset))
        try:
            manifest = load_manifest(folder)
        except FileNotFoundError:
            nested = None
            if expected_identity is not None:
                nested = DatasetFolder(join_url(model_store_url(url, expected_identity["model"],
                                                                expected_identity["weights_id"]), dataset))
            try:
                if nested is None:
                    raise FileNotFoundError
                folder, manifest = nested, load_manifest(nested)
            except FileNotFoundError:
                present = list_datasets(url)
                raise StoreError(f"no features for dataset {dataset!r} at {folder.url} (no {MANIFEST}); datasets "
                                 f"there: {', '.join(present) or 'none'}; run `dept-pipeline featurize`") from None
        if expected_identity is not None:
            manifest.check_identity(expected_identity, folder.url)
        return cls(folder, manifest)

    # -- reading, once each ------------------------------------------------------------------------------
    def split_rows(self, split: str) -> SplitRows:
        """Every stored row of ``split`` (read on first use, then kept), checked against the manifest's count."""
        if split not in SPLITS:
            raise StoreError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
        if split not in self._splits:
            if self._shards is None:
                self._shards = self.folder.shard_names()
            table = self.folder.read_shards([n for n in self._shards if parse_shard_name(n)[0] == split])
            rows = SplitRows.from_table(table, self.manifest.feature_dim)
            expected = int(self.manifest.rows.get(split, 0))
            if rows.num_rows != expected:
                raise StoreError(f"feature store {self.url}: {split} has {rows.num_rows} rows, manifest says "
                                 f"{expected} (files changed after featurize?)")
            self._splits[split] = rows
        return self._splits[split]

    def fewshot_draws(self) -> dict[str, dict[str, list[str]]]:
        """seed -> {"train": image ids, "val": image ids}, as featurize drew them (read on first use)."""
        if self._draws is None:
            self._draws = self.folder.read_json(FEWSHOT)["draws"]
        return self._draws

    # -- selections, in memory ---------------------------------------------------------------------------
    def image_ids(self, split: str, *, seed: int | None = None, shots: int | None = None) -> list[str]:
        """Image ids in order: a seed's few-shot draw (train/val with seed), else every stored image of the split."""
        stored_shots = self.manifest.shots
        want = stored_shots if shots is None else int(shots)
        if split == "test" or want == 0 or seed is None:
            if seed is None and shots not in (None, 0) and split != "test":
                raise StoreError(f"shots={shots} needs a seed (the draw depends on it)")
            if want == 0 and stored_shots != 0 and split == "train":
                raise StoreError(f"feature store {self.url} holds {stored_shots}-shot draws, not every {split} image")
            return self.split_rows(split).distinct_ids()
        if want == stored_shots and seed in self.manifest.seeds:
            return list(self.fewshot_draws()[str(seed)][split])
        if stored_shots == 0 and want > 0:
            # The store holds whole train/val splits: redraw exactly as CoOp does from the stored items.
            return self._redraw(split, want, seed)
        raise StoreError(
            f"feature store {self.url} holds draws for shots={stored_shots} and seeds {list(self.manifest.seeds)}, "
            f"not shots={want} seed={seed}; featurize with those settings"
        )

    def _redraw(self, split: str, shots: int, seed: int) -> list[str]:
        def items(s: str) -> list[Item]:
            rows = self.split_rows(s)
            return [Item(i, int(lab), self.manifest.classnames[int(lab)])
                    for i, v, lab in zip(rows.image_ids, rows.views, rows.labels) if v == 0]

        splits = DatasetSplits(name=self.manifest.dataset, image_root="", classnames=list(self.manifest.classnames),
                               train=items("train"), val=items("val"), test=[], split_file="")
        train, val = draw_few_shot(splits, shots, seed)
        return [it.impath for it in (train if split == "train" else val)]

    def features(self, split: str, *, seed: int | None = None, shots: int | None = None,
                 classes: str = "all") -> FeatureSplit:
        """One selection as tensors. ``split="train"``/``"val"`` with ``seed`` -> that seed's few-shot draw
        (``shots`` defaults to the stored one); ``"test"`` -> every test image. ``classes`` selects base / new /
        all classes (base = first ceil(n/2) sorted labels) and relabels them 0..m-1."""
        # torch here: listing, checking and opening a store (every command's setup) need none; selections are tensors.
        import torch

        m = self.manifest
        rows = self.split_rows(split)
        wanted = self.image_ids(split, seed=seed, shots=shots)
        keep_classes = class_subset(len(m.classnames), classes)
        relabel = {c: i for i, c in enumerate(keep_classes)}
        classnames = [m.classnames[c] for c in keep_classes]
        n_views = m.views + 1 if split == "train" else 1
        if rows.num_rows == 0 or not wanted:
            shape = (0, n_views, m.feature_dim) if split == "train" else (0, m.feature_dim)
            return FeatureSplit(torch.zeros(shape), torch.zeros(0, dtype=torch.int64), classnames, [])

        skipped = {s["image_id"] for s in m.skipped if s.get("split") == split}
        out_ids, out_rows = [], []
        for image_id in wanted:
            r = [rows.row_of.get((image_id, v)) for v in range(n_views)]
            if any(x is None for x in r):
                if image_id in skipped:
                    continue  # unreadable, skipped at featurize time and recorded in the manifest
                raise StoreError(f"feature store {self.url}: image {image_id!r} ({split}) is missing views")
            if int(rows.labels[r[0]]) in relabel:
                out_ids.append(image_id)
                out_rows.append(r)
        if skipped & set(wanted):
            log.warning("%s/%s: %d drawn images were skipped as unreadable at featurize time",
                        m.dataset, split, len(skipped & set(wanted)))
        idx = np.asarray(out_rows, dtype=np.int64).reshape(len(out_rows), n_views)
        feats = torch.from_numpy(np.ascontiguousarray(rows.embeddings[idx]))  # [N, V, D], a copy: the cache stays intact
        if split != "train":
            feats = feats[:, 0]
        lab = torch.tensor([relabel[int(rows.labels[r[0]])] for r in out_rows], dtype=torch.int64)
        return FeatureSplit(features=feats.float(), labels=lab, classnames=classnames, image_ids=out_ids)


def _open_pinned(url: str, dataset: str, fingerprint: str, identity: tuple | None) -> DatasetStore:
    """The store of ``dataset``, refused unless its fingerprint is still ``fingerprint``."""
    store = DatasetStore.open(url, dataset, expected_identity=dict(identity) if identity else None)
    if store.manifest.fingerprint != fingerprint:
        raise StoreError(f"feature store {store.url} changed since this run was set up (fingerprint "
                         f"{fingerprint[:12]}, now {store.manifest.fingerprint[:12]}); start the run again")
    return store


#: One source store kept per process (Tune runs datasets one after another; ImageNet's features are hundreds of MB);
#: up to 16 transfer targets beside it (only their test images are read). Errors are not kept.
_cached_store = functools.lru_cache(maxsize=1)(_open_pinned)
_cached_target_store = functools.lru_cache(maxsize=16)(_open_pinned)


def open_store(url: str, dataset: str, *, fingerprint: str, expected_identity: dict | None = None) -> DatasetStore:
    """The opened store of ``dataset``, kept per process for the next call with the same (url, dataset,
    fingerprint): Tune runs many trials of one dataset in a reused worker. One store is kept (Tune runs datasets
    one after another; ImageNet's features are hundreds of MB). Errors are not kept."""
    return _cached_store(str(url).rstrip("/"), dataset, fingerprint, _identity_key(expected_identity))


def _identity_key(expected_identity: dict | None) -> tuple | None:
    if expected_identity is None:
        return None
    return (("model", expected_identity["model"]), ("weights_id", expected_identity["weights_id"]))


def open_target_store(url: str, dataset: str, *, fingerprint: str,
                      expected_identity: dict | None = None) -> DatasetStore:
    """As :func:`open_store`, for the transfer protocols' targets: a trial reads its source and every target, and
    a worker's next trial reads them again, so these are kept apart from the source (up to 16; only test images
    are read from them)."""
    return _cached_target_store(str(url).rstrip("/"), dataset, fingerprint, _identity_key(expected_identity))


def read_manifest(url: str, dataset: str, *, expected_identity: dict | None = None) -> Manifest:
    """The checked manifest of ``dataset`` under the model folder ``url`` (one read)."""
    return DatasetStore.open(url, dataset, expected_identity=expected_identity).manifest


def read_features(url: str, dataset: str, *, split: str, seed: int | None = None, shots: int | None = None,
                  classes: str = "all", expected_identity: dict | None = None) -> FeatureSplit:
    """One selection of one dataset's features as tensors (opens the store for this call alone: to take several
    selections, ``DatasetStore.open`` once and call ``.features`` on it). See :meth:`DatasetStore.features`."""
    if split not in SPLITS:
        raise StoreError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    store = DatasetStore.open(url, dataset, expected_identity=expected_identity)
    return store.features(split, seed=seed, shots=shots, classes=classes)


def list_datasets(url: str) -> list[str]:
    """Datasets under the model folder ``url`` that have a complete manifest."""
    fs, path = url_to_filesystem(str(url))
    if not fs.exists(path):
        return []
    out = []
    for p in fs.ls(path, detail=False):
        name = posixpath.basename(p.rstrip("/"))
        folder = DatasetFolder(join_url(url, name))
        try:
            if folder.read_json(MANIFEST).get("complete") is True:
                out.append(name)
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
    return sorted(out)
