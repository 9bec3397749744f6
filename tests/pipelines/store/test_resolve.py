"""``--features``: the store root plus ``--model`` / ``--pretrained`` (the hashed weights folder is found), or a
model folder as featurize printed it; errors name the models and datasets present, in one line."""
from __future__ import annotations

import hashlib
import os
import shutil

import pytest
from click.testing import CliRunner

from pipelines.cli import main
from pipelines.store import StoreError, model_folders, model_store_url, resolve_features
from tests.pipelines.store.toy_store import make_store


@pytest.fixture
def root(tmp_path):
    """Three model folders: m with a checkpoint file (sha256 folder), m with the tag openai, n with random init."""
    ckpt = tmp_path / "ckpt" / "w.safetensors"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"not really weights, but a file with a sha256")
    sha = "sha256:" + hashlib.sha256(ckpt.read_bytes()).hexdigest()
    root = tmp_path / "features"
    stores = {
        "ckpt": ({"model": "m", "weights_id": sha}, str(ckpt), ("toy", "other")),
        "tag": ({"model": "m", "weights_id": "openai"}, "openai", ("toy",)),
        "none": ({"model": "n", "weights_id": "random-init:0"}, "none", ("toy2",)),
    }
    urls = {}
    for key, (identity, pretrained, datasets) in stores.items():
        urls[key] = model_store_url(str(root), identity["model"], identity["weights_id"])
        for d in datasets:
            make_store(urls[key], dataset=d, identity=identity, pretrained=pretrained)
    return {"root": str(root), "ckpt": str(ckpt), "urls": urls, "tmp": tmp_path}


def one_line_error(call, match: str) -> str:
    with pytest.raises(StoreError, match=match) as e:
        call()
    assert "\n" not in str(e.value)
    return str(e.value)


def test_store_root_finds_the_model_folder(root, monkeypatch):
    r, urls = root["root"], root["urls"]
    assert [f.url for f in model_folders(r)] == sorted(urls.values())
    assert resolve_features(r, dataset="other") == urls["ckpt"]  # only one model holds it
    assert resolve_features(r, dataset="toy2", model="n") == urls["none"]
    assert resolve_features(r, dataset="toy", model="m", pretrained="openai") == urls["tag"]
    assert resolve_features(r, dataset="toy2", model="n", pretrained="none") == urls["none"]
    monkeypatch.chdir(root["tmp"])  # relative paths, as a user types them
    assert resolve_features("features", dataset="toy", model="m", pretrained="ckpt/w.safetensors") == urls["ckpt"]
    assert resolve_features(os.path.relpath(urls["tag"])) == urls["tag"]  # a model folder comes back absolute


def test_a_checkpoint_missing_here_matches_the_recorded_path(root):
    moved = root["ckpt"] + ".moved"
    shutil.move(root["ckpt"], moved)
    assert resolve_features(root["root"], dataset="toy", model="m", pretrained=root["ckpt"]) == root["urls"]["ckpt"]


def test_errors_list_models_and_datasets(root):
    r = root["root"]
    msg = one_line_error(lambda: resolve_features(r, dataset="toy"), "several model folders under .* hold dataset 'toy'")
    assert msg.endswith(f"m (openai): toy; m ({root['ckpt']}): other, toy; choose one with --model and --pretrained")
    msg = one_line_error(lambda: resolve_features(r, dataset="toy", model="ViT-B-16", pretrained="openai"),
                         "no features of --model ViT-B-16 --pretrained openai with dataset 'toy'")
    assert msg.endswith(f"present: m (openai): toy; m ({root['ckpt']}): other, toy; n (none): toy2")
    one_line_error(lambda: resolve_features(r, dataset="toy2", model="m"), "no features of --model m with dataset")
    one_line_error(lambda: resolve_features(root["urls"]["tag"], model="n"),
                   r"holds features of m \(openai\), not of --model n; give the store root")
    one_line_error(lambda: resolve_features(root["urls"]["tag"] + "/toy"), "is one dataset's folder")
    one_line_error(lambda: resolve_features(str(root["tmp"] / "nowhere")), "no such folder")
    (root["tmp"] / "empty").mkdir()
    one_line_error(lambda: resolve_features(str(root["tmp"] / "empty")), "no featurized datasets there")


def test_make_context_takes_the_root_with_model_and_pretrained(root):
    from pipelines.trial.context import make_context

    ctx = make_context(root["root"], "toy", shots=[None], seeds=[1], model="m", pretrained=root["ckpt"])
    assert ctx.features_url == root["urls"]["ckpt"] and ctx.pretrained == root["ckpt"]


def test_cli_user_errors_name_what_is_present(root, tmp_path):
    runner = CliRunner()
    train = runner.invoke(main, ["train", "--features", root["root"], "--dataset", "nope"])
    assert train.exit_code == 2 and len(train.output.strip().splitlines()) == 1
    assert "no features of any model with dataset 'nope'" in train.output and "n (none): toy2" in train.output
    tune = runner.invoke(main, ["tune", "--features", root["root"], "--dataset", "all", "--model", "m",
                                "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--storage", str(tmp_path)])
    assert tune.exit_code == 2 and len(tune.output.strip().splitlines()) == 1
    assert "several model folders" in tune.output and "match (--model m): m (openai): toy" in tune.output
