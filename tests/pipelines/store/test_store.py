"""The Parquet feature store on its own (no Ray): layout, atomic writes, manifest checks, and the reader."""
from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dept.datasets import DatasetSplits, base_new_split, draw_few_shot
from pipelines.store import (
    FEWSHOT,
    MANIFEST,
    StoreError,
    list_datasets,
    model_store_url,
    read_features,
    read_manifest,
)
from tests.pipelines.store.toy_store import CLASSES, DIM, IDENTITY, VIEWS, embedding, items, make_store


@pytest.fixture
def model_url(tmp_path):
    return model_store_url(str(tmp_path / "features"), IDENTITY["model"], IDENTITY["weights_id"])


def test_shards_read_with_plain_pyarrow(model_url):
    store = make_store(model_url)
    files = sorted(f for f in os.listdir(store.path) if f.endswith(".parquet"))
    assert files[0] == "part-test-00000.parquet" and len(files) >= 3
    for f in files:
        t = pq.read_table(os.path.join(store.path, f))
        assert not any(isinstance(field.type, pa.ExtensionType) for field in t.schema)
        assert t.schema.field("embedding").type == pa.list_(pa.float32(), DIM)
        assert [t.schema.field(c).type for c in ("image_id", "label", "classname", "split", "view")] == [
            pa.string(), pa.int32(), pa.string(), pa.string(), pa.int16()]
    n, meta = store.shard_meta(files[0])
    assert n == pq.read_metadata(os.path.join(store.path, files[0])).num_rows and meta["node_ids"] == ["n1"]


def test_local_writes_leave_no_temporaries_and_stale_ones_are_cleaned(model_url):
    store = make_store(model_url)
    names = os.listdir(store.path)
    assert not [n for n in names if n.startswith(".")]
    stale = os.path.join(store.path, ".part-test-00000.parquet.tmp-0123456789ab")
    open(stale, "wb").write(b"half a file")
    assert store.shard_names() == sorted(n for n in names if n.startswith("part-"))  # never listed as a shard
    store.remove_stale_temporaries()
    assert not os.path.exists(stale) and sorted(os.listdir(store.path)) == sorted(names)


def test_model_folders_never_collide():
    ids = [("ViT-B-16", "openai"), ("ViT-B-16", "laion2b_s34b_b88k"), ("ViT-B-16", "random-init:0"),
           ("ViT-B-16", "sha256:" + "1" * 64), ("ViT-B-16", "sha256:" + "2" * 64), ("ViT-B-32", "openai"),
           ("hf-hub:org/model", "openai"), ("hf-hub_org_model", "openai"), ("a/b", "x"), ("a_b", "x")]
    urls = [model_store_url("s3://bucket/f", m, w) for m, w in ids]
    assert len(set(urls)) == len(urls)
    for url in urls:
        assert url.startswith("s3://bucket/f/") and url.count("/") == 5  # exactly <model>/<weights> below the root


def test_reader_train_draw_with_views_and_base_new(model_url):
    make_store(model_url)
    fewshot = json.load(open(f"{model_url}/toy/{FEWSHOT}"))
    base, new = base_new_split(len(CLASSES))

    all_ = read_features(model_url, "toy", split="train", seed=1, shots=2, expected_identity=IDENTITY)
    assert all_.image_ids == fewshot["draws"]["1"]["train"] and all_.features.shape == (2 * 5, 1 + VIEWS, DIM)
    assert all_.features.dtype == torch.float32 and all_.labels.dtype == torch.int64
    assert torch.equal(all_.features[:, :, 1], torch.arange(1 + VIEWS).float().expand(10, -1))  # views in order
    for image_id, f in zip(all_.image_ids, all_.features):
        assert torch.equal(f[2], torch.from_numpy(embedding(image_id, 2)))

    b = read_features(model_url, "toy", split="train", seed=1, classes="base")
    n = read_features(model_url, "toy", split="train", seed=1, classes="new")
    assert b.classnames == [CLASSES[c] for c in base] and n.classnames == [CLASSES[c] for c in new]
    assert sorted(b.labels.tolist()) == sorted([0, 1, 2] * 2) and sorted(n.labels.tolist()) == [0, 0, 1, 1]
    assert set(b.image_ids) | set(n.image_ids) == set(all_.image_ids)
    for image_id, lab in zip(n.image_ids, n.labels):
        assert image_id.split("/")[0] == n.classnames[lab]

    other_seed = read_features(model_url, "toy", split="train", seed=2)
    assert other_seed.image_ids == fewshot["draws"]["2"]["train"] and other_seed.image_ids != all_.image_ids


def test_reader_val_and_test(model_url):
    make_store(model_url)
    val = read_features(model_url, "toy", split="val", seed=2, shots=2)
    assert val.features.shape == (2 * 5, DIM)
    assert val.image_ids == json.load(open(f"{model_url}/toy/{FEWSHOT}"))["draws"]["2"]["val"]
    test = read_features(model_url, "toy", split="test", classes="new")
    assert test.features.shape == (2 * 2, DIM) and test.classnames == ["dog", "eel"]
    assert test.image_ids == ["dog/test0.png", "eel/test0.png", "dog/test1.png", "eel/test1.png"]  # split order
    assert test.labels.tolist() == [0, 1, 0, 1]
    everything = read_features(model_url, "toy", split="val")
    assert everything.features.shape == (3 * 5, DIM)


def test_reader_refusals(model_url, tmp_path):
    store = make_store(model_url)
    wrong = {"model": "m", "weights_id": "openai"}
    with pytest.raises(StoreError, match="not of m .weights openai") as e:
        read_features(model_url, "toy", split="test", expected_identity=wrong)
    assert "\n" not in str(e.value)
    with pytest.raises(StoreError, match="shots=4"):
        read_features(model_url, "toy", split="train", seed=1, shots=4)
    with pytest.raises(StoreError, match="seed=3"):
        read_features(model_url, "toy", split="train", seed=3)
    with pytest.raises(StoreError, match="no features for dataset 'nope'"):
        read_features(model_url, "nope", split="test")

    manifest = json.load(open(f"{store.path}/{MANIFEST}"))
    manifest["views"] = 5  # hand-edited, fingerprint not updated
    store.write_json(MANIFEST, manifest)
    with pytest.raises(StoreError, match="fingerprint"):
        read_manifest(model_url, "toy")


def test_incomplete_store_is_never_read(model_url):
    make_store(model_url, complete=False)
    with pytest.raises(StoreError, match="incomplete"):
        read_features(model_url, "toy", split="test")
    assert list_datasets(model_url) == []
    make_store(model_url, dataset="done")
    assert list_datasets(model_url) == ["done"]


def test_store_root_with_identity_and_memory_url(tmp_path):
    url = model_store_url("memory://dept-test-store", IDENTITY["model"], IDENTITY["weights_id"])
    make_store(url)
    # Either the model folder, or the store root plus the identity, finds the features.
    a = read_features(url, "toy", split="test")
    b = read_features("memory://dept-test-store", "toy", split="test", expected_identity=IDENTITY)
    assert torch.equal(a.features, b.features) and a.image_ids == b.image_ids
    assert read_manifest(url, "toy").rows["test"] == 10


def test_whole_split_store_redraws_like_coop(model_url):
    """A store of every train image (shots 0) serves any (shots, seed) draw, identical to CoOp's draw."""
    make_store(model_url, shots=0, seeds=())
    splits = DatasetSplits("toy", "", list(CLASSES), items("train", 4), items("val", 3), [], "")
    train, val = draw_few_shot(splits, 3, 7)
    got = read_features(model_url, "toy", split="train", seed=7, shots=3)
    assert got.image_ids == [i.impath for i in train] and got.features.shape == (15, 1 + VIEWS, DIM)
    assert read_features(model_url, "toy", split="val", seed=7, shots=3).image_ids == [i.impath for i in val]
    assert len(read_features(model_url, "toy", split="train").image_ids) == 20
    assert len(read_features(model_url, "toy", split="train", seed=1).image_ids) == 20  # shots 0: every image
