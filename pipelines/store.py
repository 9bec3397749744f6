"""The Parquet feature store: layout, atomic shard writes, manifest, and the reader trials use.

Layout (any fsspec URL: a local path, ``memory://``, ``s3://`` with s3fs, ...)::

    <root>/<model-slug>/<weights-slug>/<dataset>/
        part-<split>-<shard>.parquet   image_id, label, classname, split, view, embedding (plain Arrow types)
        fewshot.json                   the few-shot draws per seed (train / val image ids), for auditing
        manifest.json                  model identity, transforms, views, shots, seeds, split sha256, row counts,
                                       fingerprint; ``complete: true`` only once every shard is written
        .featurize.lock                (local stores) held by the featurize run writing the folder

A shard file exists under its final name only once it is complete (local: written to a hidden temporary name,
then renamed; object stores: one PUT, which is atomic), so "present" means "done" and a rerun skips it. The
manifest is written first with ``complete: false`` (so a rerun with other settings is refused before anything is
written) and rewritten with ``complete: true`` last; readers refuse anything else.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import logging
import posixpath
import re
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

log = logging.getLogger(__name__)

STORE_FORMAT = 1
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
FEWSHOT = "fewshot.json"
#: Parquet key-value metadata of each shard (plain footer metadata: invisible to readers that ignore it).
SHARD_META_KEY = b"dept.shard"
_SHARD_RE = re.compile(r"^part-(train|val|test)-(\d{5})\.parquet$")
WRITER_LOCK = ".featurize.lock"
_TEMP_RE = re.compile(r"^\.(part-(train|val|test)-\d{5}\.parquet|manifest\.json|fewshot\.json)\.tmp-[0-9a-f]{12}$")


class StoreError(ValueError):
    """The feature store cannot be used as asked (missing, incomplete, other model, other settings). One line."""


# ----------------------------------------------------------------------------------------------------------------
# Layout


def _url_to_fs(url: str):
    try:
        return url_to_fs(url)
    except ImportError as e:  # e.g. s3:// without s3fs
        raise StoreError(f"cannot open {url}: {e}") from None
    except ValueError as e:  # unknown protocol
        raise StoreError(f"cannot open {url}: {str(e).splitlines()[0]}") from None


def _slug(text: str) -> str:
    """A folder-safe name; when characters had to be replaced, a short hash of the original keeps names distinct
    (``a/b`` and ``a_b`` must not share a folder)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "_"
    if safe != text:
        safe = f"{safe}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    return safe


def weights_slug(weights_id: str) -> str:
    """Folder name for a model's weights: the open_clip tag, ``random-init-<seed>``, or ``sha256-<first 16 hex>``
    of a checkpoint file. Derived from the weights' identity, not from a file name, so two different checkpoints
    never share a folder and the same checkpoint at two paths does."""
    if weights_id.startswith("sha256:"):
        return "sha256-" + weights_id.split(":", 1)[1][:16]
    if weights_id.startswith("random-init:"):
        return "random-init-" + _slug(weights_id.split(":", 1)[1])
    return _slug(weights_id)


def model_store_url(root: str, model: str, weights_id: str) -> str:
    """``<root>/<model>/<weights>``: the folder holding one folder per dataset featurized with that model."""
    return join_url(root, _slug(model), weights_slug(weights_id))


def join_url(base: str, *parts: str) -> str:
    base = str(base)
    return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])


def shard_name(split: str, index: int) -> str:
    return f"part-{split}-{index:05d}.parquet"


def parse_shard_name(name: str) -> tuple[str, int] | None:
    m = _SHARD_RE.match(name)
    return (m.group(1), int(m.group(2))) if m else None


def feature_schema(dim: int) -> pa.Schema:
    """Plain Arrow types only (no Ray tensor extension types), so pyarrow, pandas or DuckDB read the files."""
    return pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("label", pa.int32(), nullable=False),
            pa.field("classname", pa.string(), nullable=False),
            pa.field("split", pa.string(), nullable=False),
            pa.field("view", pa.int16(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
        ]
    )


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# One dataset folder


class DatasetStore:
    """One ``<model>/<weights>/<dataset>`` folder, through fsspec."""

    def __init__(self, url: str):
        self.url = str(url).rstrip("/")
        self.fs, self.path = _url_to_fs(self.url)

    def __repr__(self) -> str:
        return f"DatasetStore({self.url!r})"

    def _p(self, name: str) -> str:
        return posixpath.join(self.path, name)

    # -- writing ---------------------------------------------------------------------------------------------
    def write_bytes_atomic(self, name: str, data: bytes) -> None:
        """Make ``name`` appear complete or not at all."""
        final = self._p(name)
        self.fs.makedirs(self.path, exist_ok=True)
        if isinstance(self.fs, LocalFileSystem):
            # A hidden temporary name that no reader lists, then an atomic rename on the same filesystem.
            tmp = self._p(f".{name}.tmp-{uuid.uuid4().hex[:12]}")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # the bytes are on disk before the name says "complete"
            os.replace(tmp, final)
        else:
            # Object stores (and memory://) publish an object only when its single PUT completes.
            self.fs.pipe_file(final, data)

    def write_json(self, name: str, obj: Any) -> None:
        self.write_bytes_atomic(name, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())

    def write_shard(self, name: str, table: pa.Table, meta: dict) -> None:
        """Write one complete shard; ``meta`` (node ids, skipped files) goes into the Parquet footer."""
        table = table.replace_schema_metadata({SHARD_META_KEY: canonical_json(meta).encode()})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        self.write_bytes_atomic(name, sink.getvalue().to_pybytes())

    @contextlib.contextmanager
    def writer_lock(self):
        """Held by the one featurize run writing this folder (local stores): a second run would race on the
        manifest and, at its cleanup, remove the first run's temporary shard files. Object stores need none (no
        temporaries; a duplicate PUT of a deterministic shard is harmless)."""
        if not isinstance(self.fs, LocalFileSystem):
            yield
            return
        self.fs.makedirs(self.path, exist_ok=True)
        lock_path = self._p(WRITER_LOCK)
        with open(lock_path, "a+") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "unknown"
                raise StoreError(f"{self.url}: another featurize run is writing here ({holder}); "
                                 f"wait for it to finish, then rerun (finished shards are kept)") from None
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def remove_stale_temporaries(self) -> None:
        """Temporary files of killed runs (local stores only; never anything under a final name)."""
        if not isinstance(self.fs, LocalFileSystem) or not self.fs.exists(self.path):
            return
        for p in self.fs.ls(self.path, detail=False):
            base = posixpath.basename(p)
            if _TEMP_RE.match(base):
                log.info("removing temporary file of an interrupted run: %s", p)
                self.fs.rm(p)

    # -- reading ---------------------------------------------------------------------------------------------
    def exists(self, name: str) -> bool:
        return self.fs.exists(self._p(name))

    def read_json(self, name: str) -> dict:
        with self.fs.open(self._p(name), "rb") as f:
            return json.loads(f.read().decode())

    def shard_names(self) -> list[str]:
        """Complete shards present, sorted (split, index)."""
        if not self.fs.exists(self.path):
            return []
        names = [posixpath.basename(p.rstrip("/")) for p in self.fs.ls(self.path, detail=False)]
        return sorted(n for n in names if parse_shard_name(n))

    def shard_meta(self, name: str) -> tuple[int, dict]:
        """(row count, footer metadata) of one shard, reading only its footer."""
        with self.fs.open(self._p(name), "rb") as f:
            md = pq.ParquetFile(f).metadata
            kv = md.metadata or {}
            return md.num_rows, json.loads(kv[SHARD_META_KEY].decode()) if SHARD_META_KEY in kv else {}

    def read_split(self, split: str) -> pa.Table | None:
        names = [n for n in self.shard_names() if parse_shard_name(n)[0] == split]
        tables = []
        for n in names:
            with self.fs.open(self._p(n), "rb") as f:
                tables.append(pq.read_table(f))
        if not tables:
            return None
        return pa.concat_tables(tables).replace_schema_metadata(None)


# ----------------------------------------------------------------------------------------------------------------
# Manifest


#: Manifest keys that are bookkeeping, not content: excluded from the fingerprint.
NOT_FINGERPRINTED = ("fingerprint", "config_fingerprint", "complete", "shards", "created", "pretrained",
                      "image_root", "split_files", "on_error", "url")


def content_fingerprint(manifest: dict) -> str:
    """sha256 over everything in the manifest that determines the stored features (not where files lay, which
    machine encoded what, or when)."""
    return sha256_json({k: v for k, v in manifest.items() if k not in NOT_FINGERPRINTED})


def _resolve(url: str, dataset: str, expected_identity: dict | None) -> DatasetStore:
    """``url`` is a model folder (``<root>/<model>/<weights>``); with ``expected_identity``, the store root also works."""
    direct = DatasetStore(join_url(url, dataset))
    if direct.exists(MANIFEST) or expected_identity is None:
        return direct
    nested = DatasetStore(join_url(model_store_url(url, expected_identity["model"], expected_identity["weights_id"]), dataset))
    return nested if nested.exists(MANIFEST) else direct


def read_manifest(url: str, dataset: str, *, expected_identity: dict | None = None, require_complete: bool = True) -> dict:
    """The manifest of ``dataset`` under ``url``; refuses an incomplete store or one of another model."""
    store = _resolve(url, dataset, expected_identity)
    if not store.exists(MANIFEST):
        raise StoreError(f"no features for dataset {dataset!r} at {store.url} (no {MANIFEST}); run `dept-pipeline featurize`")
    try:
        manifest = store.read_json(MANIFEST)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"unreadable manifest {store.url}/{MANIFEST}: {e}") from None
    if require_complete and manifest.get("complete") is not True:
        raise StoreError(
            f"feature store {store.url} is incomplete (featurize was interrupted or is running); "
            "rerun the same featurize command to finish it"
        )
    if require_complete and manifest.get("fingerprint") != content_fingerprint(manifest):
        raise StoreError(f"manifest {store.url}/{MANIFEST} does not match its fingerprint (edited by hand?)")
    if expected_identity is not None:
        check_identity(manifest, expected_identity, store.url)
    manifest["url"] = store.url
    return manifest


def check_identity(manifest: dict, expected: dict, where: str) -> None:
    got = (manifest.get("model"), manifest.get("weights_id"))
    want = (expected.get("model"), expected.get("weights_id"))
    if got != want:
        raise StoreError(
            f"feature store {where} holds features of model {got[0]} (weights {got[1]}), "
            f"not of {want[0]} (weights {want[1]}); featurize with that model first"
        )


def list_datasets(url: str) -> list[str]:
    """Datasets under the model folder ``url`` that have a complete manifest."""
    fs, path = _url_to_fs(str(url))
    if not fs.exists(path):
        return []
    out = []
    for p in fs.ls(path, detail=False):
        name = posixpath.basename(p.rstrip("/"))
        store = DatasetStore(join_url(url, name))
        try:
            if store.exists(MANIFEST) and store.read_json(MANIFEST).get("complete") is True:
                out.append(name)
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
    return sorted(out)


# ----------------------------------------------------------------------------------------------------------------
# Reader


@dataclass
class FeatureSplit:
    features: torch.Tensor  # [N, V, D] float32 for split="train" (view 0, then views 1..K); [N, D] otherwise
    labels: torch.Tensor  # [N] int64, relabelled 0..m-1 within the chosen classes
    classnames: list[str]  # m names, index = relabelled label
    image_ids: list[str]


def _class_subset(num_classes: int, classes: str) -> list[int]:
    from dept.datasets import base_new_split

    if classes == "all":
        return list(range(num_classes))
    base, new = base_new_split(num_classes)
    if classes == "base":
        return list(base)
    if classes == "new":
        return list(new)
    raise StoreError(f"classes must be 'base', 'new' or 'all', not {classes!r}")


def _selected_ids(manifest: dict, store: DatasetStore, split: str, seed: int | None, shots: int | None,
                  table: pa.Table) -> list[str]:
    """Image ids in order: a seed's few-shot draw (train/val with seed), else every stored image of the split."""
    stored_shots = int(manifest["shots"])
    want = stored_shots if shots is None else int(shots)
    if split == "test" or want == 0 or seed is None:
        if seed is None and shots not in (None, 0) and split != "test":
            raise StoreError(f"shots={shots} needs a seed (the draw depends on it)")
        if want == 0 and stored_shots != 0 and split == "train":
            raise StoreError(f"feature store {store.url} holds {stored_shots}-shot draws, not every {split} image")
        ids = table.column("image_id").to_pylist() if table is not None else []
        return list(dict.fromkeys(ids))  # stored order = split-file order; train rows repeat per view
    draws = store.read_json(FEWSHOT)
    if want == stored_shots and str(seed) in draws["draws"]:
        return list(draws["draws"][str(seed)][split])
    if stored_shots == 0 and want > 0:
        # The store holds whole train/val splits: redraw exactly as CoOp does from the stored items.
        return _redraw(store, manifest, split, want, seed)
    raise StoreError(
        f"feature store {store.url} holds draws for shots={stored_shots} and seeds {manifest['seeds']}, "
        f"not shots={want} seed={seed}; featurize with those settings"
    )


def _redraw(store: DatasetStore, manifest: dict, split: str, shots: int, seed: int) -> list[str]:
    from dept.datasets import DatasetSplits, Item, draw_few_shot

    def items(s: str) -> list[Item]:
        t = store.read_split(s)
        if t is None:
            return []
        t = t.filter(pc.equal(t.column("view"), 0))
        return [Item(i, int(lab), c) for i, lab, c in zip(t.column("image_id").to_pylist(),
                                                            t.column("label").to_pylist(),
                                                            t.column("classname").to_pylist())]

    splits = DatasetSplits(name=manifest["dataset"], image_root="", classnames=list(manifest["classnames"]),
                           train=items("train"), val=items("val"), test=[], split_file="")
    train, val = draw_few_shot(splits, shots, seed)
    return [it.impath for it in (train if split == "train" else val)]


def read_features(
    url: str,
    dataset: str,
    *,
    split: str,
    seed: int | None = None,
    shots: int | None = None,
    classes: str = "all",
    expected_identity: dict | None = None,
) -> FeatureSplit:
    """Load one dataset's features as tensors.

    ``url``: the model folder that featurize printed (``<out>/<model>/<weights>``), or ``<out>`` itself when
    ``expected_identity`` is given. ``split="train"``/``"val"`` with ``seed`` -> that seed's few-shot draw
    (``shots`` defaults to the stored one); ``"test"`` -> every test image. ``classes`` selects base / new / all
    classes (base = first ceil(n/2) sorted labels) and relabels them 0..m-1. Raises ``StoreError`` (one line) when
    the store is incomplete or was made by another model than ``expected_identity``.
    """
    if split not in SPLITS:
        raise StoreError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    manifest = read_manifest(url, dataset, expected_identity=expected_identity)
    store = DatasetStore(manifest["url"])
    table = store.read_split(split)
    expected_rows = int(manifest["rows"][split])
    if (0 if table is None else table.num_rows) != expected_rows:
        raise StoreError(f"feature store {store.url}: {split} has {0 if table is None else table.num_rows} rows, "
                         f"manifest says {expected_rows} (files changed after featurize?)")
    dim = int(manifest["feature_dim"])
    wanted = _selected_ids(manifest, store, split, seed, shots, table)
    keep_classes = _class_subset(len(manifest["classnames"]), classes)
    relabel = {c: i for i, c in enumerate(keep_classes)}
    classnames = [manifest["classnames"][c] for c in keep_classes]
    n_views = int(manifest["views"]) + 1 if split == "train" else 1

    if table is None or not wanted:
        shape = (0, n_views, dim) if split == "train" else (0, dim)
        return FeatureSplit(torch.zeros(shape), torch.zeros(0, dtype=torch.int64), classnames, [])

    ids = table.column("image_id").to_pylist()
    views = table.column("view").to_numpy()
    labels = table.column("label").to_numpy()
    emb = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    row_of: dict[tuple[str, int], int] = {(i, int(v)): r for r, (i, v) in enumerate(zip(ids, views))}

    skipped = {s["image_id"] for s in manifest.get("skipped", []) if s.get("split") == split}
    out_ids, out_rows = [], []
    for image_id in wanted:
        rows = [row_of.get((image_id, v)) for v in range(n_views)]
        if any(r is None for r in rows):
            if image_id in skipped:
                continue  # unreadable, skipped at featurize time and recorded in the manifest
            raise StoreError(f"feature store {store.url}: image {image_id!r} ({split}) is missing views")
        if int(labels[rows[0]]) in relabel:
            out_ids.append(image_id)
            out_rows.append(rows)
    if skipped & set(wanted):
        log.warning("%s/%s: %d drawn images were skipped as unreadable at featurize time",
                    dataset, split, len(skipped & set(wanted)))
    idx = np.asarray(out_rows, dtype=np.int64).reshape(len(out_rows), n_views)
    feats = torch.from_numpy(np.ascontiguousarray(emb[idx]))  # [N, V, D]
    if split != "train":
        feats = feats[:, 0]
    lab = torch.tensor([relabel[int(labels[r[0]])] for r in out_rows], dtype=torch.int64)
    return FeatureSplit(features=feats.float(), labels=lab, classnames=classnames, image_ids=out_ids)

