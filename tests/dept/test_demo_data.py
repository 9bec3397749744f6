"""The generated demo dataset: real-word classes, distinct images, custom layout, deterministic, idempotent."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from dept.datasets import DatasetError, base_new_split, draw_few_shot, load_custom_dataset, write_demo_dataset
from dept.datasets.demo import COLOURS, SHAPES


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    return write_demo_dataset(tmp_path_factory.mktemp("demo") / "shapes")


def test_defaults_load_as_a_custom_dataset(demo_dir):
    s = load_custom_dataset(demo_dir)
    assert s.name == "shapes"
    assert s.num_classes == 10
    assert (len(s.train), len(s.val), len(s.test)) == (10 * 20, 10 * 4, 10 * 10)
    for label, name in enumerate(s.classnames):
        colour, shape = name.split(" ")
        assert colour in dict(COLOURS) and shape in SHAPES
        assert sum(it.label == label for it in s.test) == 10
    assert len(set(s.classnames)) == 10
    # the first ten classes differ in both colour and shape
    assert len({n.split()[0] for n in s.classnames}) == 10 and len({n.split()[1] for n in s.classnames}) == 10
    with Image.open(s.image_path(s.train[0])) as im:
        assert im.size == (64, 64) and im.mode == "RGB"


def test_images_are_distinct(demo_dir):
    images = [p for p in (demo_dir / "images").rglob("*.png")]
    assert len(images) == 340
    assert len({hashlib.sha256(p.read_bytes()).hexdigest() for p in images}) == 340
    # not just noise: the class colour dominates somewhere in the image
    s = load_custom_dataset(demo_dir)
    red = next(it for it in s.train if it.classname.startswith("red"))
    with Image.open(s.image_path(red)) as im:
        data = im.convert("RGB").tobytes()
    pixels = zip(data[0::3], data[1::3], data[2::3])
    assert sum(r > 170 and g < 90 and b < 90 for r, g, b in pixels) > 30


def test_deterministic_for_a_seed(tmp_path, demo_dir):
    again = write_demo_dataset(tmp_path / "shapes")
    assert file_hashes(again) == file_hashes(demo_dir)
    other = write_demo_dataset(tmp_path / "other_seed", seed=1)
    a, b = file_hashes(demo_dir), file_hashes(other)
    assert a.keys() == b.keys()
    assert sum(a[k] != b[k] for k in a if k.endswith(".png")) == 340


def test_writing_twice_is_idempotent(tmp_path):
    out = tmp_path / "d"
    write_demo_dataset(out, num_classes=12, train_per_class=3, val_per_class=1, test_per_class=2, image_size=32)
    before = file_hashes(out)
    write_demo_dataset(out, num_classes=12, train_per_class=3, val_per_class=1, test_per_class=2, image_size=32)
    assert file_hashes(out) == before
    s = load_custom_dataset(out)
    assert s.num_classes == 12 and len(s.train) == 36


def test_refuses_a_non_empty_foreign_folder(tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "thesis.txt").write_text("keep me")
    with pytest.raises(DatasetError) as e:
        write_demo_dataset(out)
    assert "\n" not in str(e.value) and str(out) in str(e.value)
    assert [p.name for p in out.iterdir()] == ["thesis.txt"]  # nothing written


def test_refuses_a_demo_folder_with_other_settings(tmp_path):
    out = write_demo_dataset(tmp_path / "d", num_classes=10, train_per_class=1, val_per_class=0, test_per_class=1)
    before = file_hashes(out)
    with pytest.raises(DatasetError) as e:
        write_demo_dataset(out, num_classes=10, train_per_class=1, val_per_class=0, test_per_class=1, seed=5)
    assert str(out) in str(e.value) and "other settings" in str(e.value)
    assert file_hashes(out) == before


def test_completes_an_interrupted_write(tmp_path, demo_dir):
    out = tmp_path / "shapes"
    out.mkdir()
    # what a run killed after its first image leaves: the marker and a partial images folder, no split.json
    (out / "demo_dataset.json").write_bytes((demo_dir / "demo_dataset.json").read_bytes())
    (out / "images" / "red_circle").mkdir(parents=True)
    (out / "images" / "red_circle" / "0.png").write_bytes(b"truncated")
    write_demo_dataset(out)
    assert file_hashes(out) == file_hashes(demo_dir)


def test_bad_arguments(tmp_path):
    with pytest.raises(DatasetError, match="num_classes"):
        write_demo_dataset(tmp_path / "a", num_classes=10_000)
    with pytest.raises(DatasetError, match="image counts"):
        write_demo_dataset(tmp_path / "b", train_per_class=-1)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_split_file_format_and_few_shot(demo_dir):
    split = json.loads((demo_dir / "split.json").read_text())
    assert set(split) == {"train", "val", "test"}
    impath, label, classname = split["train"][0]
    assert (demo_dir / "images" / impath).is_file() and label == 0 and classname == "red circle"
    s = load_custom_dataset(demo_dir)
    train, val = draw_few_shot(s, 16, 1)
    assert len(train) == 160 and len(val) == 40
    base, new = base_new_split(s.num_classes)
    assert len(base) == 5 and len(new) == 5
