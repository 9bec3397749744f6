"""The miniature's transfer suite: mini-source and its domain-generalization / cross-dataset targets."""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dept.miniature import (
    DownstreamConfig,
    MiniatureError,
    TransferSuiteConfig,
    write_miniature_dataset,
    write_transfer_suite,
)
from dept.miniature.render import render, sample_rendition_scenes, sample_sketch_scenes, shape_mask
from dept.miniature.transfer import SOURCE, SUITE, SUITE_MARKER
from pipelines.cli import main

SMALL = TransferSuiteConfig(train_per_class=16, val_per_class=4, test_per_class=2, target_test_per_class=2)
NAMES = ["mini-source", "mini-v2", "mini-sketch", "mini-r", "mini-a", "mini-other-colours-a", "mini-other-colours-b"]


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _split(folder: Path) -> dict:
    return json.loads((folder / "split.json").read_text())


def _classnames(split: dict) -> list[str]:
    names = {label: name for part in split.values() for _, label, name in part}
    return [names[i] for i in range(len(names))]


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("suite") / "transfer"
    write_transfer_suite(out, SMALL)
    return out


def test_suite_is_deterministic_completes_and_refuses_foreign_folders(suite, tmp_path):
    digest = _tree_digest(suite)
    again = write_transfer_suite(tmp_path / "again", SMALL)
    assert [d.name for d in again] == NAMES and _tree_digest(tmp_path / "again") == digest
    assert sorted(p.name for p in suite.iterdir()) == sorted(NAMES + [SUITE_MARKER])
    # a run killed half-way is completed: same settings, same bytes, nothing else touched
    (suite / "mini-a" / "split.json").unlink()
    write_transfer_suite(suite, SMALL)
    assert _tree_digest(suite) == digest
    with pytest.raises(MiniatureError, match="other settings"):
        write_transfer_suite(suite, replace(SMALL, target_test_per_class=3))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(MiniatureError, match=f"not empty and holds no {SUITE_MARKER}"):
        write_transfer_suite(foreign, SMALL)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    single = write_miniature_dataset(tmp_path / "single", DownstreamConfig(split="shared", train_per_class=16, val_per_class=4, test_per_class=2))
    before = _tree_digest(single)
    with pytest.raises(MiniatureError, match="not empty"):  # a single dataset is not a suite
        write_transfer_suite(single, SMALL)
    assert _tree_digest(single) == before
    # mini-source is the shared split's base classes, label for label and (same seed) image for image
    src = _split(suite / SOURCE)
    shared = _split(single)
    for part in ("train", "val", "test"):
        base = [e for e in shared[part] if e[1] < 24]
        assert src[part] == base, part
        assert all(digest[f"{SOURCE}/images/{e[0]}"] == before[f"images/{e[0]}"] for e in base)
    # mini-v2 is a fresh draw of the same domain: its test images are not the source's
    v2 = _split(suite / "mini-v2")
    assert [e[0] for e in v2["test"]] == [e[0] for e in src["test"]]
    assert all(digest[f"mini-v2/images/{e[0]}"] != digest[f"{SOURCE}/images/{e[0]}"] for e in v2["test"])


def test_targets_declare_their_protocol_and_map_to_source_classes(suite):
    from dept.datasets import load_custom_dataset

    source = _classnames(_split(suite / SOURCE))
    assert not (suite / SOURCE / "transfer.json").exists() and len(source) == 24
    assert {n.split()[0] for n in source} == {"red", "green", "blue"}
    subsets = {}
    for d in SUITE[1:]:
        folder = suite / d.name
        split = _split(folder)
        assert split["train"] == [] and split["val"] == [] and len(split["test"]) == 2 * len(d.classes)
        names = _classnames(split)
        assert load_custom_dataset(folder).classnames == names  # the dataset reader accepts test-only targets
        declared = json.loads((folder / "transfer.json").read_text())
        if d.name.startswith("mini-other-colours"):
            assert declared == {"protocol": "cross-dataset", "source": "mini-source"}
            assert len(names) == 12 and set(names).isdisjoint(source)
        elif d.name in ("mini-v2", "mini-sketch"):
            assert declared == {"protocol": "domain-generalization", "source": "mini-source"}
            assert names == source
        else:
            assert set(declared) == {"protocol", "source", "label_to_source"}
            assert declared["protocol"] == "domain-generalization" and declared["source"] == "mini-source"
            mapping = declared["label_to_source"]
            assert len(mapping) == 12 and mapping == sorted(set(mapping))  # labels 0..11 in source order
            assert names == [source[i] for i in mapping]
            subsets[d.name] = set(mapping)
    assert subsets["mini-r"] != subsets["mini-a"] and subsets["mini-r"] & subsets["mini-a"]
    other = [set(_classnames(_split(suite / n))) for n in ("mini-other-colours-a", "mini-other-colours-b")]
    assert other[0].isdisjoint(other[1])


def _inside(scenes) -> np.ndarray:
    """``[n, 32, 32]``: the shape masks sampled at pixel centres."""
    c = (np.arange(32) + 0.5)[None, :]
    inside = np.zeros((len(scenes), 32, 32), dtype=bool)
    for i in range(len(scenes)):
        dx, dy = (c - scenes.cx[i]) / scenes.radius[i], (c.T - scenes.cy[i]) / scenes.radius[i]
        ca, sa = np.cos(scenes.angle[i]), np.sin(scenes.angle[i])
        inside[i] = shape_mask(int(scenes.shape[i]), dx * ca + dy * sa, -dx * sa + dy * ca)
    return inside


def test_sketches_draw_only_the_outline_and_renditions_a_patterned_fill():
    colour, shape = np.full(64, 4), np.arange(64) % 8  # blue, every shape
    scenes = sample_sketch_scenes(np.random.default_rng(1), colour, shape)
    outline, filled = render(scenes), render(replace(scenes, outline=None))
    inside = _inside(scenes)

    def object_pixels(img: np.ndarray) -> np.ndarray:
        near = np.abs(img.astype(np.float32) - scenes.rgb[:, None, None, :]).max(axis=-1) < 60
        return (near & inside).sum(axis=(1, 2))

    o, f = object_pixels(outline), object_pixels(filled)
    assert (o > 0).all() and o.sum() < 0.5 * f.sum(), (o.sum(), f.sum())
    assert (outline[~inside] > 150).mean() > 0.9  # light paper elsewhere
    r = sample_rendition_scenes(np.random.default_rng(2), colour, shape)
    patterned, solid = render(r), render(replace(r, fill_kind=None))
    differs = np.abs(patterned.astype(int) - solid.astype(int)).max(axis=-1) > 30
    background = render(replace(r, alpha=np.zeros(len(r)), fill_kind=None))
    untouched = (solid == background).all(axis=-1)  # pixels the shape does not cover at all
    assert differs.any(axis=(1, 2)).mean() > 0.9 and (patterned[untouched] == solid[untouched]).all()


def test_cli_writes_the_suite_and_rejects_single_only_options(tmp_path):
    runner = CliRunner()
    args = ["miniature", "data", "--suite", "transfer", "--out", str(tmp_path / "s"), "--train-per-class", "16",
            "--val-per-class", "4", "--test-per-class", "1", "--target-test-per-class", "1"]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == NAMES
    assert "mini-source: 24 classes, 504 images, source" in lines[0]
    assert "mini-r: 12 classes, 12 images, domain-generalization" in lines[3]
    assert "mini-other-colours-b: 12 classes, 12 images, cross-dataset" in lines[6]
    res = runner.invoke(main, args[:-4] + ["--split", "shared"])
    assert res.exit_code == 2 and res.output.strip().count("\n") == 0 and "--split" in res.output
    res = runner.invoke(main, ["miniature", "data", "--out", str(tmp_path / "d"), "--target-test-per-class", "3"])
    assert res.exit_code == 2 and "--suite transfer only" in res.output and not (tmp_path / "d").exists()
