"""Where things lie in the store and how files are written and read (fsspec: a local path, ``memory://``,
``s3://`` with s3fs, ...). Nothing here knows what the manifest means."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import posixpath
import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from pipelines.paths import HolderLock, LockHeld

log = logging.getLogger(__name__)

#: 2: sidecar files start with '_' so that Arrow's dataset discovery (pyarrow, pandas) skips them.
STORE_FORMAT = 2
SPLITS = ("train", "val", "test")
MANIFEST = "_manifest.json"
FEWSHOT = "_fewshot.json"
#: Format 1's manifest name; a folder holding it was written before the sidecars were renamed.
LEGACY_MANIFEST = "manifest.json"
#: Parquet key-value metadata of each shard (plain footer metadata: invisible to readers that ignore it).
SHARD_META_KEY = b"dept.shard"
_SHARD_RE = re.compile(r"^part-(train|val|test)-(\d{5})\.parquet$")
WRITER_LOCK = ".featurize.lock"
_TEMP_RE = re.compile(r"^\.(part-(train|val|test)-\d{5}\.parquet|_manifest\.json|_fewshot\.json)\.tmp-[0-9a-f]{12}$")


#: What reading a damaged shard raises: truncated or overwritten (no footer, a bad footer), a page that fails its
#: checksum or does not decompress.
_UNREADABLE = (OSError, pa.ArrowException, ValueError)


def _reason(error: Exception) -> str:
    """Arrow's reason on one line, without the stream name it prints for an fsspec file (``'<Buffer>'``)."""
    text = re.sub(r"^Could not open Parquet input source '[^']*': ", "", " ".join(str(error).split()))
    return text or type(error).__name__


class StoreError(ValueError):
    """The feature store cannot be used as asked (missing, incomplete, other model, other settings). One line."""


def url_to_filesystem(url: str):
    try:
        return url_to_fs(url)
    except ImportError as e:  # e.g. s3:// without s3fs
        raise StoreError(f"cannot open {url}: {e}") from None
    except ValueError as e:  # unknown protocol
        raise StoreError(f"cannot open {url}: {str(e).splitlines()[0]}") from None


def normalize_url(url: str) -> str:
    """Local paths (and ``file:`` URLs) become absolute paths: trials run in other processes, on other machines,
    with other working folders. Other URLs are kept as given, without a trailing slash."""
    url = str(url)
    if urlparse(url).scheme in ("", "file"):
        local = urlparse(url).path if url.startswith("file:") else url
        return str(Path(local).expanduser().resolve())
    return url.rstrip("/")


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


class DatasetFolder:
    """The files of one ``<model>/<weights>/<dataset>`` folder, through fsspec: atomic writes, listing, reads.
    What the files mean is :class:`~pipelines.store.reader.DatasetStore`'s business."""

    def __init__(self, url: str):
        self.url = str(url).rstrip("/")
        self.fs, self.path = url_to_filesystem(self.url)
        #: shard name -> {"bytes", "sha256"}: of shards this process wrote or hashed (the manifest records them)
        self.records: dict[str, dict] = {}

    def __repr__(self) -> str:
        return f"DatasetFolder({self.url!r})"

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

    def write_shard(self, name: str, table: pa.Table, meta: dict) -> dict:
        """Write one complete shard; ``meta`` (node ids, skipped files) goes into the Parquet footer. Returns (and
        keeps, for the manifest) its record: size and sha256 of the bytes written."""
        table = table.replace_schema_metadata({SHARD_META_KEY: canonical_json(meta).encode()})
        sink = pa.BufferOutputStream()
        # Page checksums: a reader finds a damaged page itself instead of decoding wrong features.
        pq.write_table(table, sink, compression="zstd", write_page_checksum=True)
        data = sink.getvalue().to_pybytes()
        self.write_bytes_atomic(name, data)
        self.records[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        return self.records[name]

    def remove(self, name: str) -> None:
        self.fs.rm(self._p(name))

    @contextlib.contextmanager
    def writer_lock(self):
        """Held by the one featurize run writing this folder (local stores): a second run would race on the
        manifest and, at its cleanup, remove the first run's temporary shard files. Object stores need none (no
        temporaries; a duplicate PUT of a deterministic shard is harmless)."""
        if not isinstance(self.fs, LocalFileSystem):
            yield
            return
        lock = HolderLock(self._p(WRITER_LOCK))
        try:
            lock.acquire()
        except LockHeld as held:
            raise StoreError(f"{self.url}: another featurize run is writing here ({held.holder}); "
                             f"wait for it to finish, then rerun (finished shards are kept)") from None
        try:
            yield
        finally:
            lock.release()

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

    def damaged(self, name: str, error: Exception) -> StoreError:
        """The one-line error for a shard that cannot be read: which file, why, and how to repair it."""
        return StoreError(f"feature store shard {self.url}/{name} is damaged ({_reason(error)}); rerun the same "
                          "`dept-pipeline featurize` command to re-encode it")

    def _footer(self, name: str) -> tuple[int, dict]:
        with self.fs.open(self._p(name), "rb") as f:
            md = pq.ParquetFile(f).metadata
            kv = md.metadata or {}
            return md.num_rows, json.loads(kv[SHARD_META_KEY].decode()) if SHARD_META_KEY in kv else {}

    def shard_meta(self, name: str) -> tuple[int, dict]:
        """(row count, footer metadata) of one shard, reading only its footer; a damaged one is a StoreError."""
        try:
            return self._footer(name)
        except _UNREADABLE as e:
            raise self.damaged(name, e) from None

    def shard_record(self, name: str) -> dict:
        """{"bytes", "sha256"} of a shard as it is now (kept: hashed once per process)."""
        if name not in self.records:
            digest = hashlib.sha256()
            with self.fs.open(self._p(name), "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    digest.update(block)
            self.records[name] = {"bytes": int(self.fs.size(self._p(name))), "sha256": digest.hexdigest()}
        return self.records[name]

    def check_shard(self, name: str, rows: int, recorded: dict | None = None, *,
                    skipped_views: int = 0) -> tuple[str | None, dict]:
        """Why shard ``name`` cannot be kept (None when it can) and its footer metadata. It must hold ``rows``
        rows less ``skipped_views`` per image skipped at encoding, and match the size and sha256 recorded at write
        time (``recorded``: its manifest entry; stores written before those were recorded have rows only)."""
        recorded = recorded or {}
        try:
            n, meta = self._footer(name)
        except _UNREADABLE as e:
            return _reason(e), {}
        want = rows - len(meta.get("skipped", [])) * skipped_views
        if n != want or ("rows" in recorded and n != int(recorded["rows"])):
            return f"{n} rows, {recorded.get('rows', want)} expected", meta
        if "sha256" in recorded:
            now = self.shard_record(name)
            if now["bytes"] != recorded.get("bytes", now["bytes"]):
                return f"{now['bytes']} bytes, {recorded['bytes']} written", meta
            if now["sha256"] != recorded["sha256"]:
                return "sha256 differs from the one recorded when it was written", meta
        return None, meta

    def read_shards(self, names: list[str]) -> pa.Table | None:
        """The given shards concatenated in order, footer metadata dropped; None for no shards. A shard that
        cannot be read is a one-line StoreError naming its file."""
        tables = []
        for n in names:
            try:
                with self.fs.open(self._p(n), "rb") as f:
                    tables.append(pq.read_table(f, page_checksum_verification=True))
            except _UNREADABLE as e:
                raise self.damaged(n, e) from None
        if not tables:
            return None
        return pa.concat_tables(tables).replace_schema_metadata(None)
