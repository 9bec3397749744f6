"""The Parquet feature store: layout, atomic shard writes, the typed manifest, and the reader trials use.

Layout (any fsspec URL: a local path, ``memory://``, ``s3://`` with s3fs, ...)::

    <root>/<model-slug>/<weights-slug>/<dataset>/
        part-<split>-<shard>.parquet   image_id, label, classname, split, view, embedding (plain Arrow types)
        _fewshot.json                  the few-shot draws per seed (train / val image ids), for auditing
        _manifest.json                 model identity, transforms, views, shots, seeds, split sha256, row counts,
                                       fingerprint; ``complete: true`` only once every shard is written
        .featurize.lock                (local stores) held by the featurize run writing the folder

Sidecar names start with ``_`` or ``.``, which Arrow's dataset discovery skips: ``pyarrow.dataset.dataset(folder)``,
``pandas.read_parquet(folder)`` and DuckDB's ``read_parquet('folder/*.parquet')`` read a dataset folder as it is.

A shard file exists under its final name only once it is complete (local: written to a hidden temporary name,
then renamed; object stores: one PUT, which is atomic), so "present" means "done" and a rerun skips it. The
manifest is written first with ``complete: false`` (so a rerun with other settings is refused before anything is
written) and rewritten with ``complete: true`` last; readers refuse anything else.

Modules: :mod:`~pipelines.store.layout` (names, URLs, file I/O), :mod:`~pipelines.store.manifest` (the typed
:class:`Manifest`, fingerprints), :mod:`~pipelines.store.reader` (:class:`DatasetStore`: opened once, splits read
once; :func:`open_store`, cached per process), :mod:`~pipelines.store.resolve` (``--features`` root or model folder
plus ``--model`` / ``--pretrained`` -> the model folder).
"""
from pipelines.store.layout import (
    FEWSHOT,
    LEGACY_MANIFEST,
    MANIFEST,
    SHARD_META_KEY,
    SPLITS,
    STORE_FORMAT,
    WRITER_LOCK,
    DatasetFolder,
    StoreError,
    canonical_json,
    feature_schema,
    join_url,
    model_store_url,
    normalize_url,
    parse_shard_name,
    sha256_json,
    shard_name,
    weights_slug,
)
from pipelines.store.manifest import NOT_FINGERPRINTED, Manifest, content_fingerprint
from pipelines.store.reader import (
    DatasetStore,
    FeatureSplit,
    SplitRows,
    list_datasets,
    load_manifest,
    open_store,
    open_target_store,
    read_features,
    read_manifest,
)
from pipelines.store.resolve import ModelFolder, model_folders, resolve_features, weights_id_of

__all__ = [
    "FEWSHOT", "LEGACY_MANIFEST", "MANIFEST", "NOT_FINGERPRINTED", "SHARD_META_KEY", "SPLITS", "STORE_FORMAT",
    "WRITER_LOCK", "DatasetFolder", "DatasetStore", "FeatureSplit", "Manifest", "ModelFolder", "SplitRows",
    "StoreError", "canonical_json", "content_fingerprint", "feature_schema", "join_url", "list_datasets",
    "load_manifest", "model_folders", "model_store_url", "normalize_url", "open_store", "open_target_store", "parse_shard_name",
    "read_features", "read_manifest", "resolve_features", "sha256_json", "shard_name", "weights_id_of",
    "weights_slug",
]
