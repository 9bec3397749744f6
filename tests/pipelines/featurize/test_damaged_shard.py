"""A damaged shard of a real featurized store (truncated, or bytes changed in place): readers name the file in one
line, and a rerun of the same `featurize` re-encodes it (what it skips it verifies: rows, size and sha256 recorded
in the manifest when each shard was written). Real Ray, the tiny open_clip model, real Parquet."""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dept.clip import file_sha256
from pipelines.cli import main
from pipelines.store import MANIFEST, DatasetStore, StoreError, model_store_url

pytestmark = pytest.mark.slow


def featurize(args: list[str]):
    result = CliRunner().invoke(main, ["featurize", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def rows(path: str) -> pa.Table:
    return pq.read_table(path).replace_schema_metadata(None)


def assert_same_rows(got: pa.Table, want: pa.Table) -> None:
    """Same schema, ids, labels, splits and views exactly; embeddings equal to float32 rounding. A shard encoded
    again goes through the encoder in another batch than at first (here its 3 rows alone, at first beside other
    shards' rows), and CPU matmuls of another batch size may differ in the last bits."""
    assert got.schema == want.schema and got.num_rows == want.num_rows
    for name in want.column_names:
        if name == "embedding":
            x, y = (np.stack(t.column(name).to_numpy(zero_copy_only=False)) for t in (got, want))
            assert np.allclose(x, y, rtol=1e-5, atol=1e-6), name
        else:
            assert got.column(name).equals(want.column(name)), name


@pytest.fixture(scope="module")
def store(ray_cluster, tiny_clip_checkpoint, tmp_path_factory):
    """A featurized demo dataset (3 images per shard) and a pristine copy of its folder."""
    from dept.datasets import write_demo_dataset

    data = write_demo_dataset(tmp_path_factory.mktemp("data") / "demo", num_classes=3, train_per_class=3,
                              val_per_class=1, test_per_class=2, image_size=32)
    out = str(tmp_path_factory.mktemp("features"))
    args = ["--dataset-dir", str(data), "--out", out, "--model", "dept-tiny-vit", "--pretrained",
            str(tiny_clip_checkpoint), "--views", "1", "--shots", "2", "--seeds", "1", "--images-per-shard", "3",
            "--batch-size", "8", "--workers", "1", "--no-progress"]
    featurize(args)
    model_url = model_store_url(out, "dept-tiny-vit", "sha256:" + file_sha256(tiny_clip_checkpoint))
    folder = os.path.join(model_url, "demo")
    pristine = str(tmp_path_factory.mktemp("pristine") / "demo")
    shutil.copytree(folder, pristine)
    return {"args": args, "model_url": model_url, "folder": folder, "pristine": pristine}


@pytest.fixture
def fresh(store):
    """The store folder as featurize left it (each test damages it its own way)."""
    shutil.rmtree(store["folder"])
    shutil.copytree(store["pristine"], store["folder"])
    return store


def test_manifest_records_each_shards_size_rows_and_sha256(store):
    manifest = json.load(open(os.path.join(store["pristine"], MANIFEST)))
    shards = sorted(os.path.basename(p) for p in glob.glob(os.path.join(store["pristine"], "part-*.parquet")))
    assert sorted(manifest["shards"]) == shards and len(shards) >= 3
    for name in shards:
        path = os.path.join(store["pristine"], name)
        record = manifest["shards"][name]
        assert record["bytes"] == os.path.getsize(path)
        assert record["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
        assert record["rows"] == pq.ParquetFile(path).metadata.num_rows


def _truncate(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def test_truncated_shard_is_named_in_one_line_and_rerun_repairs_it(fresh):
    folder, name = fresh["folder"], "part-train-00001.parquet"
    original = rows(os.path.join(folder, name))
    _truncate(os.path.join(folder, name))

    opened = DatasetStore.open(fresh["model_url"], "demo")
    with pytest.raises(StoreError) as err:
        opened.split_rows("train")
    message = str(err.value)
    assert "\n" not in message and f"{folder}/{name}" in message and "featurize" in message
    assert "<Buffer>" not in message
    assert opened.split_rows("test").num_rows > 0  # the other splits still read

    result = featurize(fresh["args"])
    shards = len(glob.glob(os.path.join(folder, "part-*.parquet")))
    assert f"encoded {original.num_rows} this run, {shards - 1} shards already done" in result.output
    assert_same_rows(rows(os.path.join(folder, name)), original)  # same rows, same values
    for other in glob.glob(os.path.join(fresh["pristine"], "part-*.parquet")):
        if os.path.basename(other) != name:
            assert rows(os.path.join(folder, os.path.basename(other))).equals(rows(other))  # untouched
    assert DatasetStore.open(fresh["model_url"], "demo").split_rows("train").num_rows > 0
    assert not [n for n in os.listdir(folder) if ".tmp-" in n]


def test_bytes_changed_in_place_are_found_by_the_recorded_sha256(fresh):
    """Same size, same footer: only the checksum recorded at write time tells; the rerun re-encodes that shard."""
    folder, name = fresh["folder"], "part-test-00000.parquet"
    path = os.path.join(folder, name)
    original = rows(path)
    data = bytearray(open(path, "rb").read())
    data[8] ^= 0xFF  # inside the first data page (after the 4-byte magic and the page header's start)
    open(path, "wb").write(bytes(data))
    assert pq.ParquetFile(path).metadata.num_rows == original.num_rows  # the footer still reads

    result = featurize(fresh["args"])
    assert f"encoded {original.num_rows} this run" in result.output
    assert_same_rows(rows(path), original)
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == \
        json.load(open(os.path.join(folder, MANIFEST)))["shards"][name]["sha256"]


def test_missing_shard_of_a_complete_store_is_encoded_again(fresh):
    folder, name = fresh["folder"], "part-val-00000.parquet"
    original = rows(os.path.join(folder, name))
    os.remove(os.path.join(folder, name))
    result = featurize(fresh["args"])
    assert f"encoded {original.num_rows} this run" in result.output
    assert_same_rows(rows(os.path.join(folder, name)), original)


def test_store_without_recorded_checksums_reads_and_is_checked_by_its_footer(fresh):
    """A store written before sizes and checksums were recorded: it still reads, a rerun keeps its intact shards,
    and a truncated one is still found (by its footer) and re-encoded."""
    folder = fresh["folder"]
    path = os.path.join(folder, MANIFEST)
    manifest = json.load(open(path))
    for record in manifest["shards"].values():
        del record["bytes"], record["sha256"]
    open(path, "w").write(json.dumps(manifest, indent=1, sort_keys=True) + "\n")  # the fingerprint skips shards
    assert DatasetStore.open(fresh["model_url"], "demo").split_rows("train").num_rows > 0

    shards = len(glob.glob(os.path.join(folder, "part-*.parquet")))
    assert f"encoded 0 this run, {shards} shards already done" in featurize(fresh["args"]).output
    name = "part-train-00000.parquet"
    original = rows(os.path.join(folder, name))
    _truncate(os.path.join(folder, name))
    assert f"encoded {original.num_rows} this run" in featurize(fresh["args"]).output
    assert_same_rows(rows(os.path.join(folder, name)), original)
    assert "sha256" in json.load(open(path))["shards"][name]  # the repair records what it wrote
