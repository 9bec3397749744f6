"""A dataset folder of the store is plain Parquet to pyarrow, pandas and DuckDB (sidecars are skipped by name);
stores of the old layout are refused in one line."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipelines.store import (
    FEWSHOT,
    LEGACY_MANIFEST,
    MANIFEST,
    WRITER_LOCK,
    DatasetFolder,
    StoreError,
    load_manifest,
    model_store_url,
    read_features,
    resolve_features,
)
from tests.pipelines.store.toy_store import DIM, IDENTITY, VIEWS, embedding, make_store


@pytest.fixture
def folder(tmp_path) -> str:
    """A toy dataset folder with everything featurize can leave beside the shards: both sidecars, the writer
    lock and a temporary file of an interrupted run."""
    store = make_store(model_store_url(str(tmp_path / "features"), IDENTITY["model"], IDENTITY["weights_id"]))
    open(os.path.join(store.path, WRITER_LOCK), "w").write("pid 1 on here\n")
    open(os.path.join(store.path, ".part-val-00000.parquet.tmp-0123456789ab"), "wb").write(b"half a file")
    assert {MANIFEST, FEWSHOT} <= set(os.listdir(store.path))
    return store.path


def expected_rows(path: str) -> int:
    return sum(pq.read_metadata(os.path.join(path, f)).num_rows for f in os.listdir(path) if f.startswith("part-"))


def check_rows(image_ids, views, embeddings, n_rows: int) -> None:
    assert len(image_ids) == n_rows > 0
    for image_id, view, e in list(zip(image_ids, views, embeddings))[:: max(1, n_rows // 7)]:
        assert np.array_equal(np.asarray(e, np.float32), embedding(image_id, int(view)))


def test_pyarrow_dataset_and_read_table_read_the_folder(folder):
    n = expected_rows(folder)
    dataset = pads.dataset(folder)  # default discovery: names starting with '_' or '.' are skipped
    assert sorted(os.path.basename(f) for f in dataset.files) == sorted(f for f in os.listdir(folder)
                                                                        if f.startswith("part-"))
    table = dataset.to_table()
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), DIM)
    check_rows(table["image_id"].to_pylist(), table["view"].to_pylist(), table["embedding"].to_pylist(), n)
    assert pq.read_table(folder).num_rows == n
    train = pq.read_table(folder, filters=[("split", "=", "train")])
    assert set(train["view"].to_pylist()) == set(range(1 + VIEWS))


def test_pandas_reads_the_folder(folder):
    import pandas as pd

    df = pd.read_parquet(folder)
    assert list(df.columns) == ["image_id", "label", "classname", "split", "view", "embedding"]
    check_rows(df["image_id"].tolist(), df["view"].tolist(), df["embedding"].tolist(), expected_rows(folder))
    assert df.groupby("split").size().to_dict() == load_manifest(DatasetFolder(folder)).rows


def test_duckdb_reads_the_folder(folder):
    import duckdb

    con = duckdb.connect()
    rows = con.execute(f"SELECT image_id, view, embedding FROM read_parquet('{folder}/*.parquet') "
                       "ORDER BY split, image_id, view").fetchall()
    check_rows([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], expected_rows(folder))
    per_split = dict(con.execute(f"SELECT split, count(*) FROM '{folder}/*.parquet' GROUP BY split").fetchall())
    assert per_split["val"] == 15 and per_split["test"] == 10


def test_old_layout_is_refused_in_one_line(tmp_path):
    """Format 1 named its sidecars manifest.json / fewshot.json: readers and resolution say to re-run featurize."""
    root = tmp_path / "features"
    model_url = model_store_url(str(root), IDENTITY["model"], IDENTITY["weights_id"])
    store = make_store(model_url)
    os.rename(os.path.join(store.path, MANIFEST), os.path.join(store.path, LEGACY_MANIFEST))
    os.rename(os.path.join(store.path, FEWSHOT), os.path.join(store.path, "fewshot.json"))
    for call in (lambda: read_features(model_url, "toy", split="test"),
                 lambda: resolve_features(str(root), dataset="toy"),
                 lambda: resolve_features(model_url)):
        with pytest.raises(StoreError, match="old format 1 layout .* re-run `dept-pipeline featurize`") as e:
            call()
        assert "\n" not in str(e.value)


def test_other_format_is_refused(tmp_path):
    model_url = model_store_url(str(tmp_path), IDENTITY["model"], IDENTITY["weights_id"])
    store = make_store(model_url)
    raw = store.read_json(MANIFEST)
    raw["format"] = 99
    store.write_json(MANIFEST, raw)
    with pytest.raises(StoreError, match="format 99, this version reads format 2"):
        read_features(model_url, "toy", split="test")
    shutil.rmtree(store.path)
    with pytest.raises(StoreError, match="no features for dataset 'toy'"):
        read_features(model_url, "toy", split="test")
    assert DatasetFolder(store.url).shard_names() == []
