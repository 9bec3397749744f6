"""`dept-pipeline featurize` end to end: real Ray (the two-node loopback cluster), real open_clip models with random
weights, real Parquet files."""
from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from dept.clip import file_sha256, load_clip
from dept.datasets import draw_few_shot, load_custom_dataset, write_demo_dataset
from dept.transforms import train_view
from pipelines.cli import main
from pipelines.featurize import FeaturizeConfig, featurize
from pipelines.store import FEWSHOT, MANIFEST, StoreError, model_store_url, read_features, read_manifest

VIEWS, SHOTS, SEEDS = 2, 2, (1, 2)


def run_cli(*args: str):
    return CliRunner().invoke(main, ["featurize", *args], catch_exceptions=False)


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def store_rows(folder: str) -> pa.Table:
    """Every shard of a dataset folder, read with plain pyarrow."""
    files = sorted(glob.glob(os.path.join(folder, "part-*.parquet")))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else None


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def node_ids_by_role() -> dict[str, str]:
    import ray

    out = {}
    for n in ray.nodes():
        if n["Alive"]:
            for role in ("node_head", "node_worker"):
                if role in n["Resources"]:
                    out[role] = n["NodeID"]
    return out


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return str(write_demo_dataset(tmp_path_factory.mktemp("data") / "demo", num_classes=4, train_per_class=4,
                                  val_per_class=2, test_per_class=3, image_size=32))


@pytest.fixture(scope="module")
def tiny_args(demo_dir, tiny_clip_checkpoint, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("features"))
    return [
        "--dataset-dir", demo_dir, "--out", out, "--model", "dept-tiny-vit", "--pretrained", str(tiny_clip_checkpoint),
        "--views", str(VIEWS), "--shots", str(SHOTS), "--seeds", ",".join(map(str, SEEDS)), "--images-per-shard", "3",
        # Batch 16 makes decoded blocks ~200 KB: above Ray's 100 KB inline limit, so each block stays in the object
        # store of the node that decoded it and Ray Data routes it to that node's encoder (actor locality). Smaller
        # blocks are inlined into the driver, lose their location, and one idle actor can take all of them.
        "--batch-size", "16", "--workers", "2", "--no-progress",
        # One encoder actor per node, so that the two-node test does not depend on Ray's packing heuristics.
        "--worker-resource", "one_per_node=1",
    ]


@pytest.fixture(scope="module")
def tiny_store(ray_cluster, tiny_args, tiny_clip_checkpoint):
    """One featurize run of the demo dataset with two encoder workers on the two-node cluster."""
    result = run_cli(*tiny_args)
    assert result.exit_code == 0, result.output
    out = tiny_args[tiny_args.index("--out") + 1]
    identity = {"model": "dept-tiny-vit", "weights_id": "sha256:" + file_sha256(tiny_clip_checkpoint)}
    model_url = model_store_url(out, identity["model"], identity["weights_id"])
    assert f"features: {model_url}" in result.output
    return {"model_url": model_url, "folder": f"{model_url}/demo", "identity": identity, "output": result.output}


@pytest.mark.slow
def test_rows_draws_and_manifest(tiny_store, demo_dir):
    splits = load_custom_dataset(demo_dir)
    draws = {s: draw_few_shot(splits, SHOTS, s) for s in SEEDS}
    union = {it.impath for s in SEEDS for it in draws[s][0]}
    table = store_rows(tiny_store["folder"])
    keys = list(zip(table.column("image_id").to_pylist(), table.column("split").to_pylist(),
                    table.column("view").to_pylist()))
    assert len(keys) == len(set(keys))  # exactly one row per (image, split, view)
    expected = {(it.impath, "val", 0) for it in splits.val} | {(it.impath, "test", 0) for it in splits.test}
    expected |= {(i, "train", v) for i in union for v in range(VIEWS + 1)}
    assert set(keys) == expected
    assert len(union) > SHOTS * 4  # the two seeds drew different images: the union is stored, not one draw

    manifest = read_manifest(tiny_store["model_url"], "demo")
    assert manifest.complete is True and manifest.rows == {"train": len(union) * 3, "val": 8, "test": 12}
    assert manifest.model == "dept-tiny-vit" and manifest.weights_id == tiny_store["identity"]["weights_id"]
    assert manifest.feature_dim == 64 and manifest.views == VIEWS and manifest.seeds == tuple(SEEDS)
    assert manifest.split_sha256[0]["sha256"] == file_sha256(os.path.join(demo_dir, "split.json"))
    fewshot = json.load(open(os.path.join(tiny_store["folder"], FEWSHOT)))
    for s in SEEDS:
        assert fewshot["draws"][str(s)]["train"] == [it.impath for it in draws[s][0]]
        assert fewshot["draws"][str(s)]["val"] == [it.impath for it in draws[s][1]]
    # Plain Arrow types, no Ray extension types
    assert not any(isinstance(f.type, pa.ExtensionType) for f in table.schema)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 64)


@pytest.mark.slow
def test_encoding_ran_on_both_nodes(tiny_store):
    """Decode tasks spread over the nodes (Ray Data's SPREAD); each node's encoder takes the blocks decoded there."""
    manifest = read_manifest(tiny_store["model_url"], "demo")
    used = {n for shard in manifest.shards.values() for n in shard["node_ids"]}
    assert used == set(node_ids_by_role().values()) and len(used) == 2


@pytest.mark.slow
def test_stored_views_are_the_transforms_encoded(tiny_store, demo_dir, tiny_clip_checkpoint):
    clip = load_clip("dept-tiny-vit", str(tiny_clip_checkpoint))
    table = store_rows(tiny_store["folder"])
    emb = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, 64)
    rows = {(i, s, v): r for r, (i, s, v) in enumerate(zip(table.column("image_id").to_pylist(),
                                                           table.column("split").to_pylist(),
                                                           table.column("view").to_pylist()))}
    train_ids = sorted({i for i, s, _ in rows if s == "train"})[:3]
    for image_id in train_ids:
        img = Image.open(os.path.join(demo_dir, "images", image_id))
        pixels = [clip.preprocess_test(img)] + [
            train_view(img, image_size=32, mean=clip.mean, std=clip.std, seed=0, image_id=image_id, view=v)
            for v in range(1, VIEWS + 1)]
        with torch.no_grad():
            want = clip.model.encode_image(torch.stack(pixels))
        for v in range(VIEWS + 1):
            assert rel_err(torch.tensor(emb[rows[(image_id, "train", v)]]), want[v]) <= 1e-5


@pytest.mark.slow
def test_rerun_encodes_nothing(tiny_store, tiny_args):
    folder = tiny_store["folder"]
    before = {f: os.stat(f).st_mtime_ns for f in glob.glob(os.path.join(folder, "*"))}
    result = run_cli(*tiny_args)
    assert result.exit_code == 0, result.output
    n_shards = len([f for f in before if os.path.basename(f).startswith("part-")])
    assert f"encoded 0 this run, {n_shards} shards already done" in result.output
    assert {f: os.stat(f).st_mtime_ns for f in glob.glob(os.path.join(folder, "*"))} == before


@pytest.mark.slow
def test_one_node_run_gives_the_same_store(tiny_store, demo_dir, tiny_clip_checkpoint):
    """Pinned to the head node, written to memory://: same rows, same features, same fingerprint."""
    cfg = FeaturizeConfig(out="memory://dept-one-node", dataset_dirs=(demo_dir,), model="dept-tiny-vit",
                          pretrained=str(tiny_clip_checkpoint), views=VIEWS, shots=SHOTS, seeds=SEEDS,
                          images_per_shard=3, batch_size=4, workers=1, worker_resources={"node_head": 0.01},
                          progress=False)
    result = featurize(cfg)
    assert result.encoded == sum(read_manifest(tiny_store["model_url"], "demo").rows.values())
    one = read_manifest(result.model_url, "demo")
    two = read_manifest(tiny_store["model_url"], "demo")
    assert one.fingerprint == two.fingerprint
    assert {n for s in one.shards.values() for n in s["node_ids"]} == {node_ids_by_role()["node_head"]}
    for split, seed in (("train", 1), ("val", 2), ("test", None)):
        a = read_features(result.model_url, "demo", split=split, seed=seed)
        b = read_features(tiny_store["model_url"], "demo", split=split, seed=seed)
        assert a.image_ids == b.image_ids and torch.equal(a.labels, b.labels)
        assert torch.allclose(a.features, b.features, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_reader_on_featurized_store(tiny_store, demo_dir):
    url, identity = tiny_store["model_url"], tiny_store["identity"]
    names = load_custom_dataset(demo_dir).classnames
    base = read_features(url, "demo", split="train", seed=1, shots=SHOTS, classes="base", expected_identity=identity)
    assert base.features.shape == (2 * SHOTS, VIEWS + 1, 64) and base.classnames == names[:2]
    assert sorted(base.labels.tolist()) == [0, 0, 1, 1]
    new = read_features(url, "demo", split="test", classes="new", expected_identity=identity)
    assert new.features.shape == (6, 64) and new.classnames == names[2:] and set(new.labels.tolist()) == {0, 1}
    val = read_features(url, "demo", split="val", seed=2, classes="all")
    assert val.features.shape == (4 * 2, 64)  # min(shots, 4) = 2 per class
    with pytest.raises(StoreError, match="random-init"):
        read_features(url, "demo", split="test", expected_identity={"model": "dept-tiny-vit", "weights_id": "random-init:0"})


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing that looks complete


def _no_store(out: str) -> None:
    assert not glob.glob(os.path.join(out, "**", MANIFEST), recursive=True)


@pytest.mark.parametrize("case", ["unknown", "no_root", "no_split_file", "missing_image", "no_data_root_option"])
def test_bad_input_is_one_line(case, demo_dir, tmp_path, tiny_clip_checkpoint):
    out = str(tmp_path / "out")
    common = ["--out", out, "--model", "dept-tiny-vit", "--pretrained", str(tiny_clip_checkpoint), "--no-progress"]
    if case == "unknown":
        msg = one_line_error(run_cli("--dataset", "NoSuchSet", "--data-root", str(tmp_path), *common))
        assert "NoSuchSet" in msg
    elif case == "no_root":
        msg = one_line_error(run_cli("--dataset", "DTD", "--data-root", str(tmp_path / "absent"), *common))
        assert str(tmp_path / "absent") in msg
    elif case == "no_split_file":
        d = tmp_path / "nosplit"
        shutil.copytree(demo_dir, d)
        os.remove(d / "split.json")
        msg = one_line_error(run_cli("--dataset-dir", str(d), *common))
        assert "split file" in msg and str(d / "split.json") in msg
    elif case == "missing_image":
        d = tmp_path / "noimage"
        shutil.copytree(demo_dir, d)
        victim = json.load(open(d / "split.json"))["test"][0][0]
        os.remove(d / "images" / victim)
        msg = one_line_error(run_cli("--dataset-dir", str(d), *common))
        assert str(d / "images" / victim) in msg
    else:
        msg = one_line_error(run_cli("--dataset", "DTD", *common))
        assert "--data-root" in msg
    _no_store(out)


@pytest.mark.slow
def test_store_of_another_model_is_refused(tiny_store, tiny_args):
    """A dataset folder written by one model, found where another model's features belong."""
    out = tiny_args[tiny_args.index("--out") + 1]
    foreign = os.path.join(model_store_url(out, "dept-tiny-vit", "random-init:0"), "demo")
    shutil.copytree(tiny_store["folder"], foreign)
    before = sorted(os.listdir(foreign))
    args = list(tiny_args)
    args[args.index("--pretrained") + 1] = "none"
    msg = one_line_error(run_cli(*args))
    assert foreign in msg and tiny_store["identity"]["weights_id"] in msg and "random-init:0" in msg
    assert sorted(os.listdir(foreign)) == before  # nothing deleted or added
    shutil.rmtree(foreign)


@pytest.mark.slow
def test_other_settings_into_the_same_store_are_refused(tiny_store, tiny_args):
    args = list(tiny_args)
    args[args.index("--views") + 1] = str(VIEWS + 1)
    before = sorted(os.listdir(tiny_store["folder"]))
    msg = one_line_error(run_cli(*args))
    assert f"views {VIEWS} in the store, {VIEWS + 1} now" in msg
    assert sorted(os.listdir(tiny_store["folder"])) == before
    assert read_manifest(tiny_store["model_url"], "demo").complete is True


def test_a_second_run_into_a_folder_being_written_is_refused(tiny_args, tmp_path):
    """While one run holds a dataset folder, another run into it stops in one line before writing anything (it
    would race on the manifest and remove the first run's temporary shards at its cleanup)."""
    from pipelines.store import DatasetFolder

    args = list(tiny_args)
    out = str(tmp_path / "busy")
    args[args.index("--out") + 1] = out
    pretrained = args[args.index("--pretrained") + 1]
    identity = {"model": "dept-tiny-vit", "weights_id": "sha256:" + file_sha256(pretrained)}
    folder = os.path.join(model_store_url(out, identity["model"], identity["weights_id"]), "demo")
    with DatasetFolder(folder).writer_lock():
        msg = one_line_error(run_cli(*args))
    assert folder in msg and f"pid {os.getpid()}" in msg and "another featurize run" in msg
    assert os.listdir(folder) == [".featurize.lock"]  # no manifest, no draws, no shard


def fake_coop_root(demo_dir: str, root) -> str:
    """The demo images laid out as CoOp's DTD folder: <root>/dtd/split_zhou_DescribableTextures.json + images/."""
    shutil.copytree(os.path.join(demo_dir, "images"), root / "dtd" / "images")
    shutil.copy(os.path.join(demo_dir, "split.json"), root / "dtd" / "split_zhou_DescribableTextures.json")
    return str(root)


def test_datasets_command_lists_found_and_missing(demo_dir, tmp_path):
    from dept.datasets import dataset_names

    root = fake_coop_root(demo_dir, tmp_path / "data")
    result = CliRunner().invoke(main, ["datasets", "--data-root", root], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = {ln.split()[0]: ln.split() for ln in result.output.splitlines()[:-1]}
    assert list(lines) == dataset_names()
    assert lines["DTD"][1:] == ["found", os.path.join(root, "dtd", "split_zhou_DescribableTextures.json")]
    assert lines["ImageNet"][1:] == ["missing", os.path.join(root, "imagenet", "classnames.txt")]
    assert sum(v[1] == "found" for v in lines.values()) == 1
    assert result.output.splitlines()[-1].startswith(f"1 of {len(dataset_names())} datasets found")


@pytest.mark.slow
def test_dataset_all_featurizes_the_downloaded_ones(ray_cluster, demo_dir, tmp_path, tiny_clip_checkpoint, caplog):
    """'all' takes every supported dataset found under the root and names each one it skips; none found: one line."""
    root = fake_coop_root(demo_dir, tmp_path / "data")
    out = str(tmp_path / "out")
    args = ["--data-root", root, "--dataset", "all", "--out", out, "--model", "dept-tiny-vit", "--pretrained",
            str(tiny_clip_checkpoint), "--views", "1", "--shots", "1", "--seeds", "1", "--no-progress"]
    with caplog.at_level(logging.WARNING, logger="pipelines.featurize"):
        result = run_cli(*args)
    assert result.exit_code == 0, result.output
    url = model_store_url(out, "dept-tiny-vit", "sha256:" + file_sha256(tiny_clip_checkpoint))
    assert read_manifest(url, "DTD").complete is True
    assert sorted(os.listdir(url)) == ["DTD"]
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skipped) == 14 and any(os.path.join(root, "imagenet", "classnames.txt") in m for m in skipped)

    (tmp_path / "empty").mkdir()
    args[args.index("--data-root") + 1] = str(tmp_path / "empty")
    msg = one_line_error(run_cli(*args))
    assert "none of the 15 supported datasets" in msg and str(tmp_path / "empty") in msg


def test_demo_data_command(tmp_path):
    result = CliRunner().invoke(main, ["demo-data", "--out", str(tmp_path / "d"), "--num-classes", "3",
                                       "--train-per-class", "2", "--val-per-class", "1", "--test-per-class", "1",
                                       "--image-size", "16"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    splits = load_custom_dataset(str(tmp_path / "d"))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 3, 3)


@pytest.mark.slow
def test_unreadable_image_fails_or_is_skipped(ray_cluster, demo_dir, tmp_path, tiny_clip_checkpoint):
    """On a dataset read from CoOp's layout (--data-root/--dataset) with one corrupt image."""
    root = fake_coop_root(demo_dir, tmp_path / "data")
    victim = json.load(open(os.path.join(demo_dir, "split.json")))["test"][4][0]
    victim_path = os.path.join(root, "dtd", "images", victim)
    with open(victim_path, "wb") as f:
        f.write(b"this is not a PNG file")
    out = str(tmp_path / "out")
    args = ["--data-root", root, "--dataset", "DTD", "--out", out, "--model", "dept-tiny-vit", "--pretrained",
            str(tiny_clip_checkpoint), "--views", "1", "--shots", "1", "--seeds", "1", "--images-per-shard", "4",
            "--no-progress"]
    msg = one_line_error(run_cli(*args))
    assert victim_path in msg and "--on-error skip" in msg
    url = model_store_url(out, "dept-tiny-vit", "sha256:" + file_sha256(tiny_clip_checkpoint))
    with pytest.raises(StoreError, match="incomplete"):
        read_features(url, "DTD", split="test")

    result = run_cli(*args, "--on-error", "skip")
    assert result.exit_code == 0, result.output
    assert "1 unreadable images skipped" in result.output
    manifest = read_manifest(url, "DTD")
    assert [(s["image_id"], s["split"]) for s in manifest.skipped] == [(victim, "test")]
    assert manifest.rows["test"] == 11
    test = read_features(url, "DTD", split="test")
    assert victim not in test.image_ids and len(test.image_ids) == 11


# ---------------------------------------------------------------------------------------------------------------
# ViT-B-32 (real architecture, random weights): exact features, and resume after SIGKILL


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    return str(write_demo_dataset(tmp_path_factory.mktemp("data") / "small", num_classes=4, train_per_class=2,
                                  val_per_class=1, test_per_class=6, image_size=32))


def check_exact(model_url: str, dataset_dir: str, checkpoint, n: int = 4) -> None:
    clip = load_clip("ViT-B-32", str(checkpoint))
    feats = read_features(model_url, os.path.basename(dataset_dir), split="test")
    for image_id, stored in list(zip(feats.image_ids, feats.features))[:n]:
        with torch.no_grad():
            want = clip.model.encode_image(clip.preprocess_test(Image.open(os.path.join(dataset_dir, "images", image_id)))[None])[0]
        assert rel_err(stored, want) <= 1e-5, image_id


@pytest.mark.slow
def test_exact_features_vit_b32(ray_cluster, small_demo, vit_b32_checkpoint, tmp_path):
    out = str(tmp_path / "out")
    result = run_cli("--dataset-dir", small_demo, "--out", out, "--model", "ViT-B-32", "--pretrained",
                     str(vit_b32_checkpoint), "--views", "1", "--shots", "1", "--seeds", "1", "--batch-size", "8",
                     "--no-progress")
    assert result.exit_code == 0, result.output
    url = model_store_url(out, "ViT-B-32", "sha256:" + file_sha256(vit_b32_checkpoint))
    assert read_manifest(url, "small").feature_dim == 512
    check_exact(url, small_demo, vit_b32_checkpoint, n=8)


@pytest.mark.slow
def test_resume_after_sigkill(ray_cluster, small_demo, vit_b32_checkpoint, tmp_path):
    out = str(tmp_path / "out")
    args = ["featurize", "--dataset-dir", small_demo, "--out", out, "--model", "ViT-B-32", "--pretrained",
            str(vit_b32_checkpoint), "--views", "1", "--shots", "1", "--seeds", "1", "--images-per-shard", "2",
            "--batch-size", "2", "--no-progress"]
    url = model_store_url(out, "ViT-B-32", "sha256:" + file_sha256(vit_b32_checkpoint))
    folder = os.path.join(url, "small")
    total_shards = 12 + 2 + 2  # test 24 images, val 4, train 4 (1 shot x 4 classes), 2 images per shard
    log = open(tmp_path / "run.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", "from pipelines.cli import main; main()", *args,
                             "--ray-address", ray_cluster.address], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while not glob.glob(os.path.join(folder, "part-*.parquet")):
            assert proc.poll() is None, (tmp_path / "run.log").read_text()
            assert time.time() < deadline, "no shard written within 300 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = len(glob.glob(os.path.join(folder, "part-*.parquet")))
    assert 0 < done < total_shards, f"killed run left {done} of {total_shards} shards: not mid-way"
    assert json.load(open(os.path.join(folder, MANIFEST)))["complete"] is False
    with pytest.raises(StoreError, match="incomplete"):
        read_features(url, "small", split="test")

    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    done_before = int(result.output.split(" shards already done")[0].rsplit(", ", 1)[1])
    assert done_before == done  # shards the killed run had finished were not redone
    table = store_rows(folder)
    keys = Counter(zip(table.column("image_id").to_pylist(), table.column("split").to_pylist(),
                       table.column("view").to_pylist()))
    assert set(keys.values()) == {1} and len(keys) == 24 + 4 + 4 * 2
    assert len(glob.glob(os.path.join(folder, "part-*.parquet"))) == total_shards
    manifest = read_manifest(url, "small")
    assert manifest.rows == {"train": 8, "val": 4, "test": 24}
    check_exact(url, small_demo, vit_b32_checkpoint, n=4)


@pytest.mark.slow
def test_featurized_folder_is_plain_parquet_and_the_root_finds_it(tiny_store, tiny_args, tiny_clip_checkpoint):
    """What featurize wrote reads with pandas and pyarrow as a folder, and --features <out> --model --pretrained
    leads trials to the sha256-named model folder."""
    import pandas as pd
    import pyarrow.dataset as pads

    from pipelines.trial.context import make_context

    rows = read_manifest(tiny_store["model_url"], "demo").rows
    df = pd.read_parquet(tiny_store["folder"])
    assert df.groupby("split").size().to_dict() == rows
    assert pads.dataset(tiny_store["folder"]).count_rows() == sum(rows.values())
    out = tiny_args[tiny_args.index("--out") + 1]
    ctx = make_context(out, "demo", shots=[None], seeds=[1], model="dept-tiny-vit", pretrained=str(tiny_clip_checkpoint))
    assert ctx.features_url == tiny_store["model_url"] and ctx.fingerprint == read_manifest(ctx.features_url, "demo").fingerprint


def test_old_layout_folder_is_refused(demo_dir, tmp_path, tiny_clip_checkpoint):
    """A dataset folder of format 1 (manifest.json) is not overwritten or mixed: one line, re-run into a new --out."""
    out = str(tmp_path / "features")
    folder = os.path.join(model_store_url(out, "dept-tiny-vit", "sha256:" + file_sha256(tiny_clip_checkpoint)), "demo")
    os.makedirs(folder)
    open(os.path.join(folder, "manifest.json"), "w").write('{"format": 1, "complete": true}\n')
    result = run_cli("--dataset-dir", demo_dir, "--out", out, "--model", "dept-tiny-vit",
                     "--pretrained", str(tiny_clip_checkpoint), "--no-progress")
    assert "old format 1 layout" in one_line_error(result) and "new --out" in one_line_error(result)
    assert sorted(os.listdir(folder)) == ["manifest.json"]
