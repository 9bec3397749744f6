"""Dataset loaders on tiny fake CoOp layouts, CoOp-compatible few-shot draws, class splits, and error messages."""
from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path

import pytest
from PIL import Image

from dept.datasets import (
    DatasetError,
    DatasetSplits,
    Item,
    base_new_split,
    dataset_names,
    draw_few_shot,
    get_spec,
    kgcoop_template,
    load_custom_dataset,
    load_dataset,
    locate,
    subset,
)

PAPER_ORDER = [
    "ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "Flowers102", "Food101", "FGVCAircraft", "SUN397",
    "DTD", "EuroSAT", "UCF101",
]
VARIANTS = ["ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"]
WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475"]
WNID_NAMES = ["tench", "goldfish", "great_white_shark", "tiger shark", "hammerhead"]


# ---------------------------------------------------------------------------------------------------------------
# builders of fake layouts


def write_image(path: Path, colour=(10, 20, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    Image.new("RGB", (4, 4), colour).save(path, format=fmt)


def write_split_json(dataset_dir: Path, split_name: str, image_subdir: str, split: dict, *, images=True) -> None:
    dataset_dir.mkdir(parents=True, exist_ok=True)
    (dataset_dir / split_name).write_text(json.dumps(split))
    image_root = dataset_dir / image_subdir if image_subdir else dataset_dir
    image_root.mkdir(parents=True, exist_ok=True)
    if images:
        for rows in split.values():
            for impath, _, _ in rows:
                write_image(image_root / impath)


def pets_split() -> dict:
    def rows(prefix, n):
        return [[f"{cls}_{prefix}{i}.jpg", lab, cls] for lab, cls in enumerate(["abyssinian", "american_bulldog",
                                                                                  "basset_hound"])
                for i in range(n)]
    return {"train": rows("tr", 5), "val": rows("va", 2), "test": rows("te", 3)}


def make_pets(root: Path) -> Path:
    write_split_json(root / "oxford_pets", "split_zhou_OxfordPets.json", "images", pets_split())
    return root


def write_imagenet_classnames(path: Path, wnids=WNIDS, names=WNID_NAMES) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{w} {n}\n" for w, n in zip(wnids, names)))


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------------------------------------------------------
# registry


def test_dataset_names_paper_order_then_variants():
    assert dataset_names() == PAPER_ORDER + VARIANTS
    assert dataset_names("base-to-new") == PAPER_ORDER
    assert dataset_names("domain-generalization") == VARIANTS


def test_kgcoop_templates_from_the_method():
    assert kgcoop_template("OxfordPets") == "a photo of a {}, a type of pet."
    assert kgcoop_template("Flowers102") == "a photo of a {}, a type of flower."
    assert kgcoop_template("FGVCAircraft") == "a photo of a {}, a type of aircraft."
    assert kgcoop_template("DTD") == "a photo of a {}, a type of texture."
    assert kgcoop_template("EuroSAT") == "a centered satellite photo of {}."
    assert kgcoop_template("Food101") == "a photo of {}, a type of food."
    assert kgcoop_template("UCF101") == "a photo of a person doing {}."
    for name in ("ImageNet", "Caltech101", "StanfordCars", "SUN397", "ImageNetA", "my_custom_set"):
        assert kgcoop_template(name) == "a photo of a {}."


def test_names_match_case_insensitively_but_exactly():
    assert get_spec("oxfordpets").name == "OxfordPets"
    with pytest.raises(DatasetError):
        get_spec("Pets")


# ---------------------------------------------------------------------------------------------------------------
# loaders


def test_split_json_dataset_loads_with_underscores_replaced(tmp_path):
    make_pets(tmp_path)
    s = load_dataset("OxfordPets", tmp_path)
    assert s.name == "OxfordPets"
    assert s.classnames == ["abyssinian", "american bulldog", "basset hound"]
    assert (len(s.train), len(s.val), len(s.test)) == (15, 6, 9)
    assert s.image_root == str(tmp_path / "oxford_pets" / "images")
    assert s.split_file == str(tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json")
    assert s.split_files == [s.split_file]
    assert s.label_to_imagenet is None
    first = s.train[0]
    assert first == Item("abyssinian_tr0.jpg", 0, "abyssinian")
    assert s.train[5].classname == "american bulldog" and s.train[5].label == 1
    assert os.path.isfile(s.image_path(first))


def test_stanford_cars_images_in_the_dataset_folder_itself(tmp_path):
    split = {"train": [["cars_train/00001.jpg", 0, "AM General Hummer SUV 2000"]],
             "val": [], "test": [["cars_test/00001.jpg", 0, "AM General Hummer SUV 2000"]]}
    write_split_json(tmp_path / "stanford_cars", "split_zhou_StanfordCars.json", "", split)
    s = load_dataset("StanfordCars", tmp_path)
    assert s.image_root == str(tmp_path / "stanford_cars")
    assert os.path.isfile(s.image_path(s.test[0]))


def test_eurosat_class_renames(tmp_path):
    raw = ["AnnualCrop", "Forest", "HerbaceousVegetation", "SeaLake"]
    split = {"train": [[f"{c}/{c}_1.jpg", i, c] for i, c in enumerate(raw)],
             "val": [],
             # CoOp's own file already holds the renamed names: they pass through unchanged
             "test": [["AnnualCrop/AnnualCrop_2.jpg", 0, "Annual Crop Land"]]}
    write_split_json(tmp_path / "eurosat", "split_zhou_EuroSAT.json", "2750", split)
    s = load_dataset("EuroSAT", tmp_path)
    assert s.classnames == ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Sea or Lake"]
    assert s.test[0].classname == "Annual Crop Land"


def test_caltech_drops_background_and_faces_easy_and_relabels(tmp_path):
    split = {
        "train": [["BACKGROUND_Google/a.jpg", 0, "BACKGROUND_Google"], ["accordion/a.jpg", 1, "accordion"],
                  ["Faces_easy/a.jpg", 2, "Faces_easy"], ["airplanes/a.jpg", 3, "airplanes"],
                  ["yin_yang/a.jpg", 4, "yin_yang"]],
        "val": [["accordion/b.jpg", 1, "accordion"]],
        "test": [["yin_yang/b.jpg", 4, "yin_yang"]],
    }
    write_split_json(tmp_path / "caltech-101", "split_zhou_Caltech101.json", "101_ObjectCategories", split)
    s = load_dataset("Caltech101", tmp_path)
    assert s.classnames == ["accordion", "airplane", "yin yang"]
    assert [(it.impath, it.label) for it in s.train] == [("accordion/a.jpg", 0), ("airplanes/a.jpg", 1),
                                                          ("yin_yang/a.jpg", 2)]
    assert s.test == [Item("yin_yang/b.jpg", 2, "yin yang")]


def write_fgvc(root: Path) -> Path:
    d = root / "fgvc_aircraft"
    d.mkdir(parents=True)
    variants = ["707-320", "A300B4", "Cessna 172", "F/A-18"]
    (d / "variants.txt").write_text("\n".join(variants) + "\n")
    lines = {"train": [("1000001", "A300B4"), ("1000002", "707-320"), ("1000003", "Cessna 172"),
                       ("1000004", "F/A-18")],
             "val": [("2000001", "Cessna 172")],
             "test": [("3000001", "F/A-18"), ("3000002", "707-320")]}
    for split, rows in lines.items():
        (d / f"images_variant_{split}.txt").write_text("".join(f"{i} {v}\n" for i, v in rows))
        for image_id, _ in rows:
            write_image(d / "images" / f"{image_id}.jpg")
    return root


def test_fgvc_aircraft_text_files(tmp_path):
    write_fgvc(tmp_path)
    s = load_dataset("FGVCAircraft", tmp_path)
    assert s.classnames == ["707-320", "A300B4", "Cessna 172", "F/A-18"]
    assert s.train[0] == Item("1000001.jpg", 1, "A300B4")
    assert s.train[2] == Item("1000003.jpg", 2, "Cessna 172")
    assert s.val == [Item("2000001.jpg", 2, "Cessna 172")]
    assert [it.label for it in s.test] == [3, 0]
    d = tmp_path / "fgvc_aircraft"
    assert s.split_files == [str(d / "variants.txt")] + [str(d / f"images_variant_{p}.txt")
                                                          for p in ("train", "val", "test")]


def make_imagenet(root: Path, train_per_class=13, val_per_class=2) -> Path:
    d = root / "imagenet"
    write_imagenet_classnames(d / "classnames.txt")
    for w in WNIDS:
        for i in range(train_per_class):
            write_image(d / "images" / "train" / w / f"{w}_{i:03d}.JPEG")
        for i in range(val_per_class):
            write_image(d / "images" / "val" / w / f"ILSVRC2012_val_{w}_{i}.JPEG")
    return root


def test_imagenet_classnames_and_folders(tmp_path):
    make_imagenet(tmp_path)
    s = load_dataset("ImageNet", tmp_path)
    assert s.classnames == ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead"]
    hold = get_spec("ImageNet").val_holdout_per_class
    assert hold > 0
    # val images are held out of images/train: the last `hold` of each class in sorted order, never trained on
    assert len(s.train) == 5 * (13 - hold) and len(s.val) == 5 * hold
    assert not {it.impath for it in s.train} & {it.impath for it in s.val}
    assert all(it.impath.startswith("train/") for it in s.train + s.val)
    assert s.val[0] == Item(f"train/{WNIDS[0]}/{WNIDS[0]}_{13 - hold:03d}.JPEG", 0, "tench")
    # test = images/val
    assert len(s.test) == 10 and all(it.impath.startswith("val/") for it in s.test)
    assert [it.label for it in s.test] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert s.split_file == str(tmp_path / "imagenet" / "classnames.txt")


def test_imagenet_without_holdout_is_coop_train(tmp_path):
    make_imagenet(tmp_path)
    spec = dataclasses.replace(get_spec("ImageNet"), val_holdout_per_class=0)
    s = spec.reader(spec, spec.dataset_dir(tmp_path))
    assert len(s.train) == 5 * 13 and s.val == []
    assert [it.impath for it in s.train[:13]] == [f"train/{WNIDS[0]}/{WNIDS[0]}_{i:03d}.JPEG" for i in range(13)]


def test_imagenet_a_subset_of_classes(tmp_path):
    d = tmp_path / "imagenet-adversarial"
    write_imagenet_classnames(d / "classnames.txt")
    for w in (WNIDS[3], WNIDS[1]):
        for i in range(2):
            write_image(d / "imagenet-a" / w / f"{i}.jpg")
    (d / "imagenet-a" / "README.txt").write_text("not a class\n")
    s = load_dataset("ImageNetA", tmp_path)
    assert s.classnames == ["goldfish", "tiger shark"]
    assert s.label_to_imagenet == [1, 3]
    assert [(it.impath, it.label, it.classname) for it in s.test] == [
        (f"{WNIDS[1]}/0.jpg", 0, "goldfish"), (f"{WNIDS[1]}/1.jpg", 0, "goldfish"),
        (f"{WNIDS[3]}/0.jpg", 1, "tiger shark"), (f"{WNIDS[3]}/1.jpg", 1, "tiger shark")]
    assert s.train == [] and s.val == []


def test_imagenet_r_subset_of_classes(tmp_path):
    d = tmp_path / "imagenet-rendition"
    write_imagenet_classnames(d / "classnames.txt")
    write_image(d / "imagenet-r" / WNIDS[4] / "art_0.jpg")
    s = load_dataset("ImageNetR", tmp_path)
    assert s.label_to_imagenet == [4] and s.classnames == ["hammerhead"]


def test_imagenet_v2_index_folders_keep_imagenet_labels(tmp_path):
    d = tmp_path / "imagenetv2"
    write_imagenet_classnames(d / "classnames.txt")
    for label in (0, 2):
        write_image(d / "imagenetv2-matched-frequency-format-val" / str(label) / "a.jpeg")
    s = load_dataset("ImageNetV2", tmp_path)
    assert s.label_to_imagenet is None
    assert len(s.classnames) == 5
    assert [(it.impath, it.label, it.classname) for it in s.test] == [("0/a.jpeg", 0, "tench"),
                                                                      ("2/a.jpeg", 2, "great white shark")]


def test_imagenet_sketch_wnid_folders(tmp_path):
    d = tmp_path / "imagenet-sketch"
    write_imagenet_classnames(d / "classnames.txt")
    for w in WNIDS:
        write_image(d / "images" / w / "sketch_0.JPEG")
    s = load_dataset("ImageNetSketch", tmp_path)
    assert [it.label for it in s.test] == [0, 1, 2, 3, 4] and s.label_to_imagenet is None


def test_custom_dataset(tmp_path):
    d = tmp_path / "my_shapes"
    split = {"train": [["red_disc/0.png", 0, "red_disc"], ["blue_box/0.png", 1, "blue_box"]],
             "val": [["red_disc/1.png", 0, "red_disc"]], "test": [["blue_box/1.png", 1, "blue_box"]]}
    write_split_json(d, "split.json", "images", split)
    s = load_custom_dataset(d)
    assert s.name == "my_shapes"
    assert s.classnames == ["red disc", "blue box"]
    assert s.split_file == str(d / "split.json") and s.image_root == str(d / "images")
    assert len(s.train) == 2 and len(s.val) == 1 and len(s.test) == 1


def test_locate(tmp_path):
    make_pets(tmp_path)
    found, path = locate("OxfordPets", tmp_path)
    assert found and path == str(tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json")
    found, path = locate("DTD", tmp_path)
    assert not found and path == str(tmp_path / "dtd" / "split_zhou_DescribableTextures.json")
    found, path = locate("OxfordPets", tmp_path / "nowhere")
    assert not found and path == str(tmp_path / "nowhere")
    (tmp_path / "oxford_pets" / "images").rename(tmp_path / "oxford_pets" / "imgs")
    found, path = locate("OxfordPets", tmp_path)
    assert not found and path == str(tmp_path / "oxford_pets" / "images")
    with pytest.raises(DatasetError, match="unknown dataset"):
        locate("NoSuchSet", tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# errors: one line, naming the dataset and the path


def test_error_unknown_dataset_lists_known_ones(tmp_path):
    with pytest.raises(DatasetError) as e:
        load_dataset("Imagenet1k", tmp_path)
    msg = one_line(e)
    assert "Imagenet1k" in msg and all(n in msg for n in PAPER_ORDER + VARIANTS)


def test_error_missing_data_root(tmp_path):
    with pytest.raises(DatasetError) as e:
        load_dataset("OxfordPets", tmp_path / "missing_root")
    msg = one_line(e)
    assert "OxfordPets" in msg and "data root" in msg and str(tmp_path / "missing_root") in msg


def test_error_missing_dataset_folder_and_split_file(tmp_path):
    with pytest.raises(DatasetError) as e:
        load_dataset("DTD", tmp_path)
    assert str(tmp_path / "dtd") in one_line(e)
    (tmp_path / "dtd" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError) as e:
        load_dataset("DTD", tmp_path)
    msg = one_line(e)
    assert "DTD" in msg and "split file not found" in msg
    assert str(tmp_path / "dtd" / "split_zhou_DescribableTextures.json") in msg


def test_error_missing_image_folder(tmp_path):
    make_pets(tmp_path)
    (tmp_path / "oxford_pets" / "images").rename(tmp_path / "oxford_pets" / "imgs")
    with pytest.raises(DatasetError) as e:
        load_dataset("OxfordPets", tmp_path)
    assert "image folder" in one_line(e) and str(tmp_path / "oxford_pets" / "images") in str(e.value)


def test_error_invalid_json(tmp_path):
    make_pets(tmp_path)
    path = tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json"
    path.write_text('{"train": [')
    with pytest.raises(DatasetError) as e:
        load_dataset("OxfordPets", tmp_path)
    msg = one_line(e)
    assert "OxfordPets" in msg and "malformed" in msg and str(path) in msg


@pytest.mark.parametrize(
    "bad_entry, expected",
    [
        (["x.jpg", 0], "expected [image path, label, class name]"),
        (["x.jpg", "0", "abyssinian"], "label must be a non-negative integer"),
        (["x.jpg", -1, "abyssinian"], "label must be a non-negative integer"),
        ([7, 0, "abyssinian"], "image path must be a string"),
        (["/etc/passwd", 0, "abyssinian"], "must be relative"),
        (["../x.jpg", 0, "abyssinian"], "must be relative"),
        (["x.jpg", 0, "persian"], "label 0 is named 'abyssinian' elsewhere"),
    ],
)
def test_error_malformed_entry_names_the_entry(tmp_path, bad_entry, expected):
    split = pets_split()
    split["val"].insert(1, bad_entry)
    d = tmp_path / "oxford_pets"
    write_split_json(d, "split_zhou_OxfordPets.json", "images", {k: [r for r in v if r is not bad_entry]
                                                                  for k, v in split.items()})
    (d / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    with pytest.raises(DatasetError) as e:
        load_dataset("OxfordPets", tmp_path)
    msg = one_line(e)
    assert "OxfordPets" in msg and str(d / "split_zhou_OxfordPets.json") in msg
    assert "val[1]" in msg and expected in msg


def test_error_split_file_missing_a_split(tmp_path):
    split = pets_split()
    del split["test"]
    write_split_json(tmp_path / "oxford_pets", "split_zhou_OxfordPets.json", "images", split)
    with pytest.raises(DatasetError, match="'train', 'val' and 'test'") as e:
        load_dataset("OxfordPets", tmp_path)
    assert str(tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json") in one_line(e)


def test_error_label_gap(tmp_path):
    split = {"train": [["a/1.jpg", 0, "a"], ["c/1.jpg", 2, "c"]], "val": [], "test": []}
    write_split_json(tmp_path / "dtd", "split_zhou_DescribableTextures.json", "images", split)
    with pytest.raises(DatasetError, match="label 1 has no entry") as e:
        load_dataset("DTD", tmp_path)
    assert str(tmp_path / "dtd" / "split_zhou_DescribableTextures.json") in one_line(e)


def test_error_missing_images_reports_first_and_count(tmp_path):
    make_pets(tmp_path)
    image_root = tmp_path / "oxford_pets" / "images"
    os.remove(image_root / "american_bulldog_va1.jpg")
    os.remove(image_root / "basset_hound_te2.jpg")
    with pytest.raises(DatasetError) as e:
        load_dataset("OxfordPets", tmp_path)
    msg = one_line(e)
    assert "OxfordPets" in msg and "2 image(s)" in msg
    # the first missing one in split order (train, val, test)
    assert str(image_root / "american_bulldog_va1.jpg") in msg


def test_error_missing_image_in_a_missing_subfolder(tmp_path):
    split = {"train": [["cls/sub/0.jpg", 0, "cls"]], "val": [], "test": []}
    write_split_json(tmp_path / "sun397", "split_zhou_SUN397.json", "SUN397", split, images=False)
    with pytest.raises(DatasetError) as e:
        load_dataset("SUN397", tmp_path)
    assert str(tmp_path / "sun397" / "SUN397" / "cls" / "sub" / "0.jpg") in one_line(e)


def test_error_fgvc_unknown_variant_and_missing_image(tmp_path):
    write_fgvc(tmp_path)
    d = tmp_path / "fgvc_aircraft"
    (d / "images_variant_val.txt").write_text("2000001 Boeing 999\n")
    with pytest.raises(DatasetError) as e:
        load_dataset("FGVCAircraft", tmp_path)
    msg = one_line(e)
    assert "'Boeing 999'" in msg and str(d / "images_variant_val.txt") in msg and "line 1" in msg
    (d / "images_variant_val.txt").write_text("2000001 Cessna 172\n")
    os.remove(d / "images" / "3000002.jpg")
    with pytest.raises(DatasetError) as e:
        load_dataset("FGVCAircraft", tmp_path)
    assert str(d / "images" / "3000002.jpg") in one_line(e)
    os.remove(d / "images_variant_test.txt")
    with pytest.raises(DatasetError) as e:
        load_dataset("FGVCAircraft", tmp_path)
    assert "not found" in one_line(e) and str(d / "images_variant_test.txt") in str(e.value)


def test_error_imagenet_bad_class_list_and_folders(tmp_path):
    make_imagenet(tmp_path, train_per_class=1, val_per_class=1)
    d = tmp_path / "imagenet"
    (d / "images" / "train" / "n99999999").mkdir()
    with pytest.raises(DatasetError) as e:
        load_dataset("ImageNet", tmp_path)
    msg = one_line(e)
    assert str(d / "images" / "train" / "n99999999") in msg and str(d / "classnames.txt") in msg
    (d / "images" / "train" / "n99999999").rmdir()
    os.remove(d / "images" / "val" / WNIDS[2] / f"ILSVRC2012_val_{WNIDS[2]}_0.JPEG")
    (d / "images" / "val" / WNIDS[2]).rmdir()
    with pytest.raises(DatasetError) as e:
        load_dataset("ImageNet", tmp_path)
    assert str(d / "images" / "val" / WNIDS[2]) in one_line(e)
    (d / "classnames.txt").write_text(f"{WNIDS[0]} tench\n{WNIDS[1]}\n")
    with pytest.raises(DatasetError) as e:
        load_dataset("ImageNet", tmp_path)
    msg = one_line(e)
    assert "line 2" in msg and str(d / "classnames.txt") in msg


def test_error_custom_dataset(tmp_path):
    with pytest.raises(DatasetError) as e:
        load_custom_dataset(tmp_path / "absent")
    assert str(tmp_path / "absent") in one_line(e)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as e:
        load_custom_dataset(tmp_path / "empty")
    assert str(tmp_path / "empty" / "split.json") in one_line(e) and "empty" in str(e.value)


# ---------------------------------------------------------------------------------------------------------------
# few-shot draws, class split, subsets


def synthetic_splits() -> DatasetSplits:
    """Labels first appear in the order 2, 0, 3, 1 and are interleaved; label 3 has fewer items than 5 shots."""
    rng = random.Random(123)
    counts = {0: 9, 1: 12, 2: 7, 3: 3}
    train = [Item(f"{lab}/{i}.png", lab, f"c{lab}") for lab, n in counts.items() for i in range(n)]
    rng.shuffle(train)
    train.sort(key=lambda it: it.label != 2)  # put label 2 first without changing the others' relative order
    val = [Item(f"{lab}/v{i}.png", lab, f"c{lab}") for i in range(6) for lab in (1, 3, 0, 2)]
    return DatasetSplits("synthetic", "/nowhere", ["c0", "c1", "c2", "c3"], train, val, [], "/nowhere/split.json")


def coop_reference_draw(train, val, shots, seed):
    """CoOp's generate_fewshot_dataset(train, shots) then (val, min(shots, 4)) after random.seed(seed), rewritten
    from its description with the module-level random functions."""
    random.seed(seed)
    out = []
    for items, k in ((train, shots), (val, min(shots, 4))):
        by_label = {}
        for it in items:
            if it.label not in by_label:
                by_label[it.label] = []
            by_label[it.label].append(it)
        drawn = []
        for label in by_label:
            group = by_label[label]
            drawn += random.sample(group, k) if len(group) >= k else group
        out.append(drawn)
    return out[0], out[1]


@pytest.mark.parametrize("shots, seed", [(1, 1), (2, 2), (5, 3), (16, 1)])
def test_draw_matches_coop(shots, seed):
    s = synthetic_splits()
    train, val = draw_few_shot(s, shots, seed)
    ref_train, ref_val = coop_reference_draw(s.train, s.val, shots, seed)
    assert train == ref_train and val == ref_val
    per_label = {lab: sum(it.label == lab for it in train) for lab in range(4)}
    assert per_label == {lab: min(shots, n) for lab, n in {0: 9, 1: 12, 2: 7, 3: 3}.items()}
    assert [it.label for it in train][: min(shots, 7)] == [2] * min(shots, 7)  # first-appearance order
    assert all(sum(it.label == lab for it in val) == min(shots, 4) for lab in range(4))


def test_draw_is_deterministic_and_independent_of_global_random():
    s = synthetic_splits()
    random.seed(999)
    a = draw_few_shot(s, 3, 1)
    random.random()
    b = draw_few_shot(s, 3, 1)
    assert a == b
    assert draw_few_shot(s, 3, 2) != a


def test_val_draw_continues_the_train_stream():
    s = synthetic_splits()
    _, val = draw_few_shot(s, 2, 7)
    rng = random.Random(7)
    fresh_val = [x for lab in (1, 3, 0, 2) for x in rng.sample([it for it in s.val if it.label == lab], 2)]
    assert val != fresh_val  # val is drawn after train on one stream, not from a freshly seeded RNG


@pytest.mark.parametrize("shots", [None, 0, -1])
def test_draw_all_items(shots):
    s = synthetic_splits()
    assert draw_few_shot(s, shots, 1) == (s.train, s.val)


def test_base_new_split():
    assert base_new_split(10) == ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9])
    base, new = base_new_split(37)  # OxfordPets: 19 / 18
    assert (len(base), len(new)) == (19, 18) and base + new == list(range(37))
    assert base_new_split(397)[0][-1] == 198  # SUN397: 199 / 198
    assert base_new_split(1) == ([0], [])


def test_subset_relabels_in_label_order():
    s = synthetic_splits()
    base, new = base_new_split(s.num_classes)
    items, names = subset(s.train, new, s.classnames)
    assert names == ["c2", "c3"]
    assert {it.label for it in items} == {0, 1}
    assert all(names[it.label] == it.classname for it in items)
    assert [it.impath for it in items] == [it.impath for it in s.train if it.label in (2, 3)]
    items, names = subset(s.train, [3, 1])
    assert names == ["c3", "c1"] and all(names[it.label] == it.classname for it in items)
    with pytest.raises(ValueError, match="no items"):
        subset(s.test, [0])


def test_few_shot_then_split_on_a_loaded_dataset(tmp_path):
    make_pets(tmp_path)
    s = load_dataset("OxfordPets", tmp_path)
    train, val = draw_few_shot(s, 2, 1)
    assert len(train) == 6 and len(val) == 6
    base, new = base_new_split(s.num_classes)
    base_items, base_names = subset(train, base, s.classnames)
    assert base_names == ["abyssinian", "american bulldog"] and len(base_items) == 4


def test_transfer_roles_of_known_and_custom_datasets(tmp_path):
    """The registry records ImageNet's 10 cross-dataset and 4 domain-generalisation targets; a custom dataset says
    so in transfer.json; a malformed one is refused in one line naming the file."""
    from dept.datasets import TargetOf, dataset_names, load_custom_dataset

    roles = {n: get_spec(n).target_of for n in dataset_names()}
    assert roles.pop("ImageNet") is None
    assert sorted(n for n, r in roles.items() if r == ("domain-generalization", "ImageNet")) == sorted(VARIANTS)
    assert len([n for n, r in roles.items() if r == ("cross-dataset", "ImageNet")]) == 10
    d = tmp_path / "imagenet-adversarial"
    write_imagenet_classnames(d / "classnames.txt")
    write_image(d / "imagenet-a" / WNIDS[2] / "0.jpg")
    assert load_dataset("ImageNetA", tmp_path).target_of == TargetOf("domain-generalization", "ImageNet", (2,))
    make_imagenet(tmp_path)
    assert load_dataset("ImageNet", tmp_path).target_of is None

    custom = tmp_path / "sub"
    write_split_json(custom, "split.json", "images", {"train": [], "val": [],
                                                      "test": [["a/0.png", 0, "a"], ["b/0.png", 1, "b"]]})
    assert load_custom_dataset(custom).target_of is None
    (custom / "transfer.json").write_text('{"protocol": "domain-generalization", "source": "src", "label_to_source": [3, 1]}')
    assert load_custom_dataset(custom).target_of == TargetOf("domain-generalization", "src", (3, 1))
    for text, message in [
        ('{"protocol": "base-to-new", "source": "src"}', "protocol must be cross-dataset or domain-generalization"),
        ('{"protocol": "cross-dataset", "source": "src", "label_to_source": [0, 1]}', "for domain-generalization targets only"),
        ('{"protocol": "domain-generalization", "source": "src", "label_to_source": [0]}', "must list 2 distinct"),
        ('{"protocol": "cross-dataset"}', "expected an object with 'protocol' and 'source'"),
        ("{", "malformed"),
    ]:
        (custom / "transfer.json").write_text(text)
        with pytest.raises(DatasetError, match=message) as e:
            load_custom_dataset(custom)
        assert "transfer.json" in str(e.value) and "\n" not in str(e.value)
